//! The runner as the node runs it (through the runner-kind seam, `RunnerKind::run`), on tokio's
//! paused clock: stop modes, a
//! fenced runner that trades no further, resuming from the saved state exactly, the replay feed
//! and the test-only panicking strategy.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eurusd_csv, spec};
use runfleet_shared::config::{FeedKind, MarketSettings};
use runfleet_shared::job::{JobSpec, StopMode};
use runfleet_shared::kind::{
    Report, ReportSink, RunOutcome, RunStart, RunnerKind, SavedState, StopCause, StopSignal,
};
use runfleet_shared::lease::{LeaseDeadline, fence_at};
use runfleet_shared::validate::ValidationOptions;
use runfleet_trading::TradingKind;
use rust_decimal_macros::dec;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn scalping(instruments: Value) -> Value {
    json!({
        "name": "BTC Scalping", "type": "scalping",
        "parameters": {"timeframe": "1m", "rsiPeriod": 5},
        "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
        "instruments": instruments
    })
}

struct Running {
    report: ReportSink,
    stop: watch::Sender<Option<StopCause>>,
    task: JoinHandle<Result<RunOutcome, String>>,
}

impl Running {
    fn start(spec: JobSpec, market: MarketSettings, resume: Option<SavedState>) -> Self {
        Self::start_with_lease(spec, market, resume, LeaseDeadline::unarmed())
    }

    fn start_with_lease(
        spec: JobSpec,
        market: MarketSettings,
        resume: Option<SavedState>,
        lease: LeaseDeadline,
    ) -> Self {
        let report = ReportSink::default();
        let (stop, signal) = StopSignal::channel(lease);
        let kind = TradingKind::new(market, ValidationOptions::default());
        let task = tokio::spawn(kind.run(RunStart {
            spec: Arc::new(spec),
            resume,
            stop: signal,
            report: report.clone(),
        }));
        Self { report, stop, task }
    }

    fn report(&self) -> Report {
        self.report.latest()
    }

    fn ticks(&self) -> u64 {
        self.report()
            .state
            .and_then(|a| a.parse().unwrap()["events"]["ticks"].as_u64())
            .unwrap_or(0)
    }

    async fn stop(self, cause: StopCause) -> RunOutcome {
        self.stop.send_replace(Some(cause));
        self.task.await.unwrap().unwrap()
    }
}

/// Sleeps until just after the `n`-th tick (ticks at 0, 100, 200... ms).
async fn after_ticks(n: u64) {
    tokio::time::sleep(Duration::from_millis((n - 1) * 100 + 50)).await;
}

#[tokio::test(start_paused = true)]
async fn flatten_closes_what_the_last_report_showed_open() {
    let spec = spec(
        "job-flatten",
        scalping(json!(["BTC-PERPETUAL", "ETH-PERPETUAL"])),
    );
    let r = Running::start(spec, MarketSettings::default(), None);
    // Run until a report shows open positions and some closed trades.
    let mut waited = 0;
    let before = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
        let rep = r.report();
        if !rep.positions.is_empty() && rep.stats.total_trades > 0 {
            break rep;
        }
        assert!(waited < 2_000, "no trading within 200 simulated seconds");
    };
    let out = r.stop(StopCause::Requested(StopMode::Flatten)).await;
    assert_eq!(out.flattened, Some(before.positions.len() as u32));
    assert_eq!(out.flatten_error, None);
    assert!(out.report.positions.is_empty());
    assert_eq!(
        out.report.stats.total_trades,
        before.stats.total_trades + before.positions.len() as u64,
        "each flattened position is one more closed trade"
    );
    let account = out.report.state.unwrap().parse().unwrap();
    assert_eq!(account["broker"]["account"]["positions"], json!({}));
}

#[tokio::test(start_paused = true)]
async fn hold_leaves_positions_and_fenced_trades_no_further() {
    let spec = spec("job-hold", scalping(json!(["BTC-PERPETUAL"])));
    let r = Running::start(spec.clone(), MarketSettings::default(), None);
    let mut rep = r.report();
    while rep.positions.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rep = r.report();
    }
    let out = r.stop(StopCause::Requested(StopMode::Hold)).await;
    assert_eq!(out.flattened, Some(0));
    assert_eq!(out.report.positions, rep.positions, "held as they were");

    let r = Running::start(spec, MarketSettings::default(), None);
    after_ticks(30).await;
    let ticks = r.ticks();
    assert_eq!(ticks, 30);
    r.stop.send_replace(Some(StopCause::Fenced));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(r.ticks(), ticks, "no tick after the fence");
    let out = r.task.await.unwrap().unwrap();
    assert_eq!(out.flattened, None);
    assert_eq!(
        out.report.state.unwrap().parse().unwrap()["events"]["ticks"],
        30
    );
}

#[tokio::test(start_paused = true)]
async fn a_runner_fences_itself_when_its_lease_deadline_passes_unless_renewed() {
    let spec = spec("job-deadline", scalping(json!(["BTC-PERPETUAL"])));
    let t0 = Instant::now();
    let lease = Duration::from_secs(3);
    let deadline = LeaseDeadline::at(fence_at(t0, lease));
    let r = Running::start_with_lease(spec, MarketSettings::default(), None, deadline.clone());
    // Renewals accepted at 1 s and 2 s push the deadline to 2 s + 2.7 s.
    for renewed_at in [1, 2] {
        tokio::time::sleep_until(t0 + Duration::from_secs(renewed_at)).await;
        deadline.extend_to(fence_at(Instant::now(), lease));
    }
    // Then nothing more is accepted: no stop is ever sent, the runner ends by itself.
    let out = r.task.await.unwrap().unwrap();
    let ended = t0.elapsed();
    assert_eq!(out.cause, StopCause::Fenced);
    assert_eq!(out.flattened, None, "positions held");
    assert_eq!(
        ended,
        Duration::from_millis(4_700),
        "fenced at the deadline"
    );
    // Ticks every 100 ms from 0: the last one before 4.7 s is at 4.6 s.
    assert_eq!(
        out.report.state.unwrap().parse().unwrap()["events"]["ticks"],
        47
    );
}

