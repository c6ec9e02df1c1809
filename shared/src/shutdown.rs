//! Process lifecycle: a binary's services are runners in a [`RunnerGroup`]; SIGTERM or Ctrl-C
//! stops the whole group under one deadline.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lifecycle::{LifecycleError, RunnerGroup, StopReport};

/// Resolves on the first SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Starts every runner of `group`, then waits for SIGTERM or Ctrl-C, for `stop` to be
/// cancelled, or for any runner to end on its own; then stops the whole group within
/// `deadline`. Returns each runner's stop outcome.
pub async fn run_group(
    group: &RunnerGroup,
    stop: CancellationToken,
    deadline: Duration,
) -> Result<StopReport, LifecycleError> {
    group.start_all().await?;
    let ended: Vec<_> = group.runners().map(|r| r.ended()).collect();
    let any_ended = async {
        if ended.is_empty() {
            std::future::pending::<()>().await;
        }
        futures::future::select_all(ended).await;
    };
    tokio::select! {
        () = signal() => {}
        () = stop.cancelled() => {}
        () = any_ended => tracing::warn!("a service ended on its own; shutting the process down"),
    }
    let report = group.stop_all(deadline).await;
    for failure in report.failures() {
        tracing::warn!(runner = failure.name, outcome = ?failure.result, "service did not stop cleanly");
    }
    Ok(report)
}
