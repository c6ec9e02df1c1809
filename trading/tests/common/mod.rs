//! Helpers shared by the trading tests: a scripted strategy, bars, and a paper session.

#![allow(dead_code)]

use std::collections::VecDeque;

use runfleet_shared::config::{FeedKind, MarketSettings};
use runfleet_shared::job::JobSpec;
use runfleet_trading::broker::{Fill, OrderRequest, OrderSide};
use runfleet_trading::catalog::{self, Instrument};
use runfleet_trading::feed::{Bar, Candle, ReplayCache};
use runfleet_trading::paper::{FillModel, PaperBroker};
use runfleet_trading::risk::RiskLimits;
use runfleet_trading::runner as trading;
use runfleet_trading::session::Session;
use runfleet_trading::strategy::{Context, Strategy};
use rust_decimal::Decimal;
use serde_json::Value;

/// An instrument of the catalog.
pub fn inst(name: &str) -> &'static Instrument {
    catalog::instrument(name).unwrap()
}

/// A one-minute bar of `instrument` closing at `price`, the `n`th of its series.
pub fn bar(instrument: &'static Instrument, n: i64, price: Decimal) -> Bar {
    Bar {
        instrument,
        candle: Candle {
            start_ms: n * 60_000,
            period_ms: 60_000,
            open: price,
            high: price,
            low: price,
            close: price,
        },
    }
}

/// A strategy that places, on its n-th candle, the n-th list of (side, amount) market orders.
#[derive(Debug, Default)]
pub struct Script(pub VecDeque<Vec<(OrderSide, Decimal)>>);

impl Script {
    /// Orders for the first candles, then nothing.
    pub fn new(steps: Vec<Vec<(OrderSide, Decimal)>>) -> Box<Self> {
        Box::new(Self(steps.into()))
    }
}

impl Strategy for Script {
    fn timeframe_ms(&self) -> i64 {
        60_000
    }

    fn on_candle(&mut self, ctx: &Context, _candle: &Candle) -> Vec<OrderRequest> {
        self.0
            .pop_front()
            .unwrap_or_default()
            .into_iter()
            .map(|(side, amount)| OrderRequest::market(ctx.instrument, side, amount))
            .collect()
    }

    fn state(&self) -> Value {
        Value::Null
    }

    fn restore(&mut self, _state: &Value) -> Result<(), String> {
        Ok(())
    }
}

/// A fill model of `fee_bps` and `slippage_bps`.
pub fn model(fee_bps: i64, slippage_bps: i64) -> FillModel {
    FillModel {
        fee_bps: Decimal::from(fee_bps),
        slippage_bps: Decimal::from(slippage_bps),
    }
}

/// A paper session over `instruments`.
pub fn session(
    model: FillModel,
    strategy: Box<dyn Strategy>,
    risk: RiskLimits,
    instruments: &[&str],
) -> Session<PaperBroker> {
    Session::new(
        PaperBroker::new(model),
        strategy,
        risk,
        instruments.iter().map(|n| inst(n)).collect(),
    )
}

/// Limits of `max` per instrument and the given stop-loss and take-profit percentages.
pub fn limits(max: Decimal, sl: Option<Decimal>, tp: Option<Decimal>) -> RiskLimits {
    RiskLimits {
        max_position_size: Some(max),
        stop_loss_percent: sl,
        take_profit_percent: tp,
    }
}

/// A job spec as the orchestrator would store it: `config` is the start request's `config`.
pub fn spec(job: &str, config: Value) -> JobSpec {
    use runfleet_shared::crypto::CredentialCipher;
    use runfleet_shared::ids::{BrokerId, JobId, StrategyId, UserId};
    use runfleet_shared::job::Credentials;
    let id = JobId::new(job);
    let credentials = CredentialCipher::ephemeral()
        .seal(
            &id,
            &Credentials {
                api_key: "key".into(),
                api_secret: "secret".into(),
            },
        )
        .unwrap();
    JobSpec {
        id,
        user_id: UserId::new("user-1"),
        strategy_id: StrategyId::new("s1"),
        broker_id: BrokerId::new("paper"),
        config: serde_json::from_value(config).unwrap(),
        credentials,
    }
}

/// The EUR-USD hourly candles shipped with the tests.
pub fn eurusd_csv() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/EURUSD.csv").to_owned()
}

/// A replay market over `file`, played as fast as the runner can, with this fill model.
pub fn replay_market(file: &str, fee_bps: i64, slippage_bps: i64) -> MarketSettings {
    MarketSettings {
        feed: FeedKind::Replay,
        replay_file: file.to_owned(),
        replay_speed: 0,
        fee_bps: Decimal::from(fee_bps),
        slippage_bps: Decimal::from(slippage_bps),
        ..MarketSettings::default()
    }
}

/// The EUR-USD file of the tests with the default fill model (fee 5 bps, slippage 1 bp).
pub fn eurusd_market() -> MarketSettings {
    let defaults = MarketSettings::default();
    MarketSettings {
        fee_bps: defaults.fee_bps,
        slippage_bps: defaults.slippage_bps,
        ..replay_market(&eurusd_csv(), 0, 0)
    }
}

/// A `config` of strategy type `kind` trading EUR-USD with `parameters`, positions up to
/// 10,000 EUR, stop-loss 0.5 %, take-profit 1 %.
pub fn eurusd_config(kind: &str, parameters: Value) -> Value {
    serde_json::json!({
        "name": format!("EUR-USD {kind}"), "type": kind, "parameters": parameters,
        "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 0.5, "takeProfitPercent": 1},
        "instruments": ["EUR-USD"]
    })
}

/// Writes `text` to a file of the system's temporary directory named after `name` (unique
/// per test) and this process, and returns its path.
pub fn csv_file(name: &str, text: &str) -> String {
    let path =
        std::env::temp_dir().join(format!("runfleet-test-{}-{name}.csv", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Starts a runner of `spec` on `market` as the node does (`trading::start`), then plays its
/// feed to the end without flattening. Returns the session and the fills of every step, or
/// why it could not start.
pub async fn play(
    spec: &JobSpec,
    market: &MarketSettings,
) -> Result<(Session<PaperBroker>, Vec<Vec<Fill>>), String> {
    let (mut session, mut feed) =
        trading::start(spec, market, None, &ReplayCache::default()).await?;
    let mut steps = Vec::new();
    while let Some(bars) = feed.next_bars() {
        steps.push(session.step(&bars).await);
    }
    Ok((session, steps))
}
