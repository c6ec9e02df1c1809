//! Getting queued jobs into the queue: the one place that knows whether the store already did.
//!
//! A job becomes queued in four places (admission, a due restart, a hand-back at shutdown, the
//! sweep's re-publish of an unconfirmed one). With the Redis-list queue the store's script
//! pushes the id in the same atomic step, so nothing is left to do and no crash can strand a
//! queued job outside the queue. With a queue outside Redis (RabbitMQ) the store records the job
//! as *pending*; [`dispatch`] publishes it and confirms, and a job whose confirmation never
//! comes (its process died in between) is published again by the sweep
//! ([`Sweeper::unconfirmed`](crate::store::Sweeper::unconfirmed)). A duplicate message is
//! harmless: the claim script drops a job that is no longer queued.

use crate::ids::JobId;
use crate::queue::{JobQueue, QueueError};
use crate::store::JobStore;

/// Publishes queued `jobs` unless the store queued them itself, then confirms them. A failed
/// publish is returned (the caller decides: undo an admission, or leave it to the sweep); a
/// failed confirmation is only logged, since the sweep's re-publish is then a harmless duplicate.
pub async fn dispatch<S: JobStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    jobs: &[JobId],
) -> Result<(), QueueError> {
    if jobs.is_empty() || store.queues_inline() {
        return Ok(());
    }
    queue.enqueue(jobs).await?;
    if let Err(e) = store.confirm_enqueued(jobs).await {
        tracing::warn!(jobs = jobs.len(), error = %e, "enqueue not confirmed in the store; the sweep will publish again");
    }
    Ok(())
}
