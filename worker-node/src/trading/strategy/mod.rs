//! Strategies: what decides to trade. A strategy sees completed candles of its timeframe, one
//! instrument at a time, with the position held there, and answers with orders. It decides
//! nothing about risk: the runtime clips its orders to `maxPositionSize` and closes positions
//! on stop-loss and take-profit whatever it does.
//!
//! Built in: [`Scalping`] (`scalping`), [`SmaCross`] (`sma-cross`), and the test-only
//! [`PanicTest`] (`panic-test`). Their parameters are declared in `runfleet::catalog`, which
//! validates start requests against them.

mod indicators;
mod panic_test;
mod scalping;
mod sma_cross;

use std::fmt;

use runfleet::catalog::{self, Instrument};
use runfleet::job::JobSpec;
use rust_decimal::Decimal;
use serde_json::Value;

pub use indicators::{rsi, sma, sum_last};
pub use panic_test::PanicTest;
pub use scalping::Scalping;
pub use sma_cross::SmaCross;

use super::broker::OrderRequest;
use super::feed::Candle;

/// What a strategy knows when a candle completes.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// The instrument the candle is of.
    pub instrument: &'static Instrument,
    /// The signed position held on it (negative short), as the broker reports it.
    pub position: Decimal,
    /// The size to trade: the largest position the risk limits allow on this instrument.
    pub order_size: Decimal,
}

/// A trading strategy.
pub trait Strategy: Send + fmt::Debug {
    /// Length of the candles it trades on, ms.
    fn timeframe_ms(&self) -> i64;

    /// Reacts to a completed candle with orders to place.
    fn on_candle(&mut self, ctx: &Context, candle: &Candle) -> Vec<OrderRequest>;

    /// Its state (indicator history), to resume it elsewhere.
    fn state(&self) -> Value;

    /// Takes back a state saved by [`Strategy::state`].
    fn restore(&mut self, state: &Value) -> Result<(), String>;
}

/// Why a strategy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("strategy type {0:?} is not built in")]
pub struct UnknownStrategy(pub String);

/// The built-in strategy a (validated) spec selects.
pub fn build(spec: &JobSpec) -> Result<Box<dyn Strategy>, UnknownStrategy> {
    let config = &spec.config;
    let kind =
        catalog::strategy(&config.kind).ok_or_else(|| UnknownStrategy(config.kind.clone()))?;
    let params = &config.parameters;
    let timeframe =
        catalog::timeframe_ms(kind.choice(params, "timeframe")).unwrap_or(60_000) as i64;
    Ok(match kind.name {
        "scalping" => Box::new(Scalping::new(
            kind.int(params, "rsiPeriod").max(2) as usize,
            timeframe,
        )),
        "sma-cross" => Box::new(SmaCross::new(
            kind.int(params, "fastPeriod").max(1) as usize,
            kind.int(params, "slowPeriod").max(2) as usize,
            timeframe,
        )),
        "panic-test" => Box::new(PanicTest::new(
            kind.int(params, "panicAfterTicks").max(0) as u64
        )),
        other => return Err(UnknownStrategy(other.to_owned())),
    })
}
