//! The embedded mode's store: the same transitions as the Redis scripts, each under one lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::{
    Admission, ClaimOutcome, CommandBus, DAY_MS, FINISHED_RETENTION, JobStore, LeaseStore,
    NodeCommand, NodeInfo, RunEnd, RunnerBeat, StopRequest, StoreError, Subscriptions,
};
use crate::ids::{JobId, NodeId, UserId};
use crate::job::{JobRecord, JobSpec, JobStatus, Lease, StopMode};
use crate::tier::{Subscription, Tier, TierLimits};

#[derive(Debug)]
struct Entry {
    spec: JobSpec,
    record: JobRecord,
    lease_until: u64,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, Entry>,
    user_jobs: HashMap<UserId, Vec<JobId>>,
    active: HashMap<UserId, HashSet<JobId>>,
    subscriptions: HashMap<UserId, Subscription>,
    commands: HashMap<NodeId, VecDeque<NodeCommand>>,
    /// Each node's last report and when its liveness lapses.
    nodes: HashMap<NodeId, (NodeInfo, u64)>,
}

/// In-process fleet state. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    commands_sent: Arc<Notify>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is infallible bookkeeping; a poisoned lock holds no half-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn end(&mut self, job: &JobId, status: JobStatus, now: u64) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.record.status = status;
            e.record.ended_at = Some(now);
            e.lease_until = 0;
            if let Some(set) = self.active.get_mut(&e.record.user_id) {
                set.remove(job);
            }
        }
    }
}

impl JobStore for MemoryStore {
    async fn admit(&self, spec: &JobSpec, limits: &TierLimits) -> Result<Admission, StoreError> {
        let now = now_ms();
        let mut s = self.lock();
        let tier = Subscription::effective_tier(s.subscriptions.get(&spec.user_id), now);
        let limit = limits.limit(tier);
        let current = s.active.get(&spec.user_id).map_or(0, |a| a.len() as u32);
        if current >= limit {
            return Ok(Admission::LimitReached {
                tier,
                limit,
                current,
            });
        }
        if s.jobs.contains_key(&spec.id) {
            return Err(StoreError::data(format!(
                "job id {} already exists",
                spec.id
            )));
        }
        s.jobs.insert(
            spec.id.clone(),
            Entry {
                spec: spec.clone(),
                record: JobRecord::queued(spec, now),
                lease_until: 0,
            },
        );
        s.user_jobs
            .entry(spec.user_id.clone())
            .or_default()
            .push(spec.id.clone());
        s.active
            .entry(spec.user_id.clone())
            .or_default()
            .insert(spec.id.clone());
        Ok(Admission::Admitted {
            tier,
            limit,
            current: current + 1,
        })
    }

    async fn forget(&self, job: &JobId, user: &UserId) -> Result<(), StoreError> {
        let mut s = self.lock();
        s.jobs.remove(job);
        if let Some(a) = s.active.get_mut(user) {
            a.remove(job);
        }
        if let Some(list) = s.user_jobs.get_mut(user) {
            list.retain(|j| j != job);
        }
        Ok(())
    }

    async fn job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(job).map(|e| e.record.clone()))
    }

    async fn spec(&self, job: &JobId) -> Result<Option<JobSpec>, StoreError> {
        Ok(self.lock().jobs.get(job).map(|e| e.spec.clone()))
    }

    async fn user_jobs(&self, user: &UserId) -> Result<Vec<JobRecord>, StoreError> {
        let horizon = now_ms().saturating_sub(FINISHED_RETENTION.as_millis() as u64);
        let mut s = self.lock();
        let State {
            jobs, user_jobs, ..
        } = &mut *s;
        let Some(ids) = user_jobs.get_mut(user) else {
            return Ok(Vec::new());
        };
        ids.retain(|id| {
            jobs.get(id).is_some_and(|e| {
                !(e.record.status.is_final() && e.record.ended_at.is_some_and(|t| t < horizon))
            })
        });
        Ok(ids
            .iter()
            .filter_map(|id| jobs.get(id).map(|e| e.record.clone()))
            .collect())
    }
}

impl LeaseStore for MemoryStore {
    async fn claim(
        &self,
        node: &NodeId,
        jobs: &[JobId],
        lease: Duration,
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        let now = now_ms();
        let mut s = self.lock();
        Ok(jobs
            .iter()
            .map(|id| {
                let Some(e) = s.jobs.get_mut(id) else {
                    return ClaimOutcome::Dropped {
                        job_id: id.clone(),
                        reason: "unknown".into(),
                    };
                };
                let status = e.record.status;
                let lease_live = e.lease_until > now;
                if !(status == JobStatus::Queued || status == JobStatus::Running && !lease_live) {
                    return ClaimOutcome::Dropped {
                        job_id: id.clone(),
                        reason: status.to_string(),
                    };
                }
                let r = &mut e.record;
                r.epoch += 1;
                r.status = JobStatus::Running;
                r.node_id = Some(node.clone());
                r.started_at = Some(now);
                r.last_heartbeat_at = Some(now);
                r.ended_at = None;
                r.error = None;
                r.stop_mode = None;
                r.flattened_positions = None;
                e.lease_until = now + lease.as_millis() as u64;
                ClaimOutcome::Claimed(Box::new(Lease {
                    spec: e.spec.clone(),
                    epoch: r.epoch,
                }))
            })
            .collect())
    }

