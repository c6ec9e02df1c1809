//! The trading runner the node supervises: builds a job's paper session and market feed
//! (resumed from its saved state when given one), paces the session with the feed until the
//! stop signal says why it must end, then flattens or holds.

use std::sync::Arc;
use std::time::Duration;

use runfleet_shared::config::MarketSettings;
use runfleet_shared::job::{JobSpec, StopMode};
use runfleet_shared::kind::{Report, ReportSink, RunOutcome, SavedState, StopCause, StopSignal};
use serde_json::Value;
use tokio::time::Instant;
use tracing::warn;

use crate::catalog::{self, Instrument};
use crate::external::ExternalStrategies;
use crate::feed::{self, MarketFeed, ReplayCache};
use crate::paper::{FillModel, PaperBroker};
use crate::risk::RiskLimits;
use crate::session::Session;
use crate::strategy::RunningStrategy;
use crate::{stats, strategy};

/// Rounds of cancel, close and confirm a flatten stop makes before it reports FLATTEN_FAILED.
pub const FLATTEN_ATTEMPTS: u32 = 3;
/// Pause between two flatten rounds.
pub const FLATTEN_PAUSE: Duration = Duration::from_millis(200);
/// How long an external strategy is given to exit after `stop` on a requested stop, before
/// its process group is killed. A fenced or draining runner kills it at once.
pub const STOP_GRACE: Duration = Duration::from_millis(500);

/// How the pacing loop ended.
enum Ended {
    /// As the stop signal said.
    Stop(StopCause),
    /// The strategy crashed, for this reason.
    Crash(String),
}

/// What a runner of `spec` shows before it has published anything: no position, and empty
/// stats in the currency its trades will be counted in (the same as [`stats::Ledger`] gives
/// once it runs), never `""`.
pub fn before_start(spec: &JobSpec) -> Report {
    let instruments = instruments_of(spec);
    Report {
        positions: Vec::new(),
        stats: stats::Ledger::new(&instruments).stats(),
        state: None,
    }
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
    start_with(
        spec,
        market,
        &ExternalStrategies::default(),
        resume,
        replays,
    )
    .await
}

/// [`start`], the strategy looked up among the built-in ones and `externals`. An external
/// strategy's process is not started yet: [`run`] starts it ([`Session::start_strategy`]),
/// and a failure there is a crash, not a configuration failure.
pub async fn start_with(
    spec: &JobSpec,
    market: &MarketSettings,
    externals: &ExternalStrategies,
    resume: Option<&Value>,
    replays: &ReplayCache,
) -> Result<(Session<PaperBroker>, Box<dyn MarketFeed>), String> {
    let instruments = instruments_of(spec);
    if instruments.is_empty() {
        return Err("the job names no known instrument".into());
    }
    let strategy =
        strategy::build_running(spec, externals, &instruments).map_err(|e| e.to_string())?;
    if let RunningStrategy::External(s) = &strategy {
        s.check_command()?;
    }
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
    session.report_with(Some(feed.state()))
}

/// Runs a job's strategy until `stop` says why it must end, publishing its report to `report`
/// after every tick; resumes from `resume` (a [`Report::state`]) exactly when given one.
///
/// A runner that cannot start (unknown strategy type, unreadable or invalid replay file, a
/// saved state that does not parse) returns `Err` with the reason: a configuration failure,
/// which the node records as the job's failure at once (restarting it would fail the same
/// way), and a state it cannot read is never taken for a flat account.
///
/// The run ends as [`StopCause::Fenced`] the moment the signal's lease deadline passes,
/// holding its positions, whatever the node's heartbeat is doing.
pub async fn run(
    spec: Arc<JobSpec>,
    market: &MarketSettings,
    externals: &ExternalStrategies,
    replays: &ReplayCache,
    resume: Option<SavedState>,
    report: ReportSink,
    mut stop: StopSignal,
) -> Result<RunOutcome, String> {
    let resume = resume
        .map(|saved| saved.parse())
        .transpose()
        .map_err(|e| format!("cannot resume: the saved state is not JSON: {e}"))?;
    // The start and the flatten are boxed: this future lives as long as the runner, and they
    // (large, run once) would otherwise make every running runner pay for their state.
    let (mut session, mut feed) = Box::pin(start_with(
        &spec,
        market,
        externals,
        resume.as_ref(),
        replays,
    ))
    .await?;
    report.publish(snapshot(&session, feed.as_ref()));
    let ended = match Box::pin(session.start_strategy()).await {
        Err(reason) => Ended::Crash(reason),
        Ok(()) => pace(&mut session, feed.as_mut(), &report, &mut stop).await,
    };
    let cause = match ended {
        Ended::Crash(_) if stop.fenced() => StopCause::Fenced,
        Ended::Crash(reason) => {
            // The child is gone (killed when the crash was seen); positions are held.
            let last = snapshot(&session, feed.as_ref());
            report.publish(last.clone());
            return Ok(RunOutcome::crashed(reason, last));
        }
        Ended::Stop(cause) => cause,
    };
    let (reason, grace) = match cause {
        StopCause::Requested(_) => ("requested", STOP_GRACE),
        StopCause::Fenced => ("fenced", Duration::ZERO),
        StopCause::Shutdown => ("shutdown", Duration::ZERO),
    };
    Box::pin(session.stop_strategy(reason, grace)).await;
    let (flattened, flatten_error) = match cause {
        StopCause::Requested(StopMode::Flatten) => {
            let f = Box::pin(session.flatten(FLATTEN_ATTEMPTS, FLATTEN_PAUSE)).await;
            (Some(f.closed), f.error)
        }
        StopCause::Requested(StopMode::Hold) => (Some(0), None),
        StopCause::Fenced | StopCause::Shutdown => (None, None),
    };
    if let Some(e) = &flatten_error {
        warn!(job = %spec.id, error = %e, "flatten stop left positions open");
    }
    let last = snapshot(&session, feed.as_ref());
    report.publish(last.clone());
    Ok(RunOutcome {
        flattened,
        flatten_error,
        ..RunOutcome::stopped(cause, last)
    })
}

/// Paces the session with the feed until the stop signal says why it must end, or the
/// strategy crashes.
async fn pace(
    session: &mut Session<PaperBroker>,
    feed: &mut dyn MarketFeed,
    report: &ReportSink,
    stop: &mut StopSignal,
) -> Ended {
    let mut last = Instant::now();
    let mut first = true;
    loop {
        if let Some(cause) = stop.now() {
            return Ended::Stop(cause);
        }
        let Some(wait) = feed.pace() else {
            // The feed has ended: hold what is open until told to stop (or fenced).
            return Ended::Stop(stop.stopped().await);
        };
        let now = Instant::now();
        let at = if first { now } else { (last + wait).max(now) };
        if at > now {
            tokio::select! {
                biased;
                cause = stop.stopped() => return Ended::Stop(cause),
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
        if stop.fenced() {
            return Ended::Stop(StopCause::Fenced);
        }
        session.step(&bars).await;
        if let Some(reason) = session.crashed() {
            return Ended::Crash(reason.to_owned());
        }
        report.publish(snapshot(session, feed));
    }
}
