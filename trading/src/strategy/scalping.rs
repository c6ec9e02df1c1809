//! `scalping`: RSI over `rsiPeriod` candles of `timeframe`. Flat and RSI below 30: buy;
//! flat and above 70: sell short; a long closes once RSI is back to 50 or more, a short once
//! it is 50 or less. A window without any change reads 50 (see [`rsi`]): it opens nothing,
//! and it closes either side, momentum being back to neutral.

use std::collections::{BTreeMap, VecDeque};

use rust_decimal::Decimal;
use serde_json::Value;

use super::params::TIMEFRAME;
use super::{Context, Param, Params, Strategy, StrategyKind, no_check, rsi};
use crate::broker::{OrderRequest, OrderSide};
use crate::feed::Candle;

/// Its declaration.
pub const KIND: StrategyKind = StrategyKind {
    name: "scalping",
    params: &[
        Param::Int {
            name: "rsiPeriod",
            min: 2,
            max: 100,
            default: Some(14),
        },
        TIMEFRAME,
    ],
    default_instruments: &["BTC-PERPETUAL"],
    test_only: false,
    check: no_check,
    build,
};

fn build(p: &Params<'_>) -> Box<dyn Strategy> {
    Box::new(Scalping::new(
        p.int("rsiPeriod").max(2) as usize,
        p.timeframe_ms(),
    ))
}

/// The scalping strategy.
#[derive(Debug, Clone)]
pub struct Scalping {
    period: usize,
    timeframe_ms: i64,
    closes: BTreeMap<String, VecDeque<Decimal>>,
}

impl Scalping {
    /// RSI over `period` candles of `timeframe_ms`.
    pub fn new(period: usize, timeframe_ms: i64) -> Self {
        Self {
            period,
            timeframe_ms,
            closes: BTreeMap::new(),
        }
    }
}

impl Strategy for Scalping {
    fn timeframe_ms(&self) -> i64 {
        self.timeframe_ms
    }

    fn on_candle(&mut self, ctx: &Context, candle: &Candle) -> Vec<OrderRequest> {
        let closes = self
            .closes
            .entry(ctx.instrument.name.to_owned())
            .or_default();
        closes.push_back(candle.close);
        while closes.len() > self.period + 1 {
            closes.pop_front();
        }
        let Some(rsi) = rsi(closes, self.period) else {
            return Vec::new();
        };
        let (i, pos) = (ctx.instrument, ctx.position);
        let order = if pos.is_zero() && rsi < Decimal::from(30) {
            OrderRequest::market(i, OrderSide::Buy, ctx.order_size)
        } else if pos.is_zero() && rsi > Decimal::from(70) {
            OrderRequest::market(i, OrderSide::Sell, ctx.order_size)
        } else if pos > Decimal::ZERO && rsi >= Decimal::from(50) {
            OrderRequest::market(i, OrderSide::Sell, pos).reduce_only()
        } else if pos < Decimal::ZERO && rsi <= Decimal::from(50) {
            OrderRequest::market(i, OrderSide::Buy, -pos).reduce_only()
        } else {
            return Vec::new();
        };
        vec![order]
    }

    fn state(&self) -> Value {
        serde_json::json!({ "closes": self.closes })
    }

    fn restore(&mut self, state: &Value) -> Result<(), String> {
        self.closes = serde_json::from_value(state["closes"].clone()).map_err(|e| e.to_string())?;
        Ok(())
    }
}
