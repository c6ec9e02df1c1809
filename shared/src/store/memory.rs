//! The embedded mode's store: the same transitions as the Redis scripts, each under one lock,
//! with the restart and breaker rules of [`crate::policy`]. Its clock is tokio's, so tests can
//! drive it with paused time.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::{
    AdminAction, AdminAudit, AdminEntry, Admission, ApiKeyInfo, ApiKeys, ClaimOutcome, CommandBus,
    EventId, FAILED_WINDOW_MS, FleetCounts, FleetGauges, FleetPolicy, FleetSample, JobStore,
    LeaseStore, NodeCommand, NodeInfo, PNL_POINTS_MAX, PnlPoint, RunEnd, RunnerBeat, RunnerEvent,
    StopRequest, StoreError, Subscriptions, SweepReport, Sweeper,
};
use crate::config::EventSettings;
use crate::ids::{JobId, NodeId, StrategyId, UserId};
use crate::job::{JobRecord, JobSpec, JobStatus, Lease, Stats, StopMode};
use crate::policy::{
    self, Breaker, BreakerAdmission, BreakerState, FailureKind, FailureSnapshot, Outcome,
    RestartCount, TrialProgress,
};
use crate::tier::{Subscription, Tier};

#[derive(Debug)]
struct Entry {
    spec: JobSpec,
    record: JobRecord,
    account: Option<crate::kind::SavedState>,
    count: RestartCount,
}

/// A node's pending commands (the `P:node:{nodeId}:commands` list). Like the Redis list, it
/// lives as long as its node: until the node's liveness (or, before its first heartbeat, the
/// stopped job's lease) lapses; every heartbeat extends it.
#[derive(Debug, Default)]
struct CommandList {
    queue: VecDeque<NodeCommand>,
    until: u64,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, Entry>,
    user_jobs: HashMap<UserId, Vec<JobId>>,
    active: HashMap<UserId, HashSet<JobId>>,
    subscriptions: HashMap<UserId, Subscription>,
    /// Each node's pending commands, and when the list lapses with its node.
    commands: HashMap<NodeId, CommandList>,
    /// Each node's last report and when its liveness lapses.
    nodes: HashMap<NodeId, (NodeInfo, u64)>,
    /// Each node's last heartbeat (the `nodes` sorted set's score): a running record's last
    /// heartbeat is its node's, read when the record is.
    node_beats: HashMap<NodeId, u64>,
    /// When each node's lease ends (the `node_leases` key): a runner's lease is its node's.
    node_leases: HashMap<NodeId, u64>,
    /// Nodes a sweep took the runners of, until when they stay fenced (`node:{n}:fenced`).
    fenced_nodes: HashMap<NodeId, u64>,
    /// Crashed jobs waiting for their restart, by due time.
    delayed: BTreeSet<(u64, JobId)>,
    /// Queued jobs whose enqueue is not confirmed yet, and since when.
    pending: HashMap<JobId, u64>,
    breakers: HashMap<(UserId, StrategyId), Breaker>,
    /// When the current sweep guard lapses.
    sweep_guard_until: u64,
    /// API key id → (owner, SHA-256 hex, created).
    api_keys: HashMap<String, (UserId, String, u64)>,
    /// When jobs failed for good, oldest first, within the last hour (the `failed` key).
    failed_at: VecDeque<u64>,
    /// The event stream's caps.
    event_caps: EventSettings,
    /// The fleet's lifecycle events, oldest first (the `events` stream).
    events: VecDeque<RunnerEvent>,
    /// Wakes readers waiting for the next event.
    event_appended: Arc<Notify>,
    /// Circuit breakers opened (the `counters` hash's `breaker_openings`).
    breaker_openings: u64,
    /// The newest event id trimmed from `events`.
    events_trimmed: EventId,
    /// Each job's own events (its `events` list).
    job_events: HashMap<JobId, VecDeque<RunnerEvent>>,
    /// Each job's PnL history (its `pnl` list).
    job_pnl: HashMap<JobId, VecDeque<PnlPoint>>,
    /// The last event id's (ms, sequence), so ids increase as stream ids do.
    last_event: (u64, u64),
    /// The admin audit trail, oldest first, and how many entries were ever appended.
    admin_trail: (VecDeque<AdminEntry>, u64),
    /// Fleet load samples, oldest first, and when the next may be taken (`history`,
    /// `history:guard`).
    history: (VecDeque<FleetSample>, u64),
}

/// In-process fleet state. Cloning shares it.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    commands_sent: Arc<Notify>,
    policy: FleetPolicy,
    /// Wall-clock ms at `origin`; now = that plus tokio time elapsed since.
    epoch_ms: u64,
    origin: tokio::time::Instant,
}

