//! The orchestrators' share of reliability, run as a ticker every `sweep.interval_ms`: the
//! crash sweep (one orchestrator per interval takes it), restarts whose delay has passed, and
//! recovery of claims held by dead nodes.

use std::collections::HashSet;
use std::time::Duration;

use runfleet::config::SweepSettings;
use runfleet::ids::NodeId;
use runfleet::queue::{JobQueue, QueueError};
use runfleet::store::{FleetStore, StoreError};

/// Why a sweep tick failed (it is retried at the next tick).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// How long a restart whose enqueue failed waits before it is tried again.
const RETRY_ENQUEUE: Duration = Duration::from_secs(1);

/// One tick: sweep expired leases (if this process takes the guard), enqueue due restarts, and
/// give dead nodes' unacknowledged claims back to the queue.
pub async fn tick<S: FleetStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    settings: &SweepSettings,
) -> Result<(), SweepError> {
    let interval = Duration::from_millis(settings.interval_ms);
    if let Some(report) = store.sweep(interval, settings.batch).await?
        && report.crashed > 0
    {
        tracing::warn!(
            crashed = report.crashed,
            restarting = report.restarting,
            failed = report.failed,
            "crash sweep: runners went silent"
        );
    }
    let due = store.due_restarts(settings.batch).await?;
    if !due.is_empty() {
        if let Err(e) = queue.enqueue(&due).await {
            store.defer(&due, RETRY_ENQUEUE).await?;
            return Err(e.into());
        }
        tracing::info!(jobs = due.len(), "crashed runners queued for restart");
    }
    let claimers = queue.claimers().await?;
    if !claimers.is_empty() {
        let live: HashSet<NodeId> = store
            .nodes()
            .await?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        for node in claimers.into_iter().filter(|n| !live.contains(n)) {
            let n = queue.recover(&node).await?;
            if n > 0 {
                tracing::warn!(node = %node, jobs = n, "recovered claims of a dead node");
            }
        }
    }
    Ok(())
}
