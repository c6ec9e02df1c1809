//! Getting queued jobs into the queue: the one place that knows whether the store already did.
//!
//! A job becomes queued in four places (admission, a due restart, a hand-back at shutdown, the
//! sweep's re-publish of an unconfirmed one). With the Redis-list queue the store's script
//! pushes the id in the same atomic step, so nothing is left to do and no crash can strand a
//! queued job outside the queue. With a queue outside Redis (RabbitMQ) the store records the job
//! as *pending*; [`dispatch`] publishes it and confirms, and a job whose confirmation never
//! comes (its process died in between) is published again by the sweep
//! ([`Sweeper::unconfirmed`](crate::store::Sweeper::unconfirmed)). A duplicate message is
//! harmless: the claim script drops a job that is no longer queued. [`Dispatcher`] is the
//! service every caller goes through: it records, then publishes, by one rule.

use std::time::Duration;

use crate::ids::{JobId, NodeId};
use crate::job::JobSpec;
use crate::queue::{JobQueue, QueueError};
use crate::store::{Admission, FleetStore, JobStore, StoreError};

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

/// Records jobs as queued in the store, then queues them: the one service that does both, for
/// every way a job becomes queued (an admission, a due restart, the sweep's re-publish of an
/// unconfirmed job, a node's hand-back at shutdown).
///
/// The rule: the record is the truth and a publish is never undone. A failed publish is
/// counted (`runfleet_queue_errors_total`) and logged, and the job stays recorded as pending:
/// the sweep publishes it again until the queue confirms it, and the claim script drops any
/// duplicate. Undoing an admission instead raced with a node that had already claimed a
/// publish whose confirmation was lost, so a start answered 503 could run after all. Store
/// errors are returned; nothing was recorded then, so there is nothing to publish.
#[derive(Debug)]
pub struct Dispatcher<'a, S, Q> {
    store: &'a S,
    queue: &'a Q,
}

impl<'a, S: FleetStore, Q: JobQueue> Dispatcher<'a, S, Q> {
    /// The service over `store` and `queue`.
    pub fn new(store: &'a S, queue: &'a Q) -> Self {
        Self { store, queue }
    }

    /// Admits `spec` ([`JobStore::admit`]) and, when admitted, queues it.
    pub async fn admit(&self, spec: &JobSpec) -> Result<Admission, StoreError> {
        let admission = self.store.admit(spec).await?;
        if matches!(admission, Admission::Admitted { .. }) {
            self.publish(std::slice::from_ref(&spec.id)).await;
        }
        Ok(admission)
    }

    /// Admits each of `specs` on its own ([`JobStore::admit_many`]), then queues the admitted
    /// ones in one publish.
    pub async fn admit_many(&self, specs: &[JobSpec]) -> Result<Vec<Admission>, StoreError> {
        let admissions = self.store.admit_many(specs).await?;
        let admitted: Vec<JobId> = specs
            .iter()
            .zip(&admissions)
            .filter(|(_, a)| matches!(a, Admission::Admitted { .. }))
            .map(|(s, _)| s.id.clone())
            .collect();
        self.publish(&admitted).await;
        Ok(admissions)
    }

    /// Makes crashed jobs whose restart delay has passed queued again (at most `batch`,
    /// [`Sweeper::due_restarts`](crate::store::Sweeper::due_restarts)) and queues them; returns them.
    pub async fn restart_due(&self, batch: u32) -> Result<Vec<JobId>, StoreError> {
        let due = self.store.due_restarts(batch).await?;
        self.publish(&due).await;
        Ok(due)
    }

    /// Publishes again the queued jobs whose publish was not confirmed within `older_than` (at
    /// most `batch`, [`Sweeper::unconfirmed`](crate::store::Sweeper::unconfirmed)); returns them.
    pub async fn republish_unconfirmed(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> Result<Vec<JobId>, StoreError> {
        let jobs = self.store.unconfirmed(older_than, batch).await?;
        if !jobs.is_empty() {
            tracing::warn!(
                jobs = jobs.len(),
                "queued jobs whose publish was never confirmed: publishing them again"
            );
        }
        self.publish(&jobs).await;
        Ok(jobs)
    }

    /// Marks a job `node` runs queued again at shutdown, with its final paper account, if
    /// `epoch` is current ([`LeaseStore::hand_back`](crate::store::LeaseStore::hand_back)), and queues it. Returns whether the store
    /// accepted it.
    pub async fn hand_back(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        account: Option<crate::kind::SavedState>,
    ) -> Result<bool, StoreError> {
        let accepted = self.store.hand_back(node, job, epoch, account).await?;
        if accepted {
            self.publish(std::slice::from_ref(job)).await;
        }
        Ok(accepted)
    }

    /// [`dispatch`], its failure counted and logged (never undone: see [`Dispatcher`]).
    async fn publish(&self, jobs: &[JobId]) {
        if let Err(e) = dispatch(self.store, self.queue, jobs).await {
            metrics::counter!(crate::observability::QUEUE_ERRORS_TOTAL).increment(1);
            tracing::warn!(jobs = jobs.len(), error = %e, "publishing queued jobs failed; the sweep publishes them again");
        }
    }
}