impl MemoryStore {
    /// An empty store applying `policy`.
    pub fn new(policy: FleetPolicy) -> Self {
        let state = State {
            event_caps: policy.events,
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            commands_sent: Arc::default(),
            policy,
            epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            origin: tokio::time::Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch_ms + self.origin.elapsed().as_millis() as u64
    }

    fn retention_ms(&self) -> u64 {
        self.policy.retention.as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is infallible bookkeeping; a poisoned lock holds no half-update.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A job's own history keeps at most this many events (`JOB_EVENTS_MAX` in lib.lua).
const JOB_EVENTS_MAX: usize = 1000;

impl State {
    /// Whether `e` ended for good more than `retention` ago: Redis has let its record expire.
    fn expired(e: &Entry, now: u64, retention: u64) -> bool {
        e.record.status.is_final()
            && e.record
                .ended_at
                .is_some_and(|t| t.saturating_add(retention) <= now)
    }

    /// Forgets `job` if its record has expired (as Redis' `EXPIRE` on the job hash would have).
    fn forget_if_expired(&mut self, job: &JobId, now: u64, retention: u64) {
        if self
            .jobs
            .get(job)
            .is_some_and(|e| Self::expired(e, now, retention))
        {
            self.forget_job(job);
        }
    }

    /// Drops a job's record and its place in its user's list.
    fn forget_job(&mut self, job: &JobId) {
        let Some(e) = self.jobs.remove(job) else {
            return;
        };
        if let Some(list) = self.user_jobs.get_mut(&e.record.user_id) {
            list.retain(|j| j != job);
        }
    }

    /// What Redis lets expire by itself: ended jobs' records after the retention, job
    /// histories `events.max_age_ms` after their last event, and command lists whose node is
    /// gone. Called by the sweep, so the store does not grow with every job ever run.
    fn expire(&mut self, now: u64, retention: u64) {
        let ended: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, e)| Self::expired(e, now, retention))
            .map(|(id, _)| id.clone())
            .collect();
        for job in &ended {
            self.forget_job(job);
        }
        let max_age = self.event_caps.max_age_ms;
        self.job_events.retain(|_, h| {
            h.back()
                .is_some_and(|last| last.at.saturating_add(max_age) > now)
        });
        self.job_pnl.retain(|_, h| {
            h.back()
                .is_some_and(|last| last.at.saturating_add(max_age) > now)
        });
        self.commands.retain(|_, list| list.until > now);
        self.user_jobs.retain(|_, list| !list.is_empty());
    }

    /// Appends the run's total PnL to its PnL history (mirrors `pnl_point` in lib.lua).
    fn pnl_point(&mut self, now: u64, job: &JobId, stats: &Stats) {
        let history = self.job_pnl.entry(job.clone()).or_default();
        if history
            .back()
            .is_some_and(|p| p.total_pnl == stats.total_pnl)
        {
            return;
        }
        history.push_back(PnlPoint {
            at: now,
            total_pnl: stats.total_pnl,
        });
        if history.len() > PNL_POINTS_MAX {
            history.pop_front();
        }
    }

    /// Appends a lifecycle event of `job` (mirrors `event` in lib.lua): epoch and node are the
    /// job's current ones unless `at` names others.
    fn event(
        &mut self,
        now: u64,
        job: &JobId,
        kind: &str,
        reason: impl Into<String>,
        at: Option<(u64, &NodeId)>,
    ) {
        let Some(e) = self.jobs.get(job) else { return };
        let (epoch, node) = match at {
            Some((epoch, node)) => (epoch, node.to_string()),
            None => (
                e.record.epoch,
                e.record
                    .node_id
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        };
        let (ms, seq) = self.last_event;
        self.last_event = if now > ms { (now, 0) } else { (ms, seq + 1) };
        let event = RunnerEvent {
            id: format!("{}-{}", self.last_event.0, self.last_event.1),
            job: job.clone(),
            user: e.record.user_id.clone(),
            kind: kind.to_owned(),
            epoch,
            node,
            reason: reason.into(),
            at: now,
        };
        let history = self.job_events.entry(job.clone()).or_default();
        history.push_back(event.clone());
        if history.len() > JOB_EVENTS_MAX {
            history.pop_front();
        }
        self.events.push_back(event);
        self.event_appended.notify_waiters();
        let oldest = now.saturating_sub(self.event_caps.max_age_ms);
        while self.events.len() as u64 > self.event_caps.max_len
            || self.events.front().is_some_and(|e| e.at < oldest)
        {
            if let Some(gone) = self.events.pop_front() {
                self.events_trimmed = gone.id.parse().unwrap_or(self.events_trimmed);
            }
        }
    }
    /// Ends a job for good: frees its slot, forgets any pending restart.
    fn end(&mut self, job: &JobId, status: JobStatus, now: u64) {
        if let Some(e) = self.jobs.get_mut(job) {
            e.record.status = status;
            e.record.ended_at = Some(now);
            if let Some(set) = self.active.get_mut(&e.record.user_id) {
                set.remove(job);
            }
        }
        self.delayed.retain(|(_, j)| j != job);
        self.pending.remove(job);
        let reason = self.jobs.get(job).map(|e| {
            let r = &e.record;
            let error = r.error.as_ref().map(|e| format!("error: {e}"));
            let flattened = r.flattened_positions.map(|n| format!("flattened: {n}"));
            [error, flattened]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ")
        });
        self.event(
            now,
            job,
            &status.to_string(),
            reason.unwrap_or_default(),
            None,
        );
        if status == JobStatus::Failed {
            self.failed_at.push_back(now);
            self.trim_failed(now);
        }
    }

    /// Forgets failures older than an hour (as `end_job` in lib.lua trims `failed`).
    fn trim_failed(&mut self, now: u64) {
        while self
            .failed_at
            .front()
            .is_some_and(|at| *at < now.saturating_sub(FAILED_WINDOW_MS))
        {
            self.failed_at.pop_front();
        }
    }

    /// `e`'s record as read: a running record's last heartbeat is its node's (as `job()` in the
    /// Redis store).
    fn record(node_beats: &HashMap<NodeId, u64>, e: &Entry) -> JobRecord {
        let mut r = e.record.clone();
        if r.status == JobStatus::Running {
            let beat = r.node_id.as_ref().and_then(|n| node_beats.get(n)).copied();
            r.last_heartbeat_at = r.last_heartbeat_at.max(beat);
        }
        r
    }

    /// When running job `e`'s lease ends: its node's (0: none).
    fn lease_until(&self, e: &Entry) -> u64 {
        e.record
            .node_id
            .as_ref()
            .and_then(|n| self.node_leases.get(n))
            .copied()
            .unwrap_or(0)
    }

    /// Whether `node` may hold runners at `now` (`node_may_hold` in lib.lua): not fenced by a
    /// sweep, and its lease, if it has one yet, not past.
    fn node_may_hold(&self, node: &NodeId, now: u64) -> bool {
        self.fenced_nodes
            .get(node)
            .is_none_or(|until| *until <= now)
            && self.node_leases.get(node).is_none_or(|until| *until > now)
    }

    /// Starts or extends `node`'s lease (and its command list's life) to `until`.
    fn extend_node_lease(&mut self, node: &NodeId, until: u64) {
        self.node_leases.insert(node.clone(), until);
        if let Some(list) = self.commands.get_mut(node) {
            list.until = until;
        }
    }

    /// Fleet-wide counts at `now`.
    fn counts(&self) -> FleetCounts {
        let count = |f: &dyn Fn(&Entry) -> bool| self.jobs.values().filter(|e| f(e)).count() as u64;
        FleetCounts {
            queued: count(&|e| e.record.status == JobStatus::Queued),
            running: count(&|e| {
                e.record.status == JobStatus::Running
                    && e.record
                        .node_id
                        .as_ref()
                        .is_some_and(|n| self.node_leases.contains_key(n))
            }),
            active: self.active.values().map(HashSet::len).sum::<usize>() as u64,
            restarting: self.delayed.len() as u64,
        }
    }

    /// The fleet's gauges at `now` (the gauges script).
    fn gauges(&mut self, now: u64) -> FleetGauges {
        self.trim_failed(now);
        let live = || self.nodes.values().filter(|(_, expires)| *expires > now);
        FleetGauges {
            counts: self.counts(),
            failed_last_hour: self.failed_at.len() as u64,
            nodes_alive: live().count() as u64,
            node_capacity: live().map(|(n, _)| u64::from(n.capacity)).sum(),
            node_runners: live().map(|(n, _)| u64::from(n.runners)).sum(),
            // The in-memory queue is not the store's to see.
            ready: None,
            processing: None,
            breaker_openings: self.breaker_openings,
        }
    }

    /// What [`policy::decide_failure`] decides on for the running `job`, if it is known.
    fn failure_snapshot(
        &self,
        policy: &FleetPolicy,
        job: &JobId,
        now: u64,
    ) -> Option<FailureSnapshot> {
        let e = self.jobs.get(job)?;
        let r = &e.record;
        let user = &r.user_id;
        let tier = Subscription::effective_tier(self.subscriptions.get(user), now);
        Some(FailureSnapshot {
            job: job.clone(),
            now,
            epoch: r.epoch,
            node: r
                .node_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            hb: r.last_heartbeat_at,
            strategy: r.strategy_id.to_string(),
            stop: r.stop_mode.is_some(),
            started: r.started_at,
            count: e.count,
            breaker: self
                .breakers
                .get(&(user.clone(), r.strategy_id.clone()))
                .cloned()
                .unwrap_or_default(),
            held: self.active.get(user).map_or(0, HashSet::len) as u32,
            limit: policy.tiers.limit(tier),
        })
    }

    /// A run of `job` failed as `kind`: the policy decides, this applies (as `apply_failure` in
    /// lib.lua does for the Redis store). Returns whether it restarts.
    fn after_failure(
        &mut self,
        policy: &FleetPolicy,
        job: &JobId,
        kind: FailureKind,
        reason: impl FnOnce(&FailureSnapshot) -> String,
        now: u64,
    ) -> bool {
        let Some(snap) = self.failure_snapshot(policy, job, now) else {
            return false;
        };
        let reason = reason(&snap);
        let d = policy::decide_failure(&policy.restart, &policy.breaker, &snap, kind, reason);
        self.event(now, job, "crashed", d.reason.clone(), None);
        if let Some(after) = d.breaker {
            let e = &self.jobs[job].record;
            let key = (e.user_id.clone(), e.strategy_id.clone());
            self.breakers.insert(key, after);
        }
        if let Some(why) = d.opened {
            self.breaker_openings += 1;
            self.event(now, job, "breaker_opened", why, None);
        }
        let e = self.jobs.get_mut(job).expect("snapshot read it");
        e.count = d.count;
        e.record.restarts = d.count.total;
        match d.outcome {
            Outcome::Restart { at } => {
                e.record.status = JobStatus::Crashed;
                e.record.error = Some(d.reason);
                e.record.ended_at = Some(now);
                self.delayed.insert((at, job.clone()));
                self.event(
                    now,
                    job,
                    "restart_scheduled",
                    format!("restart at {at}"),
                    None,
                );
                true
            }
            Outcome::Failed { error } => {
                e.record.error = Some(error);
                self.end(job, JobStatus::Failed, now);
                false
            }
            Outcome::Stopped { error } => {
                e.record.error = Some(error);
                self.end(job, JobStatus::Stopped, now);
                false
            }
        }
    }

    /// The progress of the trial `trial` of a half-open breaker.
    fn trial_progress(&self, trial: &JobId, now: u64, trial_ms: u64) -> TrialProgress {
        let r = self.jobs.get(trial).map(|e| &e.record);
        TrialProgress::of(
            r.map(|r| r.status),
            r.and_then(|r| r.started_at),
            now,
            trial_ms,
        )
    }
}

impl JobStore for MemoryStore {
    async fn admit(&self, spec: &JobSpec) -> Result<Admission, StoreError> {
        let now = self.now();
        let policy = &self.policy;
        let mut s = self.lock();
        s.forget_if_expired(&spec.id, now, self.retention_ms());
        let key = (spec.user_id.clone(), spec.strategy_id.clone());
        let breaker = s.breakers.get(&key).cloned().unwrap_or_default();
        let trial = match &breaker.state {
            BreakerState::HalfOpen { trial } => {
                Some(s.trial_progress(trial, now, policy.breaker.trial_ms))
            }
            _ => None,
        };
        let (breaker, closed) = match breaker.admission(&policy.breaker, now, &spec.id, trial) {
            BreakerAdmission::Refused(retry_after_ms) => {
                return Ok(Admission::BreakerOpen { retry_after_ms });
            }
            BreakerAdmission::Allowed { after, closed } => (after, closed),
        };
        let tier = Subscription::effective_tier(s.subscriptions.get(&spec.user_id), now);
        let limit = policy.tiers.limit(tier);
        let current = s.active.get(&spec.user_id).map_or(0, |a| a.len() as u32);
        if current >= limit {
            return Ok(Admission::LimitReached {
                tier,
                limit,
                current,
            });
        }
        let holding = s.active.values().map(HashSet::len).sum::<usize>() as u32;
        let queued = s
            .jobs
            .values()
            .filter(|e| e.record.status == JobStatus::Queued)
            .count() as u32;
        let retry_after_ms = policy.limits.retry_after_ms;
        if holding >= policy.limits.max_runners {
            return Ok(Admission::FleetFull { retry_after_ms });
        }
        if queued >= policy.limits.max_queued {
            return Ok(Admission::QueueFull { retry_after_ms });
        }
        if s.jobs.contains_key(&spec.id) {
            return Err(StoreError::conflict("job id", &spec.id));
        }
        s.breakers.insert(key, breaker);
        if let Some(trial) = closed {
            let why = format!("the trial run of strategy {} passed", spec.strategy_id);
            s.event(now, &trial, "breaker_closed", why, None);
        }
        let entry = Entry {
            spec: spec.clone(),
            record: JobRecord::queued(spec, now),
            account: None,
            count: RestartCount::default(),
        };
        s.jobs.insert(spec.id.clone(), entry);
        s.user_jobs
            .entry(spec.user_id.clone())
            .or_default()
            .push(spec.id.clone());
        s.active
            .entry(spec.user_id.clone())
            .or_default()
            .insert(spec.id.clone());
        s.pending.insert(spec.id.clone(), now);
        s.event(now, &spec.id, "admitted", format!("tier {tier}"), None);
        Ok(Admission::Admitted {
            tier,
            limit,
            current: current + 1,
        })
    }

    async fn confirm_enqueued(&self, jobs: &[JobId]) -> Result<(), StoreError> {
        let mut s = self.lock();
        for job in jobs {
            s.pending.remove(job);
        }
        Ok(())
    }

    async fn job_events(&self, job: &JobId) -> Result<Vec<RunnerEvent>, StoreError> {
        let now = self.now();
        let s = self.lock();
        let max_age = s.event_caps.max_age_ms;
        Ok(s.job_events
            .get(job)
            // Expired `events.max_age_ms` after its last event, like the Redis list.
            .filter(|h| h.back().is_some_and(|e| e.at.saturating_add(max_age) > now))
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn events_after(
        &self,
        after: &EventId,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<RunnerEvent>, StoreError> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        loop {
            let appended = {
                let s = self.lock();
                // Ids increase along the deque: skip what is not after `after`.
                let newer = |e: &&RunnerEvent| e.id.parse::<EventId>().is_ok_and(|id| id > *after);
                let found: Vec<RunnerEvent> = s
                    .events
                    .iter()
                    .filter(newer)
                    .take(count.max(1))
                    .cloned()
                    .collect();
                if !found.is_empty() {
                    return Ok(found);
                }
                // Registered under the lock: an event appended after it is not missed.
                let notify = s.event_appended.clone();
                let mut appended = Box::pin(notify.notified_owned());
                appended.as_mut().enable();
                appended
            };
            match deadline {
                Some(d) if tokio::time::Instant::now() < d => {
                    if tokio::time::timeout_at(d, appended).await.is_err() {
                        return Ok(Vec::new());
                    }
                }
                _ => return Ok(Vec::new()),
            }
        }
    }

    async fn events_lost_after(&self, after: &EventId) -> Result<bool, StoreError> {
        let s = self.lock();
        if s.events_trimmed == EventId::ZERO {
            return Ok(false);
        }
        let oldest = s.events.front().and_then(|e| e.id.parse::<EventId>().ok());
        Ok(match oldest {
            Some(oldest) => *after < oldest,
            None => *after < s.events_trimmed,
        })
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        let s = self.lock();
        Ok(s.events
            .back()
            .and_then(|e| e.id.parse().ok())
            .unwrap_or(EventId::ZERO))
    }

    async fn fleet_gauges(&self) -> Result<FleetGauges, StoreError> {
        let now = self.now();
        Ok(self.lock().gauges(now))
    }

    async fn sample_history(&self, every: Duration, keep: u32) -> Result<bool, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        if s.history.1 > now {
            return Ok(false);
        }
        let sample = FleetSample::of(now, &s.gauges(now));
        let (samples, next) = &mut s.history;
        *next = now + every.as_millis().max(1) as u64;
        samples.push_back(sample);
        while samples.len() > keep.max(1) as usize {
            samples.pop_front();
        }
        Ok(true)
    }

    async fn history(&self) -> Result<Vec<FleetSample>, StoreError> {
        Ok(self.lock().history.0.iter().copied().collect())
    }

    async fn active_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let s = self.lock();
        let mut ids: Vec<&JobId> = s.active.values().flatten().collect();
        // Newest first, as the Redis store sorts them (ids are `job-<UUIDv7>`).
        ids.sort_unstable_by(|a, b| b.as_str().cmp(a.as_str()));
        Ok(ids
            .into_iter()
            .take(limit)
            .filter_map(|id| s.jobs.get(id).map(|e| State::record(&s.node_beats, e)))
            .collect())
    }

    async fn job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        s.forget_if_expired(job, now, self.retention_ms());
        Ok(s.jobs.get(job).map(|e| State::record(&s.node_beats, e)))
    }

    async fn spec(&self, job: &JobId) -> Result<Option<JobSpec>, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        s.forget_if_expired(job, now, self.retention_ms());
        Ok(s.jobs.get(job).map(|e| e.spec.clone()))
    }

