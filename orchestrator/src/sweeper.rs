//! The orchestrators' share of reliability, run as a ticker every `sweep.interval_ms`: the
//! crash sweep (one orchestrator per interval takes it), restarts whose delay has passed,
//! queued jobs whose publish was never confirmed (an orchestrator died mid-start), and recovery
//! of claims held by dead nodes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use runfleet_shared::config::SweepSettings;
use runfleet_shared::dispatch::Dispatcher;
use runfleet_shared::ids::NodeId;
use runfleet_shared::observability;
use runfleet_shared::queue::{JobQueue, QueueError};
use runfleet_shared::store::{FleetStore, StoreError};

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

/// One tick: sweep expired leases (if this process takes the guard), dispatch due restarts and
/// queued jobs whose publish was not confirmed in time (through [`Dispatcher`]: a publish that
/// fails now stays pending and a later tick tries again), and give dead nodes' unacknowledged
/// claims back to the queue.
pub async fn tick<S: FleetStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    settings: &SweepSettings,
) -> Result<(), SweepError> {
    let began = Instant::now();
    let result = sweep_once(store, queue, settings).await;
    metrics::histogram!(observability::SWEEP_DURATION_SECONDS).record(began.elapsed());
    match &result {
        Err(SweepError::Store(_)) => {
            metrics::counter!(observability::STORE_ERRORS_TOTAL).increment(1);
        }
        Err(SweepError::Queue(_)) => {
            metrics::counter!(observability::QUEUE_ERRORS_TOTAL).increment(1);
        }
        Ok(()) => {}
    }
    result
}

async fn sweep_once<S: FleetStore, Q: JobQueue>(
    store: &S,
    queue: &Q,
    settings: &SweepSettings,
) -> Result<(), SweepError> {
    let interval = Duration::from_millis(settings.interval_ms);
    if let Some(report) = store.sweep(interval, settings.batch).await?
        && report.crashed > 0
    {
        metrics::counter!(observability::EXPIRED_LEASES_TOTAL).increment(report.crashed.into());
        tracing::warn!(
            crashed = report.crashed,
            restarting = report.restarting,
            failed = report.failed,
            "crash sweep: runners went silent"
        );
    }
    store
        .sample_history(
            Duration::from_millis(settings.history_every_ms),
            settings.history_keep,
        )
        .await?;
    let dispatcher = Dispatcher::new(store, queue);
    let due = dispatcher.restart_due(settings.batch).await?;
    if !due.is_empty() {
        metrics::counter!(observability::RESTARTS_TOTAL).increment(due.len() as u64);
        tracing::info!(jobs = due.len(), "crashed runners queued for restart");
    }
    let requeue_after = Duration::from_millis(settings.requeue_after_ms);
    dispatcher
        .republish_unconfirmed(requeue_after, settings.batch)
        .await?;
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
