//! The fleet's failure policy: when a crashed or failed run is restarted, and when a user's
//! strategy is cut off by its circuit breaker.
//!
//! This module is the only place the rules are written. Both stores call it:
//! - the in-memory store on its own state;
//! - the Redis store over a snapshot a script reads ([`FailureSnapshot`], and the admission
//!   script's breaker snapshot), then a script applies the [`FailureDecision`] (or breaker
//!   change) only if what it was decided on is unchanged, else the store decides again. The Lua
//!   scripts hold no policy: they read, compare and write. Failures and open breakers are rare,
//!   so the extra round trip is paid only by them; a start under a closed breaker is still one
//!   script call.

use serde::{Deserialize, Serialize};

use crate::config::{BreakerSettings, RestartSettings};
use crate::ids::JobId;
use crate::job::JobStatus;

/// A job's restart bookkeeping. Restarts after the strategy's own failures and restarts after
/// the loss of its node are counted apart: a node that dies is not the strategy's fault.
/// Serialized with the names of the job hash's fields (docs/redis-schema.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartCount {
    /// Restarts after the strategy's own failures within the current window.
    #[serde(default)]
    pub streak: u32,
    /// When the current window began (ms).
    #[serde(default, rename = "streak_since")]
    pub since: u64,
    /// Restarts after node losses within the current node-loss window.
    #[serde(default)]
    pub lost: u32,
    /// When the current node-loss window began (ms).
    #[serde(default)]
    pub lost_since: u64,
    /// Restarts ever.
    #[serde(default, rename = "restarts")]
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

/// The circuit breaker of one user strategy. Serialized as [`BreakerFields`], the fields of its
/// Redis hash.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "BreakerFields", into = "BreakerFields")]
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

impl TrialProgress {
    /// The progress of a trial job whose record shows `status` (none: gone) and `started_at`.
    /// A trial that crashed reopened the breaker already; one waiting for a restart after a node
    /// loss is still pending; one that ended `failed` for a reason of its own (a configuration
    /// failure) said nothing against the strategy, so it passed, like one that was stopped.
    pub fn of(status: Option<JobStatus>, started_at: Option<u64>, now: u64, trial_ms: u64) -> Self {
        match (status, started_at) {
            (Some(JobStatus::Running), Some(started)) if now.saturating_sub(started) < trial_ms => {
                TrialProgress::Pending {
                    ran_ms: now.saturating_sub(started),
                }
            }
            (Some(JobStatus::Queued | JobStatus::Crashed), _) => {
                TrialProgress::Pending { ran_ms: 0 }
            }
            _ => TrialProgress::Passed,
        }
    }
}

/// A breaker as the fields of its Redis hash: `state` (`open`, `half`, or empty: closed),
/// `until` (ms, when open), `trial` (the trial job, when half-open), `failures` (the times of the
/// failures a closed breaker counted, comma-separated). Scripts compare all four to see that a
/// breaker is unchanged since it was read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BreakerFields {
    /// `open`, `half`, or empty (closed).
    #[serde(default)]
    pub state: String,
    /// When an open breaker's cool-down ends (ms), else empty.
    #[serde(default)]
    pub until: String,
    /// A half-open breaker's trial job, else empty.
    #[serde(default)]
    pub trial: String,
    /// Failure times (ms), comma-separated.
    #[serde(default)]
    pub failures: String,
}

impl From<Breaker> for BreakerFields {
    fn from(b: Breaker) -> Self {
        let mut f = BreakerFields {
            failures: b
                .failures
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            ..BreakerFields::default()
        };
        match b.state {
            BreakerState::Closed => {}
            BreakerState::Open { until } => {
                f.state = "open".into();
                f.until = until.to_string();
            }
            BreakerState::HalfOpen { trial } => {
                f.state = "half".into();
                f.trial = trial.to_string();
            }
        }
        f
    }
}

impl TryFrom<BreakerFields> for Breaker {
    type Error = String;

    fn try_from(f: BreakerFields) -> Result<Self, String> {
        let bad = || format!("breaker fields {f:?}");
        let state = match f.state.as_str() {
            "" | "closed" => BreakerState::Closed,
            "open" => BreakerState::Open {
                until: f.until.parse().map_err(|_| bad())?,
            },
            "half" => BreakerState::HalfOpen {
                trial: JobId::new(&f.trial),
            },
            _ => return Err(bad()),
        };
        let failures = f
            .failures
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        Ok(Breaker { state, failures })
    }
}

/// What a store knows about a job whose run failed, read in one step: what
/// [`decide_failure`] decides on. The Redis store's scripts send it as JSON (`failure_snapshot`
/// in lib.lua), hence the field names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FailureSnapshot {
    /// The job.
    pub job: JobId,
    /// The store's clock when it was read (ms).
    pub now: u64,
    /// The failed run's epoch.
    pub epoch: u64,
    /// The node the run was on.
    #[serde(default)]
    pub node: String,
    /// The run's last heartbeat (ms), if any.
    #[serde(default)]
    pub hb: Option<u64>,
    /// The job's strategy.
    pub strategy: String,
    /// A stop was requested.
    #[serde(default)]
    pub stop: bool,
    /// When the failed run started (ms).
    #[serde(default)]
    pub started: Option<u64>,
    /// The job's restart bookkeeping.
    #[serde(flatten)]
    pub count: RestartCount,
    /// The strategy's breaker.
    pub breaker: Breaker,
    /// Runners the user holds, this one included.
    pub held: u32,
    /// What the user's tier in force allows.
    pub limit: u32,
}

