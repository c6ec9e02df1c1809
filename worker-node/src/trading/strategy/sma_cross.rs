//! `sma-cross`: simple moving averages of `fastPeriod` and `slowPeriod` candles of
//! `timeframe`. When the fast average crosses above the slow one the strategy goes long (from
//! a short, in one order that flips it), when it crosses below it goes short. It is always in
//! the market after the first cross.

use std::collections::{BTreeMap, VecDeque};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Context, Strategy, sma};
use crate::trading::broker::{OrderRequest, OrderSide};
use crate::trading::feed::Candle;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Track {
    closes: VecDeque<Decimal>,
    /// +1 fast above slow, −1 below, 0 unknown yet.
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
        let (Some(fast), Some(slow)) =
            (sma(&track.closes, self.fast), sma(&track.closes, self.slow))
        else {
            return Vec::new();
        };
        let now: i8 = match fast.cmp(&slow) {
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
