//! In-process queue for the embedded mode: a deque of ready ids and a map of per-node claims.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Delivery, JobQueue, QueueError};
use crate::ids::{JobId, NodeId};

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<JobId>,
    /// Per node, its unacknowledged claims in claim order.
    processing: HashMap<NodeId, Vec<JobId>>,
}

/// The embedded mode's queue. Cloning shares the queue.
#[derive(Debug, Clone, Default)]
pub struct MemoryQueue {
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (every
        // critical section is a few infallible collection operations), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, node: &NodeId, max: usize) -> Vec<Delivery> {
        let mut state = self.lock();
        let n = max.min(state.ready.len());
        let taken: Vec<JobId> = state.ready.drain(..n).collect();
        if !taken.is_empty() {
            state
                .processing
                .entry(node.clone())
                .or_default()
                .extend(taken.iter().cloned());
        }
        taken.into_iter().map(Delivery::untagged).collect()
    }
}

impl JobQueue for MemoryQueue {
    async fn enqueue(&self, jobs: &[JobId]) -> Result<(), QueueError> {
        self.lock().ready.extend(jobs.iter().cloned());
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn claim(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue between the look and the wait
            // is not missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.take(node, max);
            if !got.is_empty() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let mut state = self.lock();
        if let Some(list) = state.processing.get_mut(node) {
            for d in deliveries {
                if let Some(i) = list.iter().position(|j| *j == d.job_id) {
                    list.remove(i);
                }
            }
        }
        Ok(())
    }

    async fn release(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        {
            let mut state = self.lock();
            let mut back = Vec::with_capacity(deliveries.len());
            if let Some(list) = state.processing.get_mut(node) {
                for d in deliveries {
                    if let Some(i) = list.iter().position(|j| *j == d.job_id) {
                        back.push(list.remove(i));
                    }
                }
            }
            for id in back.into_iter().rev() {
                state.ready.push_front(id);
            }
        }
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn remove(&self, job: &JobId) -> Result<bool, QueueError> {
        let mut state = self.lock();
        let before = state.ready.len();
        state.ready.retain(|j| j != job);
        Ok(state.ready.len() != before)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self.lock().ready.len() as u64)
    }

    async fn claimers(&self) -> Result<Vec<NodeId>, QueueError> {
        Ok(self
            .lock()
            .processing
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(n, _)| n.clone())
            .collect())
    }

    async fn recover(&self, node: &NodeId) -> Result<u64, QueueError> {
        let n = {
            let mut state = self.lock();
            let claimed = state.processing.remove(node).unwrap_or_default();
            let n = claimed.len() as u64;
            for id in claimed.into_iter().rev() {
                state.ready.push_front(id);
            }
            n
        };
        self.arrived.notify_waiters();
        Ok(n)
    }
}
