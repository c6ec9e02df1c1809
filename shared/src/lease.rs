//! Lease deadlines on the node's monotonic clock: when a runner (or the whole node) must stop
//! acting (trading) because the lease Redis holds for it may have lapsed. A runner kind sees its
//! deadline through its [`StopSignal`](crate::kind::StopSignal).
//!
//! Redis starts a lease when the claim or renewal script *runs*, which is after the node *sent*
//! the call; so the node counts from the send: a lease granted by a call sent at `sent_at` is
//! surely live until `sent_at + lease`, and the node stops trading [`safety_margin`] before
//! that, at [`fence_at`]. A deadline only moves forward (an answer to an older call never
//! shortens it) and passes by itself: nothing has to answer, fail or time out for a runner to
//! be fenced, so a renewal hanging on a dead link cannot keep a runner trading past its lease.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// How long before its lease may lapse a node stops trading: a tenth of the lease. It covers a
/// runner finishing the step it is in and the node's timers waking late on a busy machine; the
/// sweep adds its own interval on top before another node is given the job.
pub fn safety_margin(lease: Duration) -> Duration {
    lease / 10
}

/// When to stop trading under a lease of `lease` granted by a call sent at `sent_at`.
pub fn fence_at(sent_at: Instant, lease: Duration) -> Instant {
    sent_at + lease.saturating_sub(safety_margin(lease))
}

/// A deadline shared by whoever extends it and whoever waits on it. Unarmed, it never passes:
/// a node is unarmed until its first accepted heartbeat and again after it fenced itself; a
/// runner is armed from its claim on. Cheap to clone; clones share the deadline.
#[derive(Debug, Clone)]
pub struct LeaseDeadline {
    at: std::sync::Arc<watch::Sender<Option<Instant>>>,
}

impl LeaseDeadline {
    /// A deadline armed at `at`.
    pub fn at(at: Instant) -> Self {
        Self {
            at: std::sync::Arc::new(watch::Sender::new(Some(at))),
        }
    }

    /// A deadline that is not armed (it never passes until [`extend_to`](Self::extend_to)).
    pub fn unarmed() -> Self {
        Self {
            at: std::sync::Arc::new(watch::Sender::new(None)),
        }
    }

    /// The deadline now, if armed.
    pub fn get(&self) -> Option<Instant> {
        *self.at.borrow()
    }

    /// Moves the deadline to `at` if that is later (or arms it). Returns whether it moved.
    pub fn extend_to(&self, at: Instant) -> bool {
        self.at.send_if_modified(|cur| match *cur {
            Some(c) if c >= at => false,
            _ => {
                *cur = Some(at);
                true
            }
        })
    }

    /// Unarms the deadline.
    pub fn disarm(&self) {
        self.at.send_replace(None);
    }

    /// Whether the deadline has passed.
    pub fn has_passed(&self) -> bool {
        self.get().is_some_and(|at| Instant::now() >= at)
    }

    /// Waits until the deadline passes (forever while it is unarmed); follows extensions.
    pub async fn passed(&self) {
        let mut rx = self.at.subscribe();
        loop {
            let at = *rx.borrow_and_update();
            match at {
                Some(at) if Instant::now() >= at => return,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        _ = rx.changed() => {}
                    }
                }
                // `self` holds the sender: `changed` cannot fail while we wait.
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    #[test]
    fn the_fence_comes_a_tenth_of_the_lease_before_the_lease_ends() {
        let t0 = Instant::now();
        assert_eq!(fence_at(t0, LEASE), t0 + Duration::from_millis(2_700));
        assert_eq!(
            fence_at(t0, Duration::from_secs(30)),
            t0 + Duration::from_secs(27)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_send_not_the_answer() {
        let sent_at = Instant::now();
        // The answer takes 2 s to come back (a slow link): the lease in Redis started when the
        // script ran, at most at the answer, at least at the send; the send is the safe side.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let d = LeaseDeadline::unarmed();
        d.extend_to(fence_at(sent_at, LEASE));
        let waited = Instant::now();
        d.passed().await;
        assert_eq!(waited.elapsed(), Duration::from_millis(700));
        assert_eq!(sent_at.elapsed(), Duration::from_millis(2_700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_by_itself_while_a_renewal_hangs() {
        let d = LeaseDeadline::at(fence_at(Instant::now(), LEASE));
        let start = Instant::now();
        // A renewal that never answers (a silently dropped link, no timeout anywhere).
        let hung = tokio::spawn(std::future::pending::<()>());
        d.passed().await;
        assert!(d.has_passed());
        assert_eq!(start.elapsed(), Duration::from_millis(2_700));
        assert!(!hung.is_finished());
        hung.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_push_the_deadline_forward_and_a_late_answer_never_pulls_it_back() {
        let t0 = Instant::now();
        let d = LeaseDeadline::at(fence_at(t0, LEASE));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move {
                d.passed().await;
                Instant::now()
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(d.extend_to(fence_at(Instant::now(), LEASE)));
        // The answer to an earlier renewal (sent at t0 + 0.5 s) arrives after the newer one.
        assert!(!d.extend_to(fence_at(t0 + Duration::from_millis(500), LEASE)));
        let passed_at = waiter.await.unwrap();
        assert_eq!(passed_at - t0, Duration::from_millis(3_700));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unarmed_deadline_never_passes_until_armed() {
        let d = LeaseDeadline::unarmed();
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.passed().await })
        };
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiter.is_finished());
        assert!(!d.has_passed());
        let t = Instant::now();
        d.extend_to(fence_at(t, LEASE));
        waiter.await.unwrap();
        assert_eq!(t.elapsed(), Duration::from_millis(2_700));
        d.disarm();
        assert!(!d.has_passed());
    }
}
