//! Process shutdown: wait for SIGTERM or Ctrl-C, then give the work a bounded time to finish.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

/// Runs `work` (which must end once `token` is cancelled) until it ends by itself or a signal
/// arrives; after a signal, cancels `token` and waits at most `deadline` for `work` to finish.
/// Returns `false` when the deadline passed first.
pub async fn run_until_signal(
    token: CancellationToken,
    work: impl Future<Output = ()> + Send + 'static,
    deadline: Duration,
) -> bool {
    let mut work = tokio::spawn(work);
    tokio::select! {
        _ = &mut work => return true,
        () = signal() => {}
        () = token.cancelled() => {}
    }
    token.cancel();
    match tokio::time::timeout(deadline, work).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(
                deadline_ms = deadline.as_millis() as u64,
                "shutdown deadline passed; exiting anyway"
            );
            false
        }
    }
}
