//! The fleet's failure policy: when a crashed or failed run is restarted, and when a user's
//! strategy is cut off by its circuit breaker.
//!
//! The in-memory store applies these functions directly; the Redis store applies the same rules
//! in `scripts/lib.lua` (shared by the crash sweep and node-reported failures). The store
//! conformance suite checks that both behave alike.

use crate::config::{BreakerSettings, RestartSettings};
use crate::ids::JobId;

/// A job's restart bookkeeping. Restarts after the strategy's own failures and restarts after
/// the loss of its node are counted apart: a node that dies is not the strategy's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestartCount {
    /// Restarts after the strategy's own failures within the current window.
    pub streak: u32,
    /// When the current window began (ms).
    pub since: u64,
    /// Restarts after node losses within the current node-loss window.
    pub lost: u32,
    /// When the current node-loss window began (ms).
    pub lost_since: u64,
    /// Restarts ever.
    pub total: u32,
}

/// Why a run ended abnormally: decides which budget a restart draws from and whether the
/// strategy's circuit breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The strategy panicked or returned an error: its own fault. Counts toward the breaker
    /// and the `max_restarts` budget.
    Crash,
    /// The run's lease expired because its node died, hung or lost Redis: infrastructure, not
    /// the strategy. Never counts toward the breaker; restarts draw from the separate
    /// `max_node_losses` budget.
    NodeLost,
}

impl FailureKind {
    /// The kind's name as the Redis scripts take it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Crash => "crash",
            FailureKind::NodeLost => "lost",
        }
    }
}

/// What happens to a run that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Queue it again after `delay_ms`.
    Restart {
        /// Delay before it is queued again.
        delay_ms: u64,
    },
    /// It ends as failed, with this reason.
    Fail(String),
}

/// Conditions outside the job that stop a restart. Checked in this order: entitlement, the
/// job's own restart bound, then the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gates {
    /// The user's tier in force allows the runners they hold (this one included).
    pub entitled: bool,
    /// The strategy's breaker is open (or its trial just failed).
    pub breaker_open: bool,
}

/// Decides the fate of a run of a job that started at `started_at` and failed as `kind`,
/// updating `count`. Each kind has its own budget within `window_ms`; a stable run resets both.
pub fn after_failure(
    settings: &RestartSettings,
    count: &mut RestartCount,
    started_at: Option<u64>,
    now: u64,
    gates: Gates,
    kind: FailureKind,
    reason: &str,
) -> AfterFailure {
    // A stable run, or a window that has passed, forgives earlier restarts.
    let stable = started_at.is_some_and(|s| now.saturating_sub(s) >= settings.stable_ms);
    if stable || count.streak == 0 || now.saturating_sub(count.since) >= settings.window_ms {
        count.streak = 0;
        count.since = now;
    }
    if stable || count.lost == 0 || now.saturating_sub(count.lost_since) >= settings.window_ms {
        count.lost = 0;
        count.lost_since = now;
    }
    if !gates.entitled {
        return AfterFailure::Fail(format!(
            "{reason}; not restarted: the user holds more runners than their tier allows"
        ));
    }
    let (streak, bound, what) = match kind {
        FailureKind::Crash => (&mut count.streak, settings.max_restarts, "restarts"),
        FailureKind::NodeLost => (&mut count.lost, settings.max_node_losses, "node losses"),
    };
    if *streak >= bound {
        return AfterFailure::Fail(format!(
            "{reason}; not restarted: {} {what} within {} ms",
            *streak, settings.window_ms
        ));
    }
    if gates.breaker_open {
        return AfterFailure::Fail(format!(
            "{reason}; not restarted: the strategy's circuit breaker is open"
        ));
    }
    let delay_ms = settings
        .base_delay_ms
        .saturating_mul(1u64 << (*streak).min(32))
        .min(settings.max_delay_ms);
    *streak += 1;
    count.total += 1;
    AfterFailure::Restart { delay_ms }
}

