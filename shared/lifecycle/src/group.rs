//! [`RunnerGroup`]: named runners booted and shut down together, and the [`StopReport`] of a
//! shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::{LifecycleError, Runner};

/// A set of uniquely named runners started and stopped together, concurrently.
///
/// - [`start_all`](Self::start_all) starts every runner at once. A runner *fails to start* when
///   its `start` returns an error: its parent token is cancelled, or its readiness phase failed
///   (for a [`ServiceRunner`](crate::ServiceRunner) with
///   [`ready_when`](crate::ServiceRunner::ready_when): the work ended, or did not become ready in
///   time). Then every runner that did start is stopped again (within the group's rollback
///   timeout) and the first failure, in registration order, is returned; it names its runner.
/// - [`stop_all`](Self::stop_all) stops every runner at once under one deadline and reports each
///   runner's outcome.
///
/// ```
/// use std::time::Duration;
/// use std::sync::Arc;
/// use runfleet_lifecycle::{EventBus, RunnerGroup, RunnerOptions, ServiceRunner, Ticker};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let events = EventBus::default();
/// let heartbeat = Ticker::new(
///     RunnerOptions::new("heartbeat").events(events.clone()),
///     Duration::from_secs(10),
///     |_token| async { Ok::<(), std::io::Error>(()) },
/// )?;
/// let server = ServiceRunner::new(RunnerOptions::new("api").events(events.clone()), |token| async move {
///     token.cancelled().await;
///     Ok::<(), std::io::Error>(())
/// });
///
/// let mut group = RunnerGroup::new();
/// group.register(Arc::new(heartbeat))?;
/// group.register(Arc::new(server))?;
///
/// group.start_all().await?;
/// let report = group.stop_all(Duration::from_secs(10)).await;
/// assert!(report.is_ok(), "{report:?}");
/// # Ok::<(), runfleet_lifecycle::LifecycleError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct RunnerGroup {
    runners: Vec<Arc<dyn Runner>>,
    rollback_timeout: Duration,
}

impl RunnerGroup {
    /// The default deadline for stopping the started runners after a failed
    /// [`start_all`](Self::start_all).
    pub const DEFAULT_ROLLBACK_TIMEOUT: Duration = Duration::from_secs(10);

    /// An empty group.
    pub fn new() -> Self {
        Self {
            runners: Vec::new(),
            rollback_timeout: Self::DEFAULT_ROLLBACK_TIMEOUT,
        }
    }

    /// Sets the deadline for stopping the started runners after a failed start.
    pub fn with_rollback_timeout(mut self, timeout: Duration) -> Self {
        self.rollback_timeout = timeout;
        self
    }

    /// Adds `runner`; fails with [`LifecycleError::DuplicateName`] if the name is taken.
    pub fn register(&mut self, runner: Arc<dyn Runner>) -> Result<(), LifecycleError> {
        if self.get(runner.name()).is_some() {
            return Err(LifecycleError::DuplicateName {
                name: runner.name().to_owned(),
            });
        }
        self.runners.push(runner);
        Ok(())
    }

    /// The runner called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Runner>> {
        self.runners.iter().find(|runner| runner.name() == name)
    }

    /// The runners, in registration order.
    pub fn runners(&self) -> impl ExactSizeIterator<Item = &Arc<dyn Runner>> {
        self.runners.iter()
    }

    /// How many runners are registered.
    pub fn len(&self) -> usize {
        self.runners.len()
    }

    /// Whether no runner is registered.
    pub fn is_empty(&self) -> bool {
        self.runners.is_empty()
    }

    /// Starts every runner concurrently. On failure, stops every runner whose start succeeded
    /// (including any that was already running), within the rollback timeout, and returns the
    /// first failure in registration order.
    pub async fn start_all(&self) -> Result<(), LifecycleError> {
        let results = join_all(self.runners.iter().map(|runner| runner.start())).await;
        let Some(failure) = results.iter().find_map(|result| result.clone().err()) else {
            return Ok(());
        };
        let started = self
            .runners
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_ok())
            .map(|(runner, _)| runner);
        let rollback = stop_each(started, self.rollback_timeout).await;
        for outcome in rollback.failures() {
            tracing::warn!(runner = %outcome.name, result = ?outcome.result, "rollback stop failed");
        }
        Err(failure)
    }

    /// Stops every runner concurrently, each within `timeout` of this call, and reports how each
    /// stop went, in registration order.
    pub async fn stop_all(&self, timeout: Duration) -> StopReport {
        stop_each(self.runners.iter(), timeout).await
    }
}

impl Default for RunnerGroup {
    fn default() -> Self {
        Self::new()
    }
}

async fn stop_each<'a>(
    runners: impl Iterator<Item = &'a Arc<dyn Runner>>,
    timeout: Duration,
) -> StopReport {
    let stops = runners.map(|runner| async move {
        StopOutcome {
            name: runner.name().to_owned(),
            result: runner.stop(timeout).await,
        }
    });
    StopReport {
        outcomes: join_all(stops).await,
    }
}

/// How stopping one runner went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// The runner's name.
    pub name: String,
    /// The result of its `stop`.
    pub result: Result<(), LifecycleError>,
}

/// The outcomes of [`RunnerGroup::stop_all`], one per runner in registration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// One outcome per runner.
    pub outcomes: Vec<StopOutcome>,
}

impl StopReport {
    /// Whether every runner stopped cleanly.
    pub fn is_ok(&self) -> bool {
        self.outcomes.iter().all(|outcome| outcome.result.is_ok())
    }

    /// The runners that did not stop cleanly.
    pub fn failures(&self) -> impl Iterator<Item = &StopOutcome> {
        self.outcomes
            .iter()
            .filter(|outcome| outcome.result.is_err())
    }
}
