//! The [`Runner`] trait, the [`RunnerOptions`] common to every kind, and the core every kind is
//! built on.
//!
//! The core owns all lifecycle machinery, so that [`ServiceRunner`](crate::ServiceRunner) and
//! [`Ticker`](crate::Ticker) only describe their work:
//!
//! - transitions (start, stop, restart) are serialized by one async mutex, which makes them
//!   idempotent and safe to call concurrently;
//! - the work runs on its own tokio task, supervised: its result or panic becomes the run's
//!   outcome, recorded and published by a drop guard that also covers an aborted task;
//! - the observable status (running since when, error history) sits behind a short-lived std
//!   mutex, so `is_running`, `uptime` and `errors` are synchronous and never wait on a transition.
//!
//! Each start begins a new *run*, numbered by a generation counter: whatever a superseded run
//! does later (a task aborted after a stop timeout finally ending) cannot touch the current one.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{describe_error, panic_message};
use crate::{
    BoxError, ErrorHistory, ErrorKind, ErrorRecord, EventBus, EventKind, EventSubscription,
    LifecycleError, LifecycleEvent,
};

/// A named unit of background work with a start/stop lifecycle.
///
/// The trait is object safe, so a [`RunnerGroup`](crate::RunnerGroup) can hold runners of
/// different kinds as `Arc<dyn Runner>`.
///
/// - [`start`](Runner::start) launches the work on a tokio task and returns once the runner is
///   running (after its readiness phase, if it has one); it does not wait for the work to end.
///   Starting a running runner does nothing and succeeds. Dropping the returned future during
///   the readiness phase cancels the run it began.
/// - [`stop`](Runner::stop) cancels the work and waits for it to end, at most `timeout`; past
///   that the task is aborted and [`LifecycleError::StopTimeout`] returned. Stopping a stopped
///   runner does nothing and succeeds. Dropping the returned future (cancelling the stop) leaves
///   the work cancelled and winding down on its own.
///   (An abort takes effect at the work's next `.await`: work that blocks its thread without
///   awaiting cannot be aborted, so keep blocking code in `spawn_blocking`.)
/// - Transitions are serialized: any number of tasks may call them concurrently.
pub trait Runner: Send + Sync + fmt::Debug {
    /// The runner's name, as given in its [`RunnerOptions`].
    fn name(&self) -> &str;

    /// Starts the work, unless it is running already.
    fn start(&self) -> BoxFuture<'_, Result<(), LifecycleError>>;

    /// Stops the work, waiting at most `timeout` for it to end.
    fn stop(&self, timeout: Duration) -> BoxFuture<'_, Result<(), LifecycleError>>;

    /// Stops (as [`stop`](Runner::stop), with `timeout`) then starts again, as one transition.
    /// If stopping fails the runner is not started again. Publishes
    /// [`EventKind::Restarted`] instead of [`EventKind::Started`].
    fn restart(&self, timeout: Duration) -> BoxFuture<'_, Result<(), LifecycleError>>;

    /// Whether the work is running: started and not ended, stopped or failed since.
    fn is_running(&self) -> bool;

    /// How long the current run has been going; zero when not running.
    fn uptime(&self) -> Duration;

    /// A snapshot of the error history, oldest first.
    fn errors(&self) -> ErrorHistory;

    /// The most recent recorded error.
    fn last_error(&self) -> Option<ErrorRecord> {
        self.errors().last().cloned()
    }

    /// A subscription to the bus this runner publishes its [`LifecycleEvent`]s on (shared with
    /// other runners if it was given a shared bus).
    fn subscribe(&self) -> EventSubscription;

    /// Resolves once the runner is not running: at once if it is not running now, else when
    /// its current run ends, whether by itself, by an error or a panic, or by a stop. A
    /// supervisor awaits this to learn that work it started has ended on its own.
    fn ended(&self) -> BoxFuture<'static, ()>;
}

/// Settings common to every runner kind: name, error history capacity, parent token, event bus.
///
/// ```
/// use runfleet_lifecycle::{CancellationToken, EventBus, RunnerOptions};
///
/// let shutdown = CancellationToken::new();
/// let events = EventBus::default();
/// let options = RunnerOptions::new("billing-sync")
///     .history_capacity(64)
///     .parent(shutdown.clone())
///     .events(events.clone());
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    name: Arc<str>,
    history_capacity: usize,
    parent: Option<CancellationToken>,
    events: Option<EventBus>,
}

