//! [`ServiceRunner`]: a runner over a long-running start function (a server, a queue consumer),
//! with an optional stop function and an optional readiness check.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::runner::{ErrorSink, RunnerCore, TokenFn, Work, delegate_runner_to_core, token_fn};
use crate::{BoxError, RunnerOptions, poll_until};

type StopFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;
type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// A runner whose work is one long-running start function.
///
/// Each run calls the start function with a fresh [`CancellationToken`]; the run lasts until the
/// function returns (`Ok`: the runner is stopped; `Err` or panic: the runner failed, and the error
/// is recorded and published) or is stopped. Stopping cancels the token, then calls the optional
/// stop function ([`with_stop`](Self::with_stop)) to help the work shut down, e.g. to close a
/// listener that does not watch the token.
///
/// **Readiness.** Without a readiness check a service counts as started once its task is
/// spawned, and `start` always succeeds (unless the parent token is cancelled); whatever happens
/// afterwards is a runtime failure. With [`ready_when`](Self::ready_when), `start` waits until the
/// check holds and fails with [`LifecycleError::StartFailed`](crate::LifecycleError::StartFailed)
/// if the work ends first (its error is the reason) or the check does not hold in time (the work
/// is then cancelled and aborted). This is what makes a [`RunnerGroup`](crate::RunnerGroup) see a
/// runner as "failed to start".
///
/// ```
/// use std::time::Duration;
/// use runfleet_lifecycle::{Runner, RunnerOptions, ServiceRunner};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let consumer = ServiceRunner::new(RunnerOptions::new("consumer"), |token| async move {
///     // Consume until told to stop.
///     token.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// })
/// .with_stop(|| async { Ok::<(), std::io::Error>(()) });
///
/// consumer.start().await?;
/// assert!(consumer.is_running());
/// consumer.stop(Duration::from_secs(5)).await?;
/// assert!(!consumer.is_running());
/// # Ok::<(), runfleet_lifecycle::LifecycleError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct ServiceRunner {
    core: RunnerCore<ServiceWork>,
}

impl ServiceRunner {
    /// A service running `start` until it returns or its token is cancelled.
    pub fn new<F, Fut, E>(options: RunnerOptions, start: F) -> Self
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self {
            core: RunnerCore::new(
                options,
                ServiceWork {
                    start: token_fn(start),
                    stop: None,
                    ready: None,
                },
            ),
        }
    }

    /// Calls `stop` on every stop of a running service, after its token is cancelled. It runs
    /// concurrently with waiting for the work to end and within the same deadline; its error is
    /// recorded and returned as [`LifecycleError::StopFailed`](crate::LifecycleError::StopFailed).
    pub fn with_stop<F, Fut, E>(mut self, stop: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.core.work.stop = Some(Arc::new(move || {
            stop().map(|r| r.map_err(Into::into)).boxed()
        }));
        self
    }

    /// Gives `start` a readiness phase: poll `check` every `interval` (as
    /// [`poll_until`](crate::poll_until)) until it holds, failing the start if the work ends
    /// first or `timeout` passes.
    pub fn ready_when<F, Fut>(mut self, interval: Duration, timeout: Duration, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.core.work.ready = Some(ReadyCheck {
            interval,
            timeout,
            check: Arc::new(move || check().boxed()),
        });
        self
    }
}

delegate_runner_to_core!(ServiceRunner);

#[derive(Clone)]
struct ReadyCheck {
    interval: Duration,
    timeout: Duration,
    check: CheckFn,
}

struct ServiceWork {
    start: TokenFn,
    stop: Option<StopFn>,
    ready: Option<ReadyCheck>,
}

impl Work for ServiceWork {
    fn run(
        &self,
        token: CancellationToken,
        _errors: ErrorSink,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let start = self.start.clone();
        // Call the user function inside the future, so that a panic in it is caught.
        async move { start(token).await }.boxed()
    }

    fn ready(&self) -> Option<BoxFuture<'static, bool>> {
        let ReadyCheck {
            interval,
            timeout,
            check,
        } = self.ready.clone()?;
        Some(poll_until(interval, timeout, move || check()).boxed())
    }

    fn on_stop(&self) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        let stop = self.stop.clone()?;
        Some(async move { stop().await }.boxed())
    }
}

impl fmt::Debug for ServiceWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceWork")
            .field("has_stop", &self.stop.is_some())
            .field("ready_timeout", &self.ready.as_ref().map(|r| r.timeout))
            .finish_non_exhaustive()
    }
}
