//! The built-in runner kind: a strategy trading on a paper broker against a market feed.
//!
//! - [`broker`]: the broker abstraction (market and limit orders, cancel, positions, close);
//! - [`paper`]: the paper broker (slippage, fees) over the [`account`] (decimal money, linear
//!   and inverse contracts);
//! - [`feed`]: the simulated and replay market feeds, and candles of a timeframe;
//! - [`strategy`]: the strategy abstraction and the built-in strategies;
//! - [`risk`]: position limits and stop-loss / take-profit, enforced by the runtime;
//! - [`stats`]: trades and stats from the broker's fills;
//! - [`session`]: one runner's trading state, driven step by step;
//! - [`run`]: the runner the node supervises: paces a session with its feed until told to stop,
//!   then flattens or holds.
//!
//! Definitions (what a trade is, how PnL is marked, rounding) are in docs/trading.md.

pub mod account;
pub mod broker;
pub mod feed;
pub mod paper;
pub mod risk;
pub mod session;
pub mod stats;
pub mod strategy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use runfleet::catalog::{self, Instrument};
use runfleet::config::MarketSettings;
use runfleet::job::{JobSpec, Position, Stats, StopMode};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use self::feed::{MarketFeed, ReplayCache};
use self::paper::{FillModel, PaperBroker};
use self::risk::RiskLimits;
use self::session::Session;
use crate::lease::LeaseDeadline;

/// Rounds of cancel, close and confirm a flatten stop makes before it reports FLATTEN_FAILED.
pub const FLATTEN_ATTEMPTS: u32 = 3;
/// Pause between two flatten rounds.
pub const FLATTEN_PAUSE: Duration = Duration::from_millis(200);

/// Why a runner is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A client asked, with this mode.
    Requested(StopMode),
    /// The store refused this runner's lease (a newer epoch exists, or the node lost it):
    /// stop at once without trading further, leave positions.
    Fenced,
    /// The node is shutting down and hands the job back: leave positions.
    Shutdown,
}

/// What a runner shows between heartbeats, published after every tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Open positions.
    pub positions: Vec<Position>,
    /// Stats so far.
    pub stats: Stats,
    /// The runner's complete saved state (paper account, ledger, strategy, feed position), to
    /// be stored and given back to [`run`] as `resume` when the job runs again.
    pub account: Option<Value>,
}

