//! `sma-cross`: simple moving averages of `fastPeriod` and `slowPeriod` candles of
//! `timeframe`. When the fast average crosses above the slow one the strategy goes long (from
//! a short, in one order that flips it), when it crosses below it goes short. It is always in
//! the market after the first cross.
//!
//! When a cross fires: from the first candle with `slowPeriod` closes on, each candle has a
//! side, the sign of fast − slow. A tie (fast = slow) is no side: it neither fires nor changes
//! the side remembered. A cross fires on the candle whose side is the opposite of the side
//! remembered, however many ties lie between them. The first side after warm-up (or after
//! ties at warm-up) is only remembered: the strategy enters on a change it saw, never on the
//! state it happened to start in, which would make its first trade depend on when it was
//! started rather than on the market.

use std::collections::{BTreeMap, VecDeque};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use runfleet_shared::validate::{FieldError, refuse};

use super::params::TIMEFRAME;
use super::{Context, Param, Params, Strategy, StrategyKind, sum_last};
use crate::broker::{OrderRequest, OrderSide};
use crate::feed::Candle;

/// Its declaration.
pub const KIND: StrategyKind = StrategyKind {
    name: "sma-cross",
    params: &[
        Param::Int {
            name: "fastPeriod",
            min: 1,
            max: 200,
            default: None,
        },
        Param::Int {
            name: "slowPeriod",
            min: 2,
            max: 500,
            default: None,
        },
        TIMEFRAME,
    ],
    default_instruments: &["BTC-PERPETUAL"],
    test_only: false,
    check,
    build,
};

fn check(p: &Params<'_>) -> Result<(), FieldError> {
    if p.int("fastPeriod") >= p.int("slowPeriod") {
        return refuse("config.parameters.fastPeriod", "must be below slowPeriod");
    }
    Ok(())
}

fn build(p: &Params<'_>) -> Box<dyn Strategy> {
    Box::new(SmaCross::new(
        p.int("fastPeriod").max(1) as usize,
        p.int("slowPeriod").max(2) as usize,
        p.timeframe_ms(),
    ))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Track {
    closes: VecDeque<Decimal>,
    /// The side remembered: +1 fast above slow, −1 below, 0 none seen yet (warming up, or ties
    /// only).
    above: i8,
}

/// The moving-average crossover strategy.
#[derive(Debug, Clone)]
pub struct SmaCross {
    fast: usize,
    slow: usize,
    timeframe_ms: i64,
    tracks: BTreeMap<String, Track>,
}

impl SmaCross {
    /// Averages of `fast` and `slow` candles of `timeframe_ms`.
    pub fn new(fast: usize, slow: usize, timeframe_ms: i64) -> Self {
        Self {
            fast,
            slow,
            timeframe_ms,
            tracks: BTreeMap::new(),
        }
    }
}

impl Strategy for SmaCross {
    fn timeframe_ms(&self) -> i64 {
        self.timeframe_ms
    }

    fn on_candle(&mut self, ctx: &Context, candle: &Candle) -> Vec<OrderRequest> {
        let track = self
            .tracks
            .entry(ctx.instrument.name.to_owned())
            .or_default();
        track.closes.push_back(candle.close);
        while track.closes.len() > self.slow {
            track.closes.pop_front();
        }
        let (Some(fast_sum), Some(slow_sum)) = (
            sum_last(&track.closes, self.fast),
            sum_last(&track.closes, self.slow),
        ) else {
            return Vec::new();
        };
        // fast − slow has the sign of fast_sum × slow − slow_sum × fast: compared without a
        // division, a tie is a true tie and no rounding can make or break a cross.
        let fast_side = fast_sum * Decimal::from(self.slow as u64);
        let slow_side = slow_sum * Decimal::from(self.fast as u64);
        let now: i8 = match fast_side.cmp(&slow_side) {
            std::cmp::Ordering::Greater => 1,
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => return Vec::new(),
        };
        let crossed = track.above != 0 && track.above != now;
        track.above = now;
        if !crossed {
            return Vec::new();
        }
        let (side, target) = if now > 0 {
            (OrderSide::Buy, ctx.order_size)
        } else {
            (OrderSide::Sell, -ctx.order_size)
        };
        let amount = (target - ctx.position).abs();
        if amount.is_zero() {
            return Vec::new();
        }
        vec![OrderRequest::market(ctx.instrument, side, amount)]
    }

    fn state(&self) -> Value {
        serde_json::json!({ "tracks": self.tracks })
    }

    fn restore(&mut self, state: &Value) -> Result<(), String> {
        self.tracks = serde_json::from_value(state["tracks"].clone()).map_err(|e| e.to_string())?;
        Ok(())
    }
}
