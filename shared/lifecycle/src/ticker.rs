//! [`Ticker`]: a runner calling an async function at a fixed interval.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::{describe_error, panic_message};
use crate::runner::{ErrorSink, RunnerCore, TokenFn, Work, delegate_runner_to_core, token_fn};
use crate::{BoxError, ErrorKind, LifecycleError, RunnerOptions};

/// A runner calling a tick function every interval, first one interval after start.
///
/// A tick that returns an error or panics is recorded in the error history (as
/// [`ErrorKind::Tick`] or [`ErrorKind::Panicked`]) and the ticker goes on. Ticks run one at a
/// time; the tick function gets the run's token, and on stop an ongoing tick is left to finish
/// (within the stop deadline) rather than dropped midway.
///
/// **Slow ticks.** When a tick outlasts the interval, the ticks that fell due meanwhile are
/// either run late, back to back until the schedule is caught up (the default, tokio's
/// [`MissedTickBehavior::Burst`]), or skipped with
/// [`skip_overlapping(true)`](Self::skip_overlapping): the next tick is then the next one on the
/// original schedule after the slow tick ended. (Tokio's [`MissedTickBehavior::Skip`] alone
/// would still run one of the missed ticks late; the ticker drops that one too.)
///
/// ```
/// use std::time::Duration;
/// use runfleet_lifecycle::{Runner, RunnerOptions, Ticker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cleanup = Ticker::new(RunnerOptions::new("cleanup"), Duration::from_secs(60), |_token| async {
///     // Remove expired sessions...
///     Ok::<(), std::io::Error>(())
/// })?
/// .skip_overlapping(true);
///
/// cleanup.start().await?;
/// cleanup.stop(Duration::from_secs(5)).await?;
/// # Ok::<(), runfleet_lifecycle::LifecycleError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct Ticker {
    core: RunnerCore<TickWork>,
}

impl Ticker {
    /// The shortest interval accepted.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

    /// A ticker calling `tick` every `interval`; fails with
    /// [`LifecycleError::IntervalTooShort`] below [`MIN_INTERVAL`](Self::MIN_INTERVAL).
    pub fn new<F, Fut, E>(
        options: RunnerOptions,
        interval: Duration,
        tick: F,
    ) -> Result<Self, LifecycleError>
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        if interval < Self::MIN_INTERVAL {
            return Err(LifecycleError::IntervalTooShort {
                name: options.name().to_owned(),
                interval,
                min: Self::MIN_INTERVAL,
            });
        }
        let work = TickWork {
            interval,
            skip_overlapping: false,
            tick: token_fn(tick),
        };
        Ok(Self {
            core: RunnerCore::new(options, work),
        })
    }

    /// Whether to skip the ticks that fall due while a tick is still running (`true`) or run
    /// them late (`false`, the default).
    pub fn skip_overlapping(mut self, skip: bool) -> Self {
        self.core.work.skip_overlapping = skip;
        self
    }

    /// The interval between ticks.
    pub fn interval(&self) -> Duration {
        self.core.work.interval
    }
}

delegate_runner_to_core!(Ticker);

struct TickWork {
    interval: Duration,
    skip_overlapping: bool,
    tick: TokenFn,
}

impl Work for TickWork {
    fn run(
        &self,
        token: CancellationToken,
        errors: ErrorSink,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        let (period, skip, tick) = (self.interval, self.skip_overlapping, self.tick.clone());
        async move {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(if skip {
                MissedTickBehavior::Skip
            } else {
                MissedTickBehavior::Burst
            });
            let mut idle_since = Instant::now();
            loop {
                let due = tokio::select! {
                    biased;
                    () = token.cancelled() => return Ok(()),
                    due = interval.tick() => due,
                };
                if skip && due < idle_since {
                    continue; // it fell due while the previous tick was running
                }
                // The call is inside the caught future, so a panic in `tick` itself is caught too.
                let run = AssertUnwindSafe(async { tick(token.clone()).await });
                match run.catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => errors.record(ErrorKind::Tick, describe_error(&*error)),
                    Err(payload) => {
                        errors.record(ErrorKind::Panicked, panic_message(payload.as_ref()))
                    }
                }
                idle_since = Instant::now();
            }
        }
        .boxed()
    }
}

impl fmt::Debug for TickWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TickWork")
            .field("interval", &self.interval)
            .field("skip_overlapping", &self.skip_overlapping)
            .finish_non_exhaustive()
    }
}