impl RunnerOptions {
    /// Options for a runner called `name`, with defaults: an error history of
    /// [`ErrorHistory::DEFAULT_CAPACITY`], no parent token, a bus of its own.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            history_capacity: ErrorHistory::DEFAULT_CAPACITY,
            parent: None,
            events: None,
        }
    }

    /// The runner's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keeps at most `capacity` (at least one) errors in the history.
    pub fn history_capacity(mut self, capacity: usize) -> Self {
        self.history_capacity = capacity;
        self
    }

    /// Makes each run's cancellation token a child of `parent`: cancelling `parent` stops the
    /// runner, and `start` fails with [`LifecycleError::ParentCancelled`] once it is cancelled.
    pub fn parent(mut self, parent: CancellationToken) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Publishes lifecycle events on `bus` instead of a bus of the runner's own.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }
}

/// A runner kind's work, as the core drives it. Futures are boxed and `'static` so they can be
/// spawned; implementations call user functions inside the returned future, never before, so
/// that a panicking user function is caught as the run's panic.
pub(crate) trait Work: Send + Sync + 'static {
    /// One run of the work, ending when it is done or soon after `token` is cancelled. Errors
    /// that do not end the run are recorded through `errors`.
    fn run(
        &self,
        token: CancellationToken,
        errors: ErrorSink,
    ) -> BoxFuture<'static, Result<(), BoxError>>;

    /// The readiness phase of `start`: resolves to whether the running work became ready.
    /// `None` means ready as soon as the task is spawned.
    fn ready(&self) -> Option<BoxFuture<'static, bool>> {
        None
    }

    /// Run on stop, after the token is cancelled and while waiting for the run to end.
    fn on_stop(&self) -> Option<BoxFuture<'static, Result<(), BoxError>>> {
        None
    }
}

/// A user function called with a run's token (a start or tick function), type-erased.
pub(crate) type TokenFn =
    Arc<dyn Fn(CancellationToken) -> BoxFuture<'static, Result<(), BoxError>> + Send + Sync>;

/// Erases `f` into a [`TokenFn`], converting its error into a [`BoxError`].
pub(crate) fn token_fn<F, Fut, E>(f: F) -> TokenFn
where
    F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    Arc::new(move |token| f(token).map(|result| result.map_err(Into::into)).boxed())
}

/// Lets a run record errors that do not end it (a ticker's failed tick).
#[derive(Clone)]
pub(crate) struct ErrorSink(Arc<Shared>);

impl ErrorSink {
    pub(crate) fn record(&self, kind: ErrorKind, message: String) {
        self.0.record(kind, message);
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
enum Outcome {
    Finished,
    Failed(String),
    Panicked(String),
}

impl Outcome {
    fn reason(ended: Result<Self, tokio::task::JoinError>) -> String {
        match ended {
            Ok(Self::Finished) => "the work ended before becoming ready".to_owned(),
            Ok(Self::Failed(message)) => message,
            Ok(Self::Panicked(message)) => format!("panicked: {message}"),
            Err(join_error) => join_error.to_string(),
        }
    }
}

/// What the status lock protects.
#[derive(Debug)]
struct Status {
    /// The current run's number; bumped by every start.
    generation: u64,
    /// When the current run started; `None` when not running.
    started_at: Option<Instant>,
    history: ErrorHistory,
}

/// State shared between the runner and its running task.
#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    events: EventBus,
    status: Mutex<Status>,
    /// Whether a run is going; changed under the status lock, watched by [`Runner::ended`].
    running: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, Status> {
        // The lock is never held across user code, so poisoning cannot leave it inconsistent.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, kind: EventKind) {
        self.events
            .publish(LifecycleEvent::new(self.name.clone(), kind));
    }

    fn record(&self, kind: ErrorKind, message: String) {
        tracing::warn!(runner = %self.name, ?kind, %message, "runner error");
        self.status().history.push(ErrorRecord::new(kind, message));
    }

    /// Begins a new run; publishes `announce` at once if given. Returns the run's generation.
    fn begin_run(&self, announce: Option<EventKind>) -> u64 {
        let mut status = self.status();
        status.generation += 1;
        status.started_at = Some(Instant::now());
        self.running.send_replace(true);
        if let Some(kind) = announce {
            self.publish(kind);
        }
        status.generation
    }

    /// Publishes `kind` if run `generation` is still going; returns whether it was.
    fn announce(&self, generation: u64, kind: EventKind) -> bool {
        let status = self.status();
        let going = status.generation == generation && status.started_at.is_some();
        if going {
            self.publish(kind);
        }
        going
    }

    /// Records `error`, then ends run `generation` if it is still going: marks the runner
    /// stopped and publishes `event`. Events are published under the status lock, so they are
    /// ordered as the transitions they report.
    fn end_run(&self, generation: u64, error: Option<(ErrorKind, String)>, event: EventKind) {
        if let Some((kind, message)) = error {
            self.record(kind, message);
        }
        let mut status = self.status();
        if status.generation == generation && status.started_at.take().is_some() {
            self.running.send_replace(false);
            self.publish(event);
        }
    }
}

/// Ends its run when dropped: after the work's outcome is known, or without an outcome when the
/// task is aborted or the runtime shuts down.
struct RunGuard {
    shared: Arc<Shared>,
    generation: u64,
    outcome: Option<Outcome>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        let (error, event) = match self.outcome.take() {
            None | Some(Outcome::Finished) => (None, EventKind::Stopped),
            Some(Outcome::Failed(message)) => (
                Some((ErrorKind::Failed, message.clone())),
                EventKind::Failed { message },
            ),
            Some(Outcome::Panicked(message)) => (
                Some((ErrorKind::Panicked, message.clone())),
                EventKind::Panicked { message },
            ),
        };
        self.shared.end_run(self.generation, error, event);
    }
}

