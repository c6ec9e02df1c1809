//! Both built-in strategies replayed over 5,000 real hourly EUR-USD candles
//! (`tests/data/EURUSD.csv`, a copy of `../shared/data/EURUSD.csv`) to the end, with the
//! default fill model (fee 5 bps, slippage 1 bp): the results are the same on every run, and
//! pinned here so that any change to them is a decision.

mod common;

use std::time::Duration;

use common::{eurusd_csv, spec};
use runfleet::config::{FeedKind, MarketSettings};
use runfleet::job::Stats;
use runfleet_worker::trading;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

fn market() -> MarketSettings {
    MarketSettings {
        feed: FeedKind::Replay,
        replay_file: eurusd_csv(),
        replay_speed: 0,
        ..MarketSettings::default()
    }
}

fn config(kind: &str, parameters: Value) -> Value {
    json!({
        "name": format!("EUR-USD {kind}"), "type": kind, "parameters": parameters,
        "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 0.5, "takeProfitPercent": 1},
        "instruments": ["EUR-USD"]
    })
}

/// Replays the whole file, flattens at the end; returns the stats, the tick count and the
/// saved state.
async fn replay(config: Value) -> (Stats, u64, Value) {
    let spec = spec("job-replay", config);
    let (mut session, mut feed) = trading::start(&spec, &market(), None).await.unwrap();
    while let Some(bars) = feed.next_bars() {
        session.step(&bars).await;
    }
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
            total_pnl: dec!(-2916.31),
            win_rate: dec!(37.66),
            fees: dec!(2692.21),
            max_drawdown: dec!(2963.09),
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
            total_pnl: dec!(-746.99),
            win_rate: dec!(27.45),
            fees: dec!(595.09),
            max_drawdown: dec!(1027.29),
            profit_factor: Some(dec!(0.6515)),
            currency: "USD".into(),
        },
        "pinned"
    );
}