impl FailureSnapshot {
    /// Why a run whose lease lapsed is taken for crashed (the sweep's reason).
    pub fn silence(&self) -> String {
        let silent = self.now.saturating_sub(self.hb.unwrap_or(self.now));
        format!(
            "no heartbeat for {silent} ms from node {} (epoch {})",
            self.node, self.epoch
        )
    }
}

/// What becomes of a failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Outcome {
    /// Queued again at `at` (ms).
    Restart {
        /// When.
        at: u64,
    },
    /// Ended as failed.
    Failed {
        /// Why.
        error: String,
    },
    /// Ended as stopped: a stop was requested before the run failed.
    Stopped {
        /// Why.
        error: String,
    },
}

/// The decision on a failed run, applied by a store only if the job and the breaker are still
/// as the snapshot showed (`epoch`, `stop`, `expect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureDecision {
    /// The job.
    pub job: JobId,
    /// The failed run's epoch: still current, or the decision is stale.
    pub epoch: u64,
    /// Whether a stop had been requested: unchanged, or the decision is stale.
    pub stop: bool,
    /// The breaker as it was read: unchanged, or the decision is stale.
    pub expect: Breaker,
    /// The breaker to write, when it changes. (Absent rather than `null` on the wire: Lua's
    /// cjson decodes `null` to a value that is true.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
    /// Why the breaker opened, when this failure opened it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened: Option<String>,
    /// The failure (the `crashed` event's reason).
    pub reason: String,
    /// What becomes of the run.
    pub outcome: Outcome,
    /// The restart bookkeeping to write.
    pub count: RestartCount,
}

/// Decides what becomes of the failed run in `snap` (failed as `kind`, for `reason`): a
/// requested stop wins; else the breaker counts a crash (a node loss only consults it), then
/// [`after_failure`] decides between a restart and a failure.
pub fn decide_failure(
    restart: &RestartSettings,
    breaker_settings: &BreakerSettings,
    snap: &FailureSnapshot,
    kind: FailureKind,
    reason: String,
) -> FailureDecision {
    let mut decision = FailureDecision {
        job: snap.job.clone(),
        epoch: snap.epoch,
        stop: snap.stop,
        expect: snap.breaker.clone(),
        breaker: None,
        opened: None,
        outcome: Outcome::Stopped {
            error: format!("{reason}; a stop was requested, so it is not restarted"),
        },
        count: snap.count,
        reason,
    };
    if snap.stop {
        return decision;
    }
    let now = snap.now;
    let mut breaker = snap.breaker.clone();
    let breaker_open = match kind {
        FailureKind::Crash => breaker.record_failure(breaker_settings, now, &snap.job),
        FailureKind::NodeLost => breaker.blocks(now, &snap.job),
    };
    let opened = matches!(breaker.state, BreakerState::Open { .. })
        && !matches!(snap.breaker.state, BreakerState::Open { .. });
    if opened {
        decision.opened = Some(match &snap.breaker.state {
            BreakerState::HalfOpen { .. } => {
                format!("the trial run of strategy {} failed", snap.strategy)
            }
            _ => format!(
                "strategy {} failed {} times",
                snap.strategy, breaker_settings.failures
            ),
        });
    }
    if breaker != snap.breaker {
        decision.breaker = Some(breaker);
    }
    let gates = Gates {
        entitled: snap.held <= snap.limit,
        breaker_open,
    };
    decision.outcome = match after_failure(
        restart,
        &mut decision.count,
        snap.started,
        now,
        gates,
        kind,
        &decision.reason,
    ) {
        AfterFailure::Restart { delay_ms } => Outcome::Restart { at: now + delay_ms },
        AfterFailure::Fail(error) => Outcome::Failed { error },
    };
    decision
}

/// A breaker's answer to a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerAdmission {
    /// Refused for this long (ms).
    Refused(u64),
    /// Allowed; the breaker becomes `after` (the same when unchanged). `closed` names the trial
    /// that passed, when this start closes the breaker.
    Allowed {
        /// The breaker to write.
        after: Breaker,
        /// The trial that passed, if the breaker closes.
        closed: Option<JobId>,
    },
}

impl Breaker {
    /// Asks the breaker `self` (read at `now`, with `trial` the progress of its trial when
    /// half-open) to start `job`.
    pub fn admission(
        &self,
        settings: &BreakerSettings,
        now: u64,
        job: &JobId,
        trial: Option<TrialProgress>,
    ) -> BreakerAdmission {
        let mut after = self.clone();
        match after.admit(settings, now, job, trial) {
            Err(retry_after_ms) => BreakerAdmission::Refused(retry_after_ms),
            Ok(()) => {
                let closed = match &self.state {
                    BreakerState::HalfOpen { trial } if after.state == BreakerState::Closed => {
                        Some(trial.clone())
                    }
                    _ => None,
                };
                BreakerAdmission::Allowed { after, closed }
            }
        }
    }
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

    #[test]
    fn a_breaker_survives_its_redis_fields() {
        let breakers = [
            Breaker::default(),
            Breaker {
                state: BreakerState::Closed,
                failures: vec![5, 7],
            },
            Breaker {
                state: BreakerState::Open {
                    until: 1_764_000_000_123,
                },
                failures: vec![],
            },
            Breaker {
                state: BreakerState::HalfOpen {
                    trial: JobId::new("j:1%"),
                },
                failures: vec![],
            },
        ];
        for b in breakers {
            let fields = BreakerFields::from(b.clone());
            assert_eq!(Breaker::try_from(fields).unwrap(), b);
        }
        let bad = BreakerFields {
            state: "ajar".into(),
            ..BreakerFields::default()
        };
        assert!(Breaker::try_from(bad).is_err());
    }
}