/// A breaker's state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BreakerState {
    /// Starts allowed; failures are counted.
    #[default]
    Closed,
    /// Starts refused until `until` (ms).
    Open {
        /// End of the cool-down.
        until: u64,
    },
    /// One trial run is going; it decides.
    HalfOpen {
        /// The trial job.
        trial: JobId,
    },
}

/// The circuit breaker of one user strategy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Breaker {
    /// Its state.
    pub state: BreakerState,
    /// Times (ms) of the failures counted while closed.
    pub failures: Vec<u64>,
}

/// How the trial job of a half-open breaker is doing, as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrialProgress {
    /// Queued, or running for less than the trial period.
    Pending {
        /// How long it has run (0 while queued).
        ran_ms: u64,
    },
    /// Ran for the trial period, or was stopped without failing, or is gone.
    Passed,
}

impl Breaker {
    /// Whether it refuses starts and restarts now.
    pub fn is_open(&self, now: u64) -> bool {
        match self.state {
            BreakerState::Closed => false,
            BreakerState::Open { until } => now < until,
            BreakerState::HalfOpen { .. } => true,
        }
    }

    /// Whether it keeps `job` from restarting after a node loss (which is not counted): open
    /// and cooling down, or half-open with another job's trial going.
    pub fn blocks(&self, now: u64, job: &JobId) -> bool {
        match &self.state {
            BreakerState::Closed => false,
            BreakerState::Open { until } => now < *until,
            BreakerState::HalfOpen { trial } => trial != job,
        }
    }

    /// Counts a failure of `job`. Returns whether the breaker is open afterwards.
    pub fn record_failure(&mut self, settings: &BreakerSettings, now: u64, job: &JobId) -> bool {
        match &self.state {
            BreakerState::HalfOpen { trial } if trial == job => {
                self.state = BreakerState::Open {
                    until: now + settings.cooldown_ms,
                };
                self.failures.clear();
                return true;
            }
            BreakerState::Closed => {
                self.failures
                    .retain(|t| now.saturating_sub(*t) < settings.window_ms);
                self.failures.push(now);
                if self.failures.len() as u32 >= settings.failures {
                    self.state = BreakerState::Open {
                        until: now + settings.cooldown_ms,
                    };
                    self.failures.clear();
                }
            }
            _ => {}
        }
        self.is_open(now)
    }

