//! The job queue: how admitted jobs reach worker nodes.
//!
//! The queue carries job ids only; each job's record (spec, status, epoch) lives in the store
//! ([`crate::store`]). A claim moves a job from the shared ready queue to the claiming node
//! (its *processing* list, or an unacked delivery) in one step, so a node that dies right
//! after a claim loses nothing: [`JobQueue::recover`] hands its claims back. Once the node has
//! recorded its claim in the store it acknowledges the delivery; from then on the store's lease
//! owns the job, not the queue.
//!
//! Backends: [`MemoryQueue`] (the embedded mode), [`RedisQueue`] (Redis lists) and
//! [`RabbitMqQueue`] (a durable RabbitMQ queue; state stays in Redis). Every backend passes the
//! one conformance suite in `shared/tests/queue_conformance.rs`, which states where a backend
//! promises less (RabbitMQ cannot remove a queued message by id).

mod memory;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
mod redis;
mod sharded;

use std::future::Future;
use std::time::Duration;

pub use self::memory::MemoryQueue;
#[cfg(feature = "rabbitmq")]
pub use self::rabbitmq::RabbitMqQueue;
pub use self::redis::{RedisQueue, SHARE_PAUSE};
pub use self::sharded::ShardedQueue;
use crate::ids::{JobId, NodeId};
use crate::redis_pool::RedisError;

/// A claimed job, not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The job claimed.
    pub job_id: JobId,
    /// The backend's delivery tag (RabbitMQ); 0 for backends that need none.
    pub tag: u64,
}

impl Delivery {
    /// A delivery without a tag.
    pub fn untagged(job_id: JobId) -> Self {
        Self { job_id, tag: 0 }
    }
}

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Redis failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The broker failed.
    #[error("broker: {0}")]
    Broker(String),
}

impl From<::redis::RedisError> for QueueError {
    fn from(e: ::redis::RedisError) -> Self {
        QueueError::Redis(e.into())
    }
}

impl From<deadpool_redis::PoolError> for QueueError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        QueueError::Redis(e.into())
    }
}

/// A FIFO queue of job ids with reliable claims.
///
/// Every method may be called concurrently from many tasks and processes.
pub trait JobQueue: Send + Sync + 'static {
    /// Appends `jobs` at the back of the queue, in order, in one round trip.
    fn enqueue(&self, jobs: &[JobId]) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Claims up to `max` jobs for `node`, oldest first. Waits up to `wait` for the first one
    /// when the queue is empty; returns an empty vector when none came. A claimed job is
    /// invisible to other claimers until it is [released](JobQueue::release) or
    /// [recovered](JobQueue::recover).
    fn claim(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send;

    /// Claims for `node` the next job, alone, waiting up to `wait` for it: what
    /// [`claim`](JobQueue::claim) does once it found the queue empty. For a caller that has just
    /// found the queue empty itself (a worker node whose store takes from the same Redis list),
    /// so that an idle node makes one blocking call per wait instead of a claim first. A job
    /// already waiting is returned at once, so none that arrived in between is missed.
    fn claim_next(
        &self,
        node: &NodeId,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>, QueueError>> + Send {
        self.claim(node, 1, wait)
    }
    /// Acknowledges deliveries: the queue forgets them.
    fn ack(
        &self,
        node: &NodeId,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives deliveries back: they go to the front of the queue, in their original order.
    fn release(
        &self,
        node: &NodeId,
        deliveries: &[Delivery],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Removes a queued (unclaimed) job. Returns whether it was found. Backends that cannot
    /// remove a message return `false`; the claim step then drops the job because its record
    /// says it was stopped.
    fn remove(&self, job: &JobId) -> impl Future<Output = Result<bool, QueueError>> + Send;

    /// How many jobs wait to be claimed, exactly.
    fn depth(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Returns every unacknowledged claim of a (dead) node to the front of the queue, in claim
    /// order. Returns how many were returned.
    fn recover(&self, node: &NodeId) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Nodes that may hold unacknowledged claims, for orphan recovery: the sweep recovers those
    /// that are not alive. Backends whose broker returns a dead consumer's deliveries by itself
    /// report none.
    fn claimers(&self) -> impl Future<Output = Result<Vec<NodeId>, QueueError>> + Send {
        async { Ok(Vec::new()) }
    }
}