#[tokio::test(start_paused = true)]
async fn a_resumed_runner_continues_exactly_where_it_was() {
    let market = MarketSettings::default();
    let job = || {
        spec(
            "job-resume",
            scalping(json!(["BTC-PERPETUAL", "ETH-PERPETUAL"])),
        )
    };

    // Uninterrupted: 240 ticks.
    let straight = Running::start(job(), market.clone(), None);
    after_ticks(240).await;
    let expected = straight.report();
    assert_eq!(straight.ticks(), 240);
    let expected_state = straight.stop(StopCause::Fenced).await.report.state.unwrap();

    // Interrupted after 130 ticks (handed back at shutdown), resumed for 110 more.
    let first = Running::start(job(), market.clone(), None);
    after_ticks(130).await;
    let handed_back = first.stop(StopCause::Shutdown).await;
    assert_eq!(handed_back.flattened, None);
    let saved = handed_back.report.state.clone().unwrap();
    // The state as the store gives it back: its text.
    let round_trip = SavedState::from_text(saved.as_str());

    let second = Running::start(job(), market, Some(round_trip));
    tokio::task::yield_now().await;
    // Before its first tick it shows exactly what the first run left.
    let resumed = second.report();
    assert_eq!(resumed.positions, handed_back.report.positions);
    assert_eq!(resumed.stats, handed_back.report.stats);
    after_ticks(110).await;
    assert_eq!(second.ticks(), 240);
    let continued = second.report();
    assert_eq!(continued.positions, expected.positions);
    assert_eq!(continued.stats, expected.stats);
    assert!(
        expected.stats.total_trades > 0,
        "the comparison covers trading: {:?}",
        expected.stats
    );
    let state = second.stop(StopCause::Fenced).await.report.state.unwrap();
    assert_eq!(state, expected_state, "the whole saved state is the same");
}

#[tokio::test(start_paused = true)]
async fn a_replay_runner_plays_the_file_then_holds_until_stopped() {
    let market = MarketSettings {
        feed: FeedKind::Replay,
        replay_file: eurusd_csv(),
        replay_speed: 0,
        ..MarketSettings::default()
    };
    let config = json!({
        "name": "EUR-USD scalping", "type": "scalping",
        "parameters": {"rsiPeriod": 14, "timeframe": "1h"},
        "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 0.5, "takeProfitPercent": 1},
        "instruments": ["EUR-USD"]
    });
    let r = Running::start(spec("job-replay-run", config), market, None);
    while r.ticks() < 5_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(r.ticks(), 5_000, "the feed has ended; nothing more happens");
    let out = r.stop(StopCause::Requested(StopMode::Flatten)).await;
    // The same figures as the session-level replay test (tests/replay.rs).
    let s = out.report.stats;
    assert_eq!(
        (s.total_trades, s.winning_trades, s.losing_trades),
        (231, 87, 144)
    );
    assert_eq!(s.total_pnl, dec!(-2916.26075));
}

#[tokio::test(start_paused = true)]
async fn the_panic_test_strategy_panics_after_its_ticks() {
    let config = json!({
        "name": "crash", "type": "panic-test", "parameters": {"panicAfterTicks": 5},
        "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 50, "takeProfitPercent": 100},
        "instruments": ["BTC-PERPETUAL"]
    });
    let r = Running::start(spec("job-panic", config), MarketSettings::default(), None);
    let err = r.task.await.unwrap_err();
    assert!(err.is_panic());
    let msg = err.into_panic();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("panic-test strategy: panicking after 5 ticks"),
        "{msg}"
    );
    // It had opened a position, reported before the panic.
    let rep = r.report.latest();
    assert_eq!(rep.positions.len(), 1);
    assert_eq!(rep.state.unwrap().parse().unwrap()["events"]["ticks"], 5);
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_cannot_start_says_why() {
    let market = MarketSettings {
        feed: FeedKind::Replay,
        replay_file: "/nonexistent/{index}.csv".into(),
        ..MarketSettings::default()
    };
    let r = Running::start(
        spec("job-nofile", scalping(json!(["EUR-USD"]))),
        market,
        None,
    );
    let msg = r.task.await.unwrap().unwrap_err();
    assert!(msg.contains("/nonexistent/EURUSD.csv"), "{msg}");

    let r = Running::start(
        spec("job-badstate", scalping(json!(["BTC-PERPETUAL"]))),
        MarketSettings::default(),
        Some(SavedState::of(&json!({"version": 1, "broker": {"account": "garbage"}})).unwrap()),
    );
    let msg = r.task.await.unwrap().unwrap_err();
    assert!(msg.contains("cannot resume"), "{msg}");

    // A saved state that is not JSON at all (a foreign write) is refused too, never taken for
    // a fresh start.
    let r = Running::start(
        spec("job-notjson", scalping(json!(["BTC-PERPETUAL"]))),
        MarketSettings::default(),
        Some(SavedState::from_text("{\"version\": 1, \"broker")),
    );
    let msg = r.task.await.unwrap().unwrap_err();
    assert!(msg.contains("cannot resume"), "{msg}");
}
