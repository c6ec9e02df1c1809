//! Both built-in strategies replayed over 5,000 real hourly EUR-USD candles
//! (`tests/data/EURUSD.csv`, a copy of `../shared/data/EURUSD.csv`) to the end, with the
//! default fill model (fee 5 bps, slippage 1 bp): the results are the same on every run, and
//! pinned here so that any change to them is a decision.

mod common;

use std::time::Duration;

use common::{csv_file, eurusd_config, eurusd_market, play, replay_market, spec};
use runfleet_shared::config::MarketSettings;
use runfleet_shared::job::Stats;
use runfleet_trading::feed::ReplayCache;
use runfleet_trading::runner as trading;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

fn market() -> MarketSettings {
    eurusd_market()
}

fn config(kind: &str, parameters: Value) -> Value {
    eurusd_config(kind, parameters)
}

/// Replays the whole file, flattens at the end; returns the stats, the tick count and the
/// saved state.
async fn replay(config: Value) -> (Stats, u64, Value) {
    let spec = spec("job-replay", config);
    let (mut session, _) = play(&spec, &market()).await.unwrap();
    let flatten = session.flatten(3, Duration::ZERO).await;
    assert_eq!(flatten.error, None);
    let ticks = session.events().ticks;
    let stats = session.report().stats;
    let balance = session.broker().account().balance("USD");
    assert_eq!(
        stats.total_pnl,
        balance.normalize(),
        "flat: closed trades are all the money"
    );
    assert_eq!(
        stats.winning_trades + stats.losing_trades + session.ledger().breakeven_trades(),
        stats.total_trades
    );
    (stats, ticks, session.state())
}

fn show(name: &str, s: &Stats, events: &Value) {
    println!(
        "{name}: trades {} (won {}, lost {}), totalPnL {} {}, winRate {} %, fees {}, maxDrawdown {}, profitFactor {:?}; events {events}",
        s.total_trades,
        s.winning_trades,
        s.losing_trades,
        s.total_pnl,
        s.currency,
        s.win_rate,
        s.fees,
        s.max_drawdown,
        s.profit_factor
    );
}

#[tokio::test]
async fn scalping_replays_eurusd_to_the_end_with_the_same_stats_every_run() {
    let cfg = config("scalping", json!({"rsiPeriod": 14, "timeframe": "1h"}));
    let (first, ticks, state) = replay(cfg.clone()).await;
    let (again, _, state_again) = replay(cfg).await;
    show("scalping 1h RSI 14", &first, &state["events"]);
    assert_eq!(ticks, 5_000, "every candle played");
    assert_eq!(first, again);
    assert_eq!(state, state_again, "the whole saved state is deterministic");
    assert_eq!(
        first,
        Stats {
            total_trades: 231,
            winning_trades: 87,
            losing_trades: 144,
            total_pnl: dec!(-2916.26075),
            win_rate: dec!(37.66),
            fees: dec!(2692.16075),
            max_drawdown: dec!(2963.0424),
            profit_factor: Some(dec!(0.3317)),
            currency: "USD".into(),
        },
        "pinned"
    );
}

#[tokio::test]
async fn sma_cross_replays_eurusd_on_4h_candles_with_the_same_stats_every_run() {
    let cfg = config(
        "sma-cross",
        json!({"fastPeriod": 10, "slowPeriod": 30, "timeframe": "4h"}),
    );
    let (first, ticks, state) = replay(cfg.clone()).await;
    let (again, _, state_again) = replay(cfg).await;
    show("sma-cross 4h 10/30", &first, &state["events"]);
    assert_eq!(ticks, 5_000);
    assert_eq!(first, again);
    assert_eq!(state, state_again);
    assert_eq!(
        first,
        Stats {
            total_trades: 51,
            winning_trades: 14,
            losing_trades: 37,
            total_pnl: dec!(-746.95905),
            win_rate: dec!(27.45),
            fees: dec!(595.05905),
            max_drawdown: dec!(1027.2535),
            profit_factor: Some(dec!(0.6515)),
            currency: "USD".into(),
        },
        "pinned"
    );
}