impl Report {
    /// What a runner of `spec` shows before it has published anything: no position, and empty
    /// stats in the currency its trades will be counted in (the same as [`stats::Ledger`]
    /// gives once it runs), never `""`.
    pub fn before_start(spec: &JobSpec) -> Self {
        let instruments = instruments_of(spec);
        Self {
            positions: Vec::new(),
            stats: stats::Ledger::new(&instruments).stats(),
            account: None,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Why the run ended: the stop it was given, or `Fenced` when it found its lease stale.
    pub cause: StopCause,
    /// Positions closed by a flatten stop (`Some(0)` for hold; `None` when fenced or shut
    /// down).
    pub flattened: Option<u32>,
    /// `Some("FLATTEN_FAILED: ...")` when a flatten stop could not confirm every position flat.
    pub flatten_error: Option<String>,
    /// Final report.
    pub report: Report,
}

/// The simulated walk's seed for a job: FNV-1a of its id, mixed with `market.seed`.
pub fn job_seed(job_id: &str, market_seed: u64) -> u64 {
    let h = job_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^ market_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The catalog instruments a job names (unknown names are skipped).
fn instruments_of(spec: &JobSpec) -> Vec<&'static Instrument> {
    spec.config
        .instruments
        .iter()
        .filter_map(|n| catalog::instrument(n))
        .collect()
}

/// The paper session and the feed of a job, resumed from `resume` when given; a replay's files
/// come from `replays`, the node's cache.
pub async fn start(
    spec: &JobSpec,
    market: &MarketSettings,
    resume: Option<&Value>,
    replays: &ReplayCache,
) -> Result<(Session<PaperBroker>, Box<dyn MarketFeed>), String> {
    let instruments = instruments_of(spec);
    if instruments.is_empty() {
        return Err("the job names no known instrument".into());
    }
    let strategy = strategy::build(spec).map_err(|e| e.to_string())?;
    let risk = RiskLimits::from_config(spec.config.risk_management.as_ref());
    let model = FillModel::from_settings(market);
    let resume = resume.filter(|v| !v.is_null());
    let session = match resume {
        None => Session::new(PaperBroker::new(model), strategy, risk, instruments.clone()),
        Some(saved) => {
            let broker = PaperBroker::restore(model, &saved["broker"])
                .map_err(|e| format!("cannot resume the paper account: {e}"))?;
            Session::resume(broker, strategy, risk, instruments.clone(), saved)
                .await
                .map_err(|e| format!("cannot resume: {e}"))?
        }
    };
    let feed = feed::build(
        market,
        &instruments,
        job_seed(spec.id.as_str(), market.seed),
        session.timeframe_ms(),
        resume.and_then(|r| r.get("feed")),
        replays,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok((session, feed))
}

fn snapshot(session: &Session<PaperBroker>, feed: &dyn MarketFeed) -> Report {
    let mut report = session.report();
    if let Some(Value::Object(state)) = &mut report.account {
        state.insert("feed".into(), feed.state());
    }
    report
}

fn publish(to: &Mutex<Report>, report: Report) {
    *to.lock().unwrap_or_else(|p| p.into_inner()) = report;
}

/// Runs a job's strategy until `stop` says why it must end, publishing its report after every
/// tick; resumes from `resume` (a [`Report::account`]) exactly when given one.
///
/// A runner that cannot start (unknown strategy type, unreadable or invalid replay file, a
/// saved state that does not parse) returns `Err` with the reason: a configuration failure,
/// which the node records as the job's failure at once (restarting it would fail the same
/// way), and a state it cannot read is never taken for a flat account.
///
/// `lease` is when the runner's lease may lapse: the run ends as [`StopCause::Fenced`] the
/// moment it passes, holding its positions, whatever the node's heartbeat is doing.
pub async fn run(
    spec: Arc<JobSpec>,
    market: &MarketSettings,
    replays: &ReplayCache,
    resume: Option<Value>,
    report: Arc<Mutex<Report>>,
    mut stop: watch::Receiver<Option<StopCause>>,
    lease: LeaseDeadline,
) -> Result<RunOutcome, String> {
    let (mut session, mut feed) = start(&spec, market, resume.as_ref(), replays).await?;
    publish(&report, snapshot(&session, feed.as_ref()));
    let mut last = Instant::now();
    let mut first = true;
    let cause = loop {
        if let Some(cause) = *stop.borrow_and_update() {
            break cause;
        }
        if lease.has_passed() {
            break StopCause::Fenced;
        }
        let Some(wait) = feed.pace() else {
            // The feed has ended: hold what is open until told to stop (or fenced).
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        break StopCause::Shutdown;
                    }
                }
                () = lease.passed() => break StopCause::Fenced,
            }
            continue;
        };
        let now = Instant::now();
        let at = if first { now } else { (last + wait).max(now) };
        if at > now {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() {
                        break StopCause::Shutdown;
                    }
                    continue;
                }
                () = lease.passed() => break StopCause::Fenced,
                () = tokio::time::sleep_until(at) => {}
            }
        } else {
            // An unpaced replay still lets the stop signal and other tasks in.
            tokio::task::yield_now().await;
        }
        last = at;
        first = false;
        let Some(bars) = feed.next_bars() else {
            continue;
        };
        // A process that was paused (SIGSTOP, a long GC-like stall) wakes with its timers
        // overdue: before acting on anything, make sure the lease is still ours.
        if lease.has_passed() {
            break StopCause::Fenced;
        }
        session.step(&bars).await;
        publish(&report, snapshot(&session, feed.as_ref()));
    };
    let (flattened, flatten_error) = match cause {
        StopCause::Requested(StopMode::Flatten) => {
            let f = session.flatten(FLATTEN_ATTEMPTS, FLATTEN_PAUSE).await;
            (Some(f.closed), f.error)
        }
        StopCause::Requested(StopMode::Hold) => (Some(0), None),
        StopCause::Fenced | StopCause::Shutdown => (None, None),
    };
    if let Some(e) = &flatten_error {
        warn!(job = %spec.id, error = %e, "flatten stop left positions open");
    }
    let last = snapshot(&session, feed.as_ref());
    publish(&report, last.clone());
    Ok(RunOutcome {
        cause,
        flattened,
        flatten_error,
        report: last,
    })
}