    async fn renew(
        &self,
        node: &NodeInfo,
        beats: &[RunnerBeat],
        lease: Duration,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = now_ms();
        let mut s = self.lock();
        s.nodes.insert(
            node.node_id.clone(),
            (node.clone(), now + lease.as_millis() as u64),
        );
        let mut refused = Vec::new();
        for b in beats {
            match s.jobs.get_mut(&b.job_id) {
                Some(e)
                    if e.record.epoch == b.epoch
                        && e.record.status == JobStatus::Running
                        && e.record.node_id.as_ref() == Some(&node.node_id) =>
                {
                    e.lease_until = now + lease.as_millis() as u64;
                    e.record.last_heartbeat_at = Some(now);
                    e.record.positions = b.positions.clone();
                    e.record.stats = b.stats.clone();
                }
                _ => refused.push(b.job_id.clone()),
            }
        }
        Ok(refused)
    }

    async fn finish(
        &self,
        node: &NodeId,
        spec: &JobSpec,
        epoch: u64,
        end: RunEnd,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut s = self.lock();
        let Some(e) = s.jobs.get_mut(&spec.id) else {
            return Ok(false);
        };
        let r = &mut e.record;
        if r.epoch != epoch || r.status != JobStatus::Running || r.node_id.as_ref() != Some(node) {
            return Ok(false);
        }
        r.error = end.error;
        r.flattened_positions = end.flattened_positions;
        r.positions = end.positions;
        r.stats = end.stats;
        s.end(&spec.id, end.status, now);
        Ok(true)
    }

    async fn hand_back(&self, node: &NodeId, job: &JobId, epoch: u64) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(e) = s.jobs.get_mut(job) else {
            return Ok(false);
        };
        let r = &mut e.record;
        if r.epoch != epoch || r.status != JobStatus::Running || r.node_id.as_ref() != Some(node) {
            return Ok(false);
        }
        r.status = JobStatus::Queued;
        r.node_id = None;
        e.lease_until = 0;
        Ok(true)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = now_ms();
        let s = self.lock();
        let mut live: Vec<&(NodeInfo, u64)> = s
            .nodes
            .values()
            .filter(|(_, expires)| *expires > now)
            .collect();
        // Newest heartbeat first: with one lease length for all, the latest expiry.
        live.sort_by_key(|(_, expires)| std::cmp::Reverse(*expires));
        Ok(live.into_iter().map(|(n, _)| n.clone()).collect())
    }
}

impl CommandBus for MemoryStore {
    async fn request_stop(&self, job: &JobId, mode: StopMode) -> Result<StopRequest, StoreError> {
        let now = now_ms();
        let outcome = {
            let mut s = self.lock();
            let Some(e) = s.jobs.get_mut(job) else {
                return Ok(StopRequest::NotFound);
            };
            let status = e.record.status;
            match status {
                JobStatus::Stopped | JobStatus::Failed => StopRequest::AlreadyEnded(status),
                JobStatus::Queued | JobStatus::Crashed => {
                    e.record.stop_mode = Some(mode);
                    e.record.flattened_positions = Some(0);
                    s.end(job, JobStatus::Stopped, now);
                    StopRequest::Stopped
                }
                JobStatus::Running => {
                    e.record.stop_mode = Some(mode);
                    let epoch = e.record.epoch;
                    let node = e.record.node_id.clone().unwrap_or_else(|| NodeId::new(""));
                    s.commands
                        .entry(node.clone())
                        .or_default()
                        .push_back(NodeCommand::Stop {
                            job_id: job.clone(),
                            epoch,
                            mode,
                        });
                    StopRequest::Sent { node }
                }
            }
        };
        if matches!(outcome, StopRequest::Sent { .. }) {
            self.commands_sent.notify_waiters();
        }
        Ok(outcome)
    }

    async fn next_command(
        &self,
        node: &NodeId,
        wait: Duration,
    ) -> Result<Option<NodeCommand>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let sent = self.commands_sent.notified();
            tokio::pin!(sent);
            sent.as_mut().enable();
            if let Some(c) = self
                .lock()
                .commands
                .get_mut(node)
                .and_then(VecDeque::pop_front)
            {
                return Ok(Some(c));
            }
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return Ok(None);
            }
        }
    }
}

impl Subscriptions for MemoryStore {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        Ok(now_ms())
    }

    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError> {
        Ok(self.lock().subscriptions.get(user).copied())
    }

    async fn subscribe(
        &self,
        user: &UserId,
        tier: Tier,
        days: u32,
    ) -> Result<Subscription, StoreError> {
        let sub = Subscription {
            tier,
            expires_at_ms: now_ms() + u64::from(days) * DAY_MS,
        };
        self.lock().subscriptions.insert(user.clone(), sub);
        Ok(sub)
    }

    async fn active_count(&self, user: &UserId) -> Result<u32, StoreError> {
        Ok(self.lock().active.get(user).map_or(0, |a| a.len() as u32))
    }
}
