//! Helpers shared by the tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runfleet_lifecycle::{
    BoxError, Delivery, EventSubscription, LifecycleEvent, RunnerOptions, ServiceRunner, poll_until,
};

/// Counts the live instances of some work, and the most ever live at once.
#[derive(Debug, Default, Clone)]
pub struct Liveness {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Liveness {
    /// Marks one instance live until the returned guard is dropped.
    pub fn enter(&self) -> LiveGuard {
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(live, Ordering::SeqCst);
        LiveGuard(self.live.clone())
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A service that runs until cancelled, counted by `liveness`.
pub fn until_cancelled(options: RunnerOptions, liveness: &Liveness) -> ServiceRunner {
    let liveness = liveness.clone();
    ServiceRunner::new(options, move |token| {
        let guard = liveness.enter();
        async move {
            token.cancelled().await;
            drop(guard);
            Ok::<(), BoxError>(())
        }
    })
}

/// A service that ignores cancellation and never ends, counted by `liveness`.
pub fn stubborn(options: RunnerOptions, liveness: &Liveness) -> ServiceRunner {
    let liveness = liveness.clone();
    ServiceRunner::new(options, move |_token| {
        let guard = liveness.enter();
        async move {
            std::future::pending::<()>().await;
            drop(guard);
            Ok::<(), BoxError>(())
        }
    })
}

/// The next event on `subscription`; panics on a missed-events notice or after 60 s.
pub async fn next_event(subscription: &mut EventSubscription) -> LifecycleEvent {
    match tokio::time::timeout(Duration::from_secs(60), subscription.recv()).await {
        Ok(Some(Delivery::Event(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Waits (on tokio time, at most 60 s) until `condition` holds; panics if it never does.
pub async fn eventually(condition: impl Fn() -> bool) {
    let held = poll_until(Duration::from_millis(1), Duration::from_secs(60), || {
        let holds = condition();
        async move { holds }
    })
    .await;
    assert!(held, "condition never held");
}