    async fn pnl_history(&self, job: &JobId) -> Result<Vec<PnlPoint>, StoreError> {
        Ok(self
            .lock()
            .job_pnl
            .get(job)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn user_jobs(&self, user: &UserId) -> Result<Vec<JobRecord>, StoreError> {
        let (now, retention) = (self.now(), self.retention_ms());
        let mut s = self.lock();
        let ids = s.user_jobs.get(user).cloned().unwrap_or_default();
        for id in &ids {
            s.forget_if_expired(id, now, retention);
        }
        let State {
            jobs,
            user_jobs,
            node_beats,
            ..
        } = &mut *s;
        let Some(ids) = user_jobs.get_mut(user) else {
            return Ok(Vec::new());
        };
        ids.retain(|id| jobs.contains_key(id));
        Ok(ids
            .iter()
            .filter_map(|id| jobs.get(id).map(|e| State::record(node_beats, e)))
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
        let now = self.now();
        let mut s = self.lock();
        if !s.node_may_hold(node, now) {
            return Err(StoreError::Fenced);
        }
        if !jobs.is_empty() {
            s.extend_node_lease(node, now + lease.as_millis() as u64);
        }
        let mut claimed = Vec::new();
        let outcomes = jobs
            .iter()
            .map(|id| {
                let lease_live = s.jobs.get(id).is_some_and(|e| s.lease_until(e) > now);
                let Some(e) = s.jobs.get_mut(id) else {
                    return ClaimOutcome::Dropped {
                        job_id: id.clone(),
                        reason: "unknown".into(),
                    };
                };
                let status = e.record.status;
                if !(status == JobStatus::Queued || status == JobStatus::Running && !lease_live) {
                    return ClaimOutcome::Dropped {
                        job_id: id.clone(),
                        reason: status.to_string(),
                    };
                }
                let r = &mut e.record;
                r.epoch += 1;
                r.status = JobStatus::Running;
                claimed.push(id.clone());
                r.node_id = Some(node.clone());
                r.started_at = Some(now);
                r.last_heartbeat_at = Some(now);
                r.ended_at = None;
                r.stop_mode = None;
                r.flattened_positions = None;
                ClaimOutcome::Claimed(Box::new(Lease {
                    spec: e.spec.clone(),
                    epoch: r.epoch,
                    account: e.account.clone(),
                    since_created_ms: now.saturating_sub(r.created_at),
                }))
            })
            .collect();
        for id in claimed {
            s.pending.remove(&id);
            s.event(now, &id, "claimed", "", None);
        }
        Ok(outcomes)
    }

    async fn renew(
        &self,
        node: &NodeInfo,
        beats: &[RunnerBeat],
        lease: Duration,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        let id = &node.node_id;
        if !s.node_may_hold(id, now) || node.runners > 0 && !s.node_leases.contains_key(id) {
            return Err(StoreError::Fenced);
        }
        let until = now + lease.as_millis() as u64;
        s.nodes.insert(id.clone(), (node.clone(), until));
        s.node_beats.insert(id.clone(), now);
        s.extend_node_lease(id, until);
        let mut refused = Vec::new();
        for b in beats {
            match s.jobs.get_mut(&b.job_id) {
                Some(e)
                    if e.record.epoch == b.epoch
                        && e.record.status == JobStatus::Running
                        && e.record.node_id.as_ref() == Some(id) =>
                {
                    if let Some(positions) = &b.positions {
                        e.record.positions = positions.clone();
                    }
                    if let Some(stats) = &b.stats {
                        e.record.stats = stats.clone();
                    }
                    if b.account.is_some() {
                        e.account = b.account.clone();
                    }
                    if let Some(stats) = &b.stats {
                        s.pnl_point(now, &b.job_id, stats);
                    }
                }
                Some(_) => {
                    let why = format!("heartbeat of epoch {} refused", b.epoch);
                    s.event(now, &b.job_id, "fenced", why, Some((b.epoch, id)));
                    refused.push(b.job_id.clone());
                }
                None => refused.push(b.job_id.clone()),
            }
        }
        Ok(refused)
    }

    async fn finish(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: RunEnd,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        let Some(e) = s.jobs.get_mut(job) else {
            return Ok(false);
        };
        let r = &mut e.record;
        if r.epoch != epoch || r.status != JobStatus::Running || r.node_id.as_ref() != Some(node) {
            return Ok(false);
        }
        r.positions = end.positions;
        r.stats = end.stats;
        if end.account.is_some() {
            e.account = end.account;
        }
        let stats = e.record.stats.clone();
        s.pnl_point(now, job, &stats);
        if end.status == JobStatus::Crashed {
            let reason = end.error.unwrap_or_else(|| "runner failed".into());
            s.after_failure(&self.policy, job, FailureKind::Crash, |_| reason, now);
            return Ok(true);
        }
        let r = &mut s.jobs.get_mut(job).expect("present").record;
        r.error = end.error;
        r.flattened_positions = end.flattened_positions;
        s.end(job, end.status, now);
        Ok(true)
    }

    async fn hand_back(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        account: Option<crate::kind::SavedState>,
    ) -> Result<bool, StoreError> {
        let mut s = self.lock();
        let Some(e) = s.jobs.get_mut(job) else {
            return Ok(false);
        };
        let r = &mut e.record;
        if r.epoch != epoch || r.status != JobStatus::Running || r.node_id.as_ref() != Some(node) {
            return Ok(false);
        }
        let now = self.now();
        s.event(now, job, "handed_back", "its node shut down", None);
        let Some(e) = s.jobs.get_mut(job) else {
            return Ok(false);
        };
        let r = &mut e.record;
        r.status = JobStatus::Queued;
        r.node_id = None;
        if account.is_some() {
            e.account = account;
        }
        s.pending.insert(job.clone(), now);
        Ok(true)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = self.now();
        let s = self.lock();
        let mut live: Vec<&(NodeInfo, u64)> = s
            .nodes
            .values()
            .filter(|(_, expires)| *expires > now)
            .collect();
        // Newest heartbeat first: with one lease length for all, the latest expiry.
        live.sort_by_key(|(_, expires)| std::cmp::Reverse(*expires));
        Ok(live
            .into_iter()
            .map(|(n, _)| NodeInfo {
                last_heartbeat_at: s.node_beats.get(&n.node_id).copied(),
                ..n.clone()
            })
            .collect())
    }
}

impl CommandBus for MemoryStore {
    async fn request_stop(&self, job: &JobId, mode: StopMode) -> Result<StopRequest, StoreError> {
        let now = self.now();
        let outcome = {
            let mut s = self.lock();
            s.forget_if_expired(job, now, self.retention_ms());
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
                    s.event(now, job, "stop_requested", mode.as_str(), None);
                    let Some(e) = s.jobs.get_mut(job) else {
                        return Ok(StopRequest::NotFound);
                    };
                    let epoch = e.record.epoch;
                    let node = e.record.node_id.clone().unwrap_or_else(|| NodeId::new(""));
                    let lease_until = s.node_leases.get(&node).copied().unwrap_or(0);
                    let alive_until = s.nodes.get(&node).map_or(0, |(_, until)| *until);
                    let list = s.commands.entry(node.clone()).or_default();
                    list.queue.push_back(NodeCommand::Stop {
                        job_id: job.clone(),
                        epoch,
                        mode,
                    });
                    // As store_stop.lua: the list lasts while its node (and its lease) does.
                    list.until = list.until.max(alive_until).max(lease_until).max(now + 1);
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
            let now = self.now();
            let popped = {
                let mut s = self.lock();
                match s.commands.get_mut(node) {
                    Some(list) if list.until > now => list.queue.pop_front(),
                    Some(_) => {
                        // Lapsed with its node.
                        s.commands.remove(node);
                        None
                    }
                    None => None,
                }
            };
            if let Some(c) = popped {
                return Ok(Some(c));
            }
            if tokio::time::timeout_at(deadline, sent).await.is_err() {
                return Ok(None);
            }
        }
    }
}

impl ApiKeys for MemoryStore {
    async fn add_key(
        &self,
        user: &UserId,
        key_id: &str,
        hash: &str,
    ) -> Result<ApiKeyInfo, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        if s.api_keys.contains_key(key_id) {
            return Err(StoreError::conflict("api key id", key_id));
        }
        s.api_keys
            .insert(key_id.to_owned(), (user.clone(), hash.to_owned(), now));
        Ok(ApiKeyInfo {
            key_id: key_id.to_owned(),
            created_at: now,
        })
    }

    async fn key(&self, key_id: &str) -> Result<Option<(UserId, String)>, StoreError> {
        Ok(self
            .lock()
            .api_keys
            .get(key_id)
            .map(|(u, h, _)| (u.clone(), h.clone())))
    }

    async fn keys(&self, user: &UserId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let s = self.lock();
        let mut keys: Vec<ApiKeyInfo> = s
            .api_keys
            .iter()
            .filter(|(_, (u, _, _))| u == user)
            .map(|(id, (_, _, at))| ApiKeyInfo {
                key_id: id.clone(),
                created_at: *at,
            })
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, StoreError> {
        let mut s = self.lock();
        if s.api_keys.get(key_id).is_some_and(|(u, _, _)| u == user) {
            s.api_keys.remove(key_id);
            return Ok(true);
        }
        Ok(false)
    }
}

impl AdminAudit for MemoryStore {
    async fn record_admin(&self, action: &AdminAction) -> Result<AdminEntry, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        let (trail, appended) = &mut s.admin_trail;
        *appended += 1;
        let entry = AdminEntry {
            id: format!("{now}-{appended}"),
            at: now,
            action: action.clone(),
        };
        trail.push_back(entry.clone());
        while trail.len() as u64 > self.policy.admin_audit_max {
            trail.pop_front();
        }
        Ok(entry)
    }

    async fn admin_trail(&self, count: usize) -> Result<Vec<AdminEntry>, StoreError> {
        let s = self.lock();
        Ok(s.admin_trail.0.iter().rev().take(count).cloned().collect())
    }
}

impl Sweeper for MemoryStore {
    async fn sweep(
        &self,
        interval: Duration,
        batch: u32,
    ) -> Result<Option<SweepReport>, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        if s.sweep_guard_until > now {
            return Ok(None);
        }
        s.sweep_guard_until = now + interval.as_millis() as u64;
        s.expire(now, self.retention_ms());
        let expired: Vec<JobId> = s
            .jobs
            .iter()
            .filter(|(_, e)| e.record.status == JobStatus::Running && s.lease_until(e) <= now)
            .map(|(id, _)| id.clone())
            .take(batch as usize)
            .collect();
        let mut report = SweepReport::default();
        for id in expired {
            report.crashed += 1;
            let lost = FailureKind::NodeLost;
            if s.after_failure(&self.policy, &id, lost, FailureSnapshot::silence, now) {
                report.restarting += 1;
            } else {
                report.failed += 1;
            }
        }
        // A lapsed node left with no runner is fenced for good under its id (a day: far longer
        // than its own lease watchdog lets it run), and forgotten.
        let lapsed: Vec<NodeId> = s
            .node_leases
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for node in lapsed {
            let holds = s.jobs.values().any(|e| {
                e.record.status == JobStatus::Running && e.record.node_id.as_ref() == Some(&node)
            });
            if !holds {
                s.node_leases.remove(&node);
                s.fenced_nodes.insert(node, now + 86_400_000);
            }
        }
        s.fenced_nodes.retain(|_, until| *until > now);
        Ok(Some(report))
    }

    async fn due_restarts(&self, batch: u32) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let mut s = self.lock();
        let due: Vec<(u64, JobId)> = s
            .delayed
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(batch as usize)
            .cloned()
            .collect();
        let mut out = Vec::new();
        for item in due {
            s.delayed.remove(&item);
            if let Some(e) = s.jobs.get_mut(&item.1)
                && e.record.status == JobStatus::Crashed
            {
                e.record.status = JobStatus::Queued;
                e.record.node_id = None;
                s.pending.insert(item.1.clone(), now);
                s.event(now, &item.1, "restarted", "", None);
                out.push(item.1);
            }
        }
        Ok(out)
    }

