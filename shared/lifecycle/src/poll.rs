//! Polling helpers for waiting on a condition: [`retry`] a bounded number of times with an
//! action between tries, or [`poll_until`] at an interval until a timeout.
//!
//! Both run on tokio time, so they work (and are tested) with paused time.

use std::future::Future;
use std::time::Duration;

/// Awaits `check` up to `attempts` times, awaiting `action` between two tries (not after the
/// last one). Returns whether a check held; `false` without checking if `attempts` is zero.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// let tries = AtomicU32::new(0);
/// let held = runfleet_lifecycle::retry(
///     5,
///     || async { tries.fetch_add(1, Ordering::SeqCst) == 2 },
///     || tokio::time::sleep(std::time::Duration::from_millis(1)),
/// )
/// .await;
/// assert!(held);
/// assert_eq!(tries.load(Ordering::SeqCst), 3);
/// # });
/// ```
pub async fn retry<C, CF, A, AF>(attempts: usize, mut check: C, mut action: A) -> bool
where
    C: FnMut() -> CF,
    CF: Future<Output = bool>,
    A: FnMut() -> AF,
    AF: Future<Output = ()>,
{
    for attempt in 1..=attempts {
        if check().await {
            return true;
        }
        if attempt < attempts {
            action().await;
        }
    }
    false
}

/// Awaits `check` at once and then every `interval` (at least 1 ms) until it holds or `timeout`
/// has passed. Returns whether it held in time; a check still running at the timeout is dropped.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
///
/// let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
/// let ready = runfleet_lifecycle::poll_until(Duration::from_millis(5), Duration::from_secs(1), || async {
///     tokio::time::Instant::now() >= deadline
/// })
/// .await;
/// assert!(ready);
/// # });
/// ```
pub async fn poll_until<C, CF>(interval: Duration, timeout: Duration, mut check: C) -> bool
where
    C: FnMut() -> CF,
    CF: Future<Output = bool>,
{
    let interval = interval.max(Duration::from_millis(1));
    let polling = async {
        while !check().await {
            tokio::time::sleep(interval).await;
        }
    };
    tokio::time::timeout(timeout, polling).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use tokio::time::Instant;

    #[tokio::test]
    async fn retry_runs_the_action_between_tries_only() {
        let (checks, actions) = (Cell::new(0), Cell::new(0));
        let held = retry(
            4,
            || async {
                checks.set(checks.get() + 1);
                false
            },
            || async { actions.set(actions.get() + 1) },
        )
        .await;
        assert!(!held);
        assert_eq!((checks.get(), actions.get()), (4, 3));
    }

    #[tokio::test]
    async fn retry_stops_at_the_first_success_and_zero_attempts_never_check() {
        let checks = Cell::new(0);
        let check = || async {
            checks.set(checks.get() + 1);
            checks.get() == 2
        };
        assert!(retry(10, check, || async {}).await);
        assert_eq!(checks.get(), 2);
        assert!(!retry(0, || async { true }, || async {}).await);
    }

    #[tokio::test(start_paused = true)]
    async fn poll_until_returns_once_the_check_holds() {
        let start = Instant::now();
        let held_from = start + Duration::from_millis(250);
        let held = poll_until(
            Duration::from_millis(100),
            Duration::from_secs(5),
            || async { Instant::now() >= held_from },
        )
        .await;
        assert!(held);
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn poll_until_gives_up_at_the_timeout() {
        let start = Instant::now();
        let checks = Cell::new(0);
        let held = poll_until(
            Duration::from_millis(30),
            Duration::from_millis(100),
            || async {
                checks.set(checks.get() + 1);
                false
            },
        )
        .await;
        assert!(!held);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(checks.get(), 4, "checks at 0, 30, 60 and 90 ms");
    }
}