/// The task body of a run: drives `work`, turning its error or panic into the outcome.
async fn supervise(
    shared: Arc<Shared>,
    generation: u64,
    work: BoxFuture<'static, Result<(), BoxError>>,
) -> Outcome {
    let mut guard = RunGuard {
        shared,
        generation,
        outcome: None,
    };
    let outcome = match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(())) => Outcome::Finished,
        Ok(Err(error)) => Outcome::Failed(describe_error(&*error)),
        Err(payload) => Outcome::Panicked(panic_message(payload.as_ref())),
    };
    guard.outcome = Some(outcome.clone());
    outcome
}

/// The current run, as the transition lock holds it.
#[derive(Debug)]
struct Active {
    generation: u64,
    token: CancellationToken,
    task: JoinHandle<Outcome>,
}

/// The lifecycle machinery shared by every runner kind; `W` is the kind's work.
pub(crate) struct RunnerCore<W> {
    pub(crate) work: W,
    shared: Arc<Shared>,
    parent: Option<CancellationToken>,
    active: tokio::sync::Mutex<Option<Active>>,
}

impl<W: Work> RunnerCore<W> {
    pub(crate) fn new(options: RunnerOptions, work: W) -> Self {
        let shared = Shared {
            name: options.name,
            events: options.events.unwrap_or_default(),
            status: Mutex::new(Status {
                generation: 0,
                started_at: None,
                history: ErrorHistory::new(options.history_capacity),
            }),
            running: tokio::sync::watch::Sender::new(false),
        };
        Self {
            work,
            shared: Arc::new(shared),
            parent: options.parent,
            active: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.shared.name
    }

    pub(crate) fn is_running(&self) -> bool {
        self.shared.status().started_at.is_some()
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.shared
            .status()
            .started_at
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    pub(crate) fn errors(&self) -> ErrorHistory {
        self.shared.status().history.clone()
    }

    pub(crate) fn subscribe(&self) -> EventSubscription {
        self.shared.events.subscribe()
    }

    pub(crate) fn ended(&self) -> BoxFuture<'static, ()> {
        let mut running = self.shared.running.subscribe();
        Box::pin(async move {
            // The sender lives as long as the runner; if it is dropped, nothing runs any more.
            let _ = running.wait_for(|r| !*r).await;
        })
    }

    pub(crate) async fn start(&self) -> Result<(), LifecycleError> {
        let mut active = self.active.lock().await;
        self.start_locked(&mut active, EventKind::Started).await
    }

    pub(crate) async fn stop(&self, timeout: Duration) -> Result<(), LifecycleError> {
        let mut active = self.active.lock().await;
        self.stop_locked(&mut active, timeout).await
    }

    pub(crate) async fn restart(&self, timeout: Duration) -> Result<(), LifecycleError> {
        let mut active = self.active.lock().await;
        self.stop_locked(&mut active, timeout).await?;
        self.start_locked(&mut active, EventKind::Restarted).await
    }

    async fn start_locked(
        &self,
        active: &mut Option<Active>,
        announce: EventKind,
    ) -> Result<(), LifecycleError> {
        if active.is_some() && self.is_running() {
            return Ok(());
        }
        if let Some(ended) = active.take() {
            // The previous run ended on its own; its task is past its guard, so this is prompt.
            let _ = ended.task.await;
        }
        let token = match &self.parent {
            Some(parent) if parent.is_cancelled() => {
                return Err(LifecycleError::ParentCancelled {
                    name: self.name().to_owned(),
                });
            }
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };

        let ready = self.work.ready();
        let generation = self
            .shared
            .begin_run(ready.is_none().then(|| announce.clone()));
        let work = self.work.run(token.clone(), ErrorSink(self.shared.clone()));
        let mut task = tokio::spawn(supervise(self.shared.clone(), generation, work));

        if let Some(ready) = ready {
            // If this start is dropped during the readiness phase, cancel the run it began.
            let cancel_if_dropped = token.clone().drop_guard();
            let became_ready = tokio::select! {
                ended = &mut task => return Err(self.start_failed(Outcome::reason(ended))),
                ready = ready => ready,
            };
            if !became_ready {
                token.cancel();
                task.abort();
                let reason = "not ready before the readiness timeout".to_owned();
                self.shared.end_run(
                    generation,
                    Some((ErrorKind::Start, reason.clone())),
                    EventKind::Failed {
                        message: reason.clone(),
                    },
                );
                return Err(self.start_failed(reason));
            }
            if !self.shared.announce(generation, announce) {
                // Ready, but the work ended before the start could be announced.
                return Err(self.start_failed(Outcome::reason(task.await)));
            }
            cancel_if_dropped.disarm();
        }
        tracing::debug!(runner = %self.shared.name, "runner started");
        *active = Some(Active {
            generation,
            token,
            task,
        });
        Ok(())
    }

    async fn stop_locked(
        &self,
        active: &mut Option<Active>,
        timeout: Duration,
    ) -> Result<(), LifecycleError> {
        let Some(Active {
            generation,
            token,
            mut task,
        }) = active.take()
        else {
            return Ok(());
        };
        token.cancel();
        if !self.is_running() {
            // The run already ended on its own (its outcome is recorded): just reap the task.
            let _ = task.await;
            return Ok(());
        }
        let on_stop = self.work.on_stop();
        let stopping = async {
            let on_stop = async {
                match on_stop {
                    Some(hook) => Some(AssertUnwindSafe(hook).catch_unwind().await),
                    None => None,
                }
            };
            futures::join!(on_stop, &mut task).0
        };
        let stopped = tokio::time::timeout(timeout, stopping).await;

        let name = self.name().to_owned();
        match stopped {
            Ok(None | Some(Ok(Ok(())))) => {
                tracing::debug!(runner = %name, "runner stopped");
                Ok(())
            }
            Ok(Some(Ok(Err(error)))) => {
                let reason = describe_error(&*error);
                self.shared.record(ErrorKind::Stop, reason.clone());
                Err(LifecycleError::StopFailed { name, reason })
            }
            Ok(Some(Err(payload))) => {
                let reason = format!("panicked: {}", panic_message(payload.as_ref()));
                self.shared.record(ErrorKind::Panicked, reason.clone());
                Err(LifecycleError::StopFailed { name, reason })
            }
            Err(_elapsed) => {
                task.abort();
                let reason = format!("did not stop within {timeout:?}; its task was aborted");
                self.shared.end_run(
                    generation,
                    Some((ErrorKind::Stop, reason)),
                    EventKind::Stopped,
                );
                Err(LifecycleError::StopTimeout {
                    name,
                    after: timeout,
                })
            }
        }
    }

    fn start_failed(&self, reason: String) -> LifecycleError {
        LifecycleError::StartFailed {
            name: self.name().to_owned(),
            reason,
        }
    }
}

impl<W> Drop for RunnerCore<W> {
    /// A dropped runner cancels its run rather than leaving it running unreachable.
    fn drop(&mut self) {
        if let Some(active) = self.active.get_mut() {
            active.token.cancel();
        }
    }
}

impl<W: fmt::Debug> fmt::Debug for RunnerCore<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.shared.status();
        f.debug_struct("Runner")
            .field("name", &self.shared.name)
            .field("running", &status.started_at.is_some())
            .field("errors", &status.history.len())
            .field("work", &self.work)
            .finish_non_exhaustive()
    }
}