    async fn unconfirmed(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> Result<Vec<JobId>, StoreError> {
        let now = self.now();
        let horizon = now.saturating_sub(older_than.as_millis() as u64);
        let mut s = self.lock();
        let mut due: Vec<(u64, JobId)> = s
            .pending
            .iter()
            .filter(|(_, at)| **at <= horizon)
            .map(|(j, at)| (*at, j.clone()))
            .collect();
        due.sort();
        due.truncate(batch as usize);
        let mut out = Vec::new();
        for (_, job) in due {
            if s.jobs
                .get(&job)
                .is_some_and(|e| e.record.status == JobStatus::Queued)
            {
                s.pending.insert(job.clone(), now);
                out.push(job);
            } else {
                s.pending.remove(&job);
            }
        }
        Ok(out)
    }
}

impl Subscriptions for MemoryStore {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        Ok(self.now())
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
        let sub = Subscription::for_days(tier, self.now(), days);
        self.lock().subscriptions.insert(user.clone(), sub);
        Ok(sub)
    }

    async fn active_count(&self, user: &UserId) -> Result<u32, StoreError> {
        Ok(self.lock().active.get(user).map_or(0, |a| a.len() as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::CredentialCipher;
    use crate::ids::BrokerId;
    use crate::job::{Credentials, StrategyConfig};
    use crate::store::FINISHED_RETENTION;

    fn spec(user: &str) -> JobSpec {
        let id = JobId::generate();
        let creds = Credentials {
            api_key: "k".into(),
            api_secret: "s".into(),
        };
        JobSpec {
            credentials: CredentialCipher::ephemeral().seal(&id, &creds).unwrap(),
            id,
            user_id: UserId::new(user),
            strategy_id: StrategyId::new("s"),
            broker_id: BrokerId::new("paper"),
            config: StrategyConfig {
                name: "t".into(),
                kind: "scalping".into(),
                parameters: Default::default(),
                risk_management: None,
                instruments: vec!["BTC-PERPETUAL".into()],
            },
        }
    }

    /// With the real retention (24 h) and history age (7 days), on tokio's paused clock: the
    /// sweep drops what Redis would have let expire, so the store does not grow with every job
    /// it ever ran.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_forgets_what_redis_lets_expire() {
        let store = MemoryStore::new(FleetPolicy::default());
        let (ended, running) = (spec("u"), spec("v"));
        store.admit(&ended).await.unwrap();
        store.admit(&running).await.unwrap();
        let node = NodeId::new("n1");
        let lease = Duration::from_secs(30);
        store
            .claim(&node, std::slice::from_ref(&running.id), lease)
            .await
            .unwrap();
        store.request_stop(&ended.id, StopMode::Hold).await.unwrap();
        store
            .request_stop(&running.id, StopMode::Hold)
            .await
            .unwrap();
        let sizes = |s: &MemoryStore| {
            let s = s.lock();
            (s.jobs.len(), s.job_events.len(), s.commands.len())
        };
        assert_eq!(sizes(&store), (2, 2, 1));

        // The node never beats: its command list lapses with the lease.
        tokio::time::advance(lease).await;
        store.sweep(Duration::from_secs(1), 100).await.unwrap();
        assert_eq!(sizes(&store).2, 0, "the dead node's commands are gone");

        // Just short of the retention for the job the sweep ended.
        tokio::time::advance(FINISHED_RETENTION - Duration::from_secs(1)).await;
        store.sweep(Duration::from_secs(1), 100).await.unwrap();
        {
            let s = store.lock();
            // The stopped job is forgotten; the swept one (stopped by the sweep, since a stop was
            // asked) ended only at the first sweep, so it is kept a little longer.
            assert!(!s.jobs.contains_key(&ended.id));
            assert!(!s.user_jobs.contains_key(&UserId::new("u")));
            assert_eq!(s.user_jobs[&UserId::new("v")], vec![running.id.clone()]);
            assert_eq!(s.job_events.len(), 2, "histories outlive records");
        }

        let week = Duration::from_millis(FleetPolicy::default().events.max_age_ms);
        tokio::time::advance(week).await;
        store.sweep(Duration::from_secs(1), 100).await.unwrap();
        assert_eq!(sizes(&store), (0, 0, 0));
        assert!(store.lock().user_jobs.is_empty());
    }
}