/// Runners of one node share one read of their replay file, made off the async workers: four
/// runners started at once read it once, and see the same candles.
#[tokio::test]
async fn a_nodes_runners_read_their_replay_file_once() {
    let replays = ReplayCache::default();
    let market = market();
    let cfg = config("scalping", json!({"rsiPeriod": 14, "timeframe": "1h"}));
    let specs: Vec<_> = (0..4)
        .map(|i| spec(&format!("job-shared-{i}"), cfg.clone()))
        .collect();
    let starts = specs
        .iter()
        .map(|s| trading::start(s, &market, None, &replays));
    for started in futures::future::join_all(starts).await {
        assert!(started.is_ok());
    }
    assert_eq!(replays.reads(), 1, "one read for four runners");
    let (a, b) = (
        replays.candles(&market.replay_file).await.unwrap(),
        replays.candles(&market.replay_file).await.unwrap(),
    );
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    assert_eq!(a.len(), 5_000);
    assert_eq!(replays.reads(), 1);
}

/// A file that cannot be read is not remembered: once it is there, the next runner reads it.
#[tokio::test]
async fn a_replay_file_that_failed_to_load_is_read_again() {
    let replays = ReplayCache::default();
    let path = std::env::temp_dir().join(format!("runfleet-test-{}-late.csv", std::process::id()));
    let file = path.display().to_string();
    let _ = std::fs::remove_file(&path);
    assert!(replays.candles(&file).await.is_err());
    std::fs::write(&path, "2017-04-19 09:00:00,1,1,1,1\n").unwrap();
    let rows = replays.candles(&file).await;
    std::fs::remove_file(&path).unwrap();
    assert_eq!(rows.unwrap().len(), 1);
    assert_eq!(replays.reads(), 2);
}

/// Why a scalping EUR-USD runner on `csv` (written to a file named after `name`) cannot
/// start, and the file's path.
async fn refused(name: &str, csv: &str) -> (String, String) {
    let file = csv_file(name, csv);
    let cfg = config("scalping", json!({"rsiPeriod": 14, "timeframe": "1h"}));
    let started = trading::start(
        &spec(name, cfg),
        &replay_market(&file, 5, 1),
        None,
        &ReplayCache::default(),
    )
    .await;
    std::fs::remove_file(&file).unwrap();
    match started {
        Ok(_) => panic!("{name}: started"),
        Err(e) => (file, e),
    }
}

#[tokio::test]
async fn replay_input_that_is_wrong_is_refused_with_the_file_and_line() {
    for (name, csv) in [
        ("empty", ""),
        ("header-only", ",Open,High,Low,Close,Volume\n"),
    ] {
        let (file, e) = refused(name, csv).await;
        assert_eq!(
            e,
            format!("replay file {file}: no candle rows (the file is empty or has only a header)")
        );
    }
    const ROWS: &str = ",Open,High,Low,Close,Volume\n2005-02-28,1.3,1.3,1.3,1.3,0\n";
    let (file, e) = refused("feb-29", &format!("{ROWS}2005-02-29,1.3,1.3,1.3,1.3,0\n")).await;
    assert_eq!(
        e,
        format!("replay file {file}: line 3: no such date \"2005-02-29\": 2005-02 has 28 days")
    );
    // Not read as 2005-03-03, which would blame line 4 for going back in time.
    let (file, e) = refused(
        "feb-31",
        &format!("{ROWS}2005-02-31,1.3,1.3,1.3,1.3,0\n2005-03-01,1.3,1.3,1.3,1.3,0\n"),
    )
    .await;
    assert!(
        e.starts_with(&format!("replay file {file}: line 3: no such date")),
        "{e}"
    );
}