/// Implements [`Runner`] for a runner kind by delegating to its `core: RunnerCore<_>` field.
macro_rules! delegate_runner_to_core {
    ($kind:ty) => {
        impl $crate::Runner for $kind {
            fn name(&self) -> &str {
                self.core.name()
            }

            fn start(
                &self,
            ) -> ::futures::future::BoxFuture<'_, Result<(), $crate::LifecycleError>> {
                Box::pin(self.core.start())
            }

            fn stop(
                &self,
                timeout: ::std::time::Duration,
            ) -> ::futures::future::BoxFuture<'_, Result<(), $crate::LifecycleError>> {
                Box::pin(self.core.stop(timeout))
            }

            fn restart(
                &self,
                timeout: ::std::time::Duration,
            ) -> ::futures::future::BoxFuture<'_, Result<(), $crate::LifecycleError>> {
                Box::pin(self.core.restart(timeout))
            }

            fn is_running(&self) -> bool {
                self.core.is_running()
            }

            fn uptime(&self) -> ::std::time::Duration {
                self.core.uptime()
            }

            fn errors(&self) -> $crate::ErrorHistory {
                self.core.errors()
            }

            fn subscribe(&self) -> $crate::EventSubscription {
                self.core.subscribe()
            }

            fn ended(&self) -> ::futures::future::BoxFuture<'static, ()> {
                self.core.ended()
            }
        }
    };
}
pub(crate) use delegate_runner_to_core;