    /// Asks to start `job`. `trial` reports on the current trial when half-open. Returns
    /// `Err(retry_after_ms)` when refused; on `Ok` the start may go ahead (as the trial, if the
    /// cool-down just ended).
    pub fn admit(
        &mut self,
        settings: &BreakerSettings,
        now: u64,
        job: &JobId,
        trial: Option<TrialProgress>,
    ) -> Result<(), u64> {
        match &self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open { until } if now < *until => Err(until - now),
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen { trial: job.clone() };
                Ok(())
            }
            BreakerState::HalfOpen { .. } => match trial {
                Some(TrialProgress::Pending { ran_ms }) => {
                    Err(settings.trial_ms.saturating_sub(ran_ms).max(1_000))
                }
                Some(TrialProgress::Passed) | None => {
                    *self = Breaker::default();
                    Ok(())
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Duration, Instant};

    fn restart() -> RestartSettings {
        RestartSettings {
            max_restarts: 3,
            window_ms: 60_000,
            base_delay_ms: 1_000,
            max_delay_ms: 5_000,
            stable_ms: 30_000,
            max_node_losses: 2,
        }
    }

    const OPEN_GATES: Gates = Gates {
        entitled: true,
        breaker_open: false,
    };

    /// Milliseconds of (paused) tokio time since `origin`.
    fn ms(origin: Instant) -> u64 {
        origin.elapsed().as_millis() as u64
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_back_off_then_fail_at_the_bound() {
        let origin = Instant::now();
        let (s, mut c) = (restart(), RestartCount::default());
        let mut delays = Vec::new();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(2)).await;
            match after_failure(
                &s,
                &mut c,
                Some(ms(origin)),
                ms(origin),
                OPEN_GATES,
                FailureKind::Crash,
                "crashed",
            ) {
                AfterFailure::Restart { delay_ms } => delays.push(delay_ms),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [1_000, 2_000, 4_000]);
        let fourth = after_failure(
            &s,
            &mut c,
            Some(ms(origin)),
            ms(origin),
            OPEN_GATES,
            FailureKind::Crash,
            "crashed",
        );
        assert!(
            matches!(&fourth, AfterFailure::Fail(r) if r.contains("3 restarts")),
            "{fourth:?}"
        );
        assert_eq!(c.total, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_is_capped() {
        let s = RestartSettings {
            max_restarts: 10,
            ..restart()
        };
        let mut c = RestartCount::default();
        let delays: Vec<u64> = (0..5)
            .map(|_| {
                match after_failure(&s, &mut c, None, 0, OPEN_GATES, FailureKind::Crash, "x") {
                    AfterFailure::Restart { delay_ms } => delay_ms,
                    AfterFailure::Fail(r) => panic!("{r}"),
                }
            })
            .collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 5_000, 5_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_window_or_a_stable_run_forgives_earlier_restarts() {
        let origin = Instant::now();
        let (s, mut c) = (restart(), RestartCount::default());
        for _ in 0..3 {
            after_failure(
                &s,
                &mut c,
                Some(ms(origin)),
                ms(origin),
                OPEN_GATES,
                FailureKind::Crash,
                "x",
            );
        }
        assert_eq!(c.streak, 3);
        tokio::time::advance(Duration::from_millis(s.window_ms)).await;
        let run_started = ms(origin) - 1;
        assert!(matches!(
            after_failure(
                &s,
                &mut c,
                Some(run_started),
                ms(origin),
                OPEN_GATES,
                FailureKind::Crash,
                "x"
            ),
            AfterFailure::Restart { delay_ms: 1_000 }
        ));
        assert_eq!(c.streak, 1, "the window passed");

        for _ in 0..2 {
            after_failure(
                &s,
                &mut c,
                Some(ms(origin)),
                ms(origin),
                OPEN_GATES,
                FailureKind::Crash,
                "x",
            );
        }
        assert_eq!(c.streak, 3);
        let run_started = ms(origin);
        tokio::time::advance(Duration::from_millis(s.stable_ms)).await;
        assert!(matches!(
            after_failure(
                &s,
                &mut c,
                Some(run_started),
                ms(origin),
                OPEN_GATES,
                FailureKind::Crash,
                "x"
            ),
            AfterFailure::Restart { delay_ms: 1_000 }
        ));
        assert_eq!(
            (c.streak, c.total),
            (1, 7),
            "a stable run reset the streak, not the total"
        );
    }

    #[test]
    fn gates_fail_the_job_with_the_reason() {
        let mut c = RestartCount::default();
        let not_entitled = after_failure(
            &restart(),
            &mut c,
            None,
            0,
            Gates {
                entitled: false,
                breaker_open: false,
            },
            FailureKind::Crash,
            "x",
        );
        assert!(matches!(not_entitled, AfterFailure::Fail(r) if r.contains("tier")));
        let open = after_failure(
            &restart(),
            &mut c,
            None,
            0,
            Gates {
                entitled: true,
                breaker_open: true,
            },
            FailureKind::Crash,
            "x",
        );
        assert!(matches!(open, AfterFailure::Fail(r) if r.contains("circuit breaker")));
    }

    #[test]
    fn node_losses_draw_from_their_own_budget() {
        let s = restart(); // 3 restarts, 2 node losses
        let mut c = RestartCount::default();
        let lost = |c: &mut RestartCount| {
            after_failure(
                &s,
                c,
                Some(0),
                10,
                OPEN_GATES,
                FailureKind::NodeLost,
                "lost",
            )
        };
        let crash = |c: &mut RestartCount| {
            after_failure(&s, c, Some(0), 10, OPEN_GATES, FailureKind::Crash, "boom")
        };
        assert_eq!(lost(&mut c), AfterFailure::Restart { delay_ms: 1_000 });
        assert_eq!(lost(&mut c), AfterFailure::Restart { delay_ms: 2_000 });
        // Two node losses leave the strategy's own budget untouched...
        assert_eq!((c.streak, c.lost, c.total), (0, 2, 2));
        assert_eq!(crash(&mut c), AfterFailure::Restart { delay_ms: 1_000 });
        // ...and the node-loss budget is bounded on its own.
        let third = lost(&mut c);
        assert!(
            matches!(&third, AfterFailure::Fail(r) if r.contains("2 node losses within 60000 ms")),
            "{third:?}"
        );
    }

    #[test]
    fn a_node_loss_is_not_blocked_by_its_own_trial() {
        let trial = JobId::new("t");
        let b = Breaker {
            state: BreakerState::HalfOpen {
                trial: trial.clone(),
            },
            failures: Vec::new(),
        };
        assert!(!b.blocks(0, &trial), "the trial itself may restart");
        assert!(b.blocks(0, &JobId::new("other")));
        let open = Breaker {
            state: BreakerState::Open { until: 100 },
            failures: Vec::new(),
        };
        assert!(open.blocks(99, &trial) && !open.blocks(100, &trial));
        assert!(!Breaker::default().blocks(0, &trial));
    }

    fn breaker() -> BreakerSettings {
        BreakerSettings {
            failures: 3,
            window_ms: 10_000,
            cooldown_ms: 5_000,
            trial_ms: 2_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_after_n_failures_in_its_window_only() {
        let origin = Instant::now();
        let (s, job) = (breaker(), JobId::new("j"));
        let mut b = Breaker::default();
        assert!(!b.record_failure(&s, ms(origin), &job));
        assert!(!b.record_failure(&s, ms(origin), &job));
        tokio::time::advance(Duration::from_millis(s.window_ms)).await;
        assert!(
            !b.record_failure(&s, ms(origin), &job),
            "the first two fell out of the window"
        );
        assert!(!b.record_failure(&s, ms(origin), &job));
        assert!(
            b.record_failure(&s, ms(origin), &job),
            "three within the window open it"
        );
        assert_eq!(
            b.admit(&s, ms(origin), &JobId::new("k"), None),
            Err(s.cooldown_ms)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_one_trial_decides() {
        let origin = Instant::now();
        let s = breaker();
        let mut b = Breaker {
            state: BreakerState::Open {
                until: ms(origin) + s.cooldown_ms,
            },
            failures: vec![],
        };
        tokio::time::advance(Duration::from_millis(s.cooldown_ms)).await;
        let trial = JobId::new("trial");
        assert_eq!(b.admit(&s, ms(origin), &trial, None), Ok(()));
        assert_eq!(
            b.state,
            BreakerState::HalfOpen {
                trial: trial.clone()
            }
        );
        assert_eq!(
            b.admit(
                &s,
                ms(origin),
                &JobId::new("other"),
                Some(TrialProgress::Pending { ran_ms: 500 })
            ),
            Err(1_500)
        );
        // The trial fails: open again for a whole cool-down.
        assert!(b.record_failure(&s, ms(origin), &trial));
        assert_eq!(
            b.admit(&s, ms(origin), &JobId::new("other"), None),
            Err(s.cooldown_ms)
        );
        // Next trial passes: closed, failures forgotten.
        tokio::time::advance(Duration::from_millis(s.cooldown_ms)).await;
        let second = JobId::new("second");
        assert_eq!(b.admit(&s, ms(origin), &second, None), Ok(()));
        assert_eq!(
            b.admit(
                &s,
                ms(origin),
                &JobId::new("third"),
                Some(TrialProgress::Passed)
            ),
            Ok(())
        );
        assert_eq!(b, Breaker::default());
    }
}
