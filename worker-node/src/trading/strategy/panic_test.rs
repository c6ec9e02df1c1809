//! `panic-test` (test-only, refused by validation unless a fleet allows test strategies): opens
//! a long of the order size on its first candle, holds it, and panics once it has seen
//! `panicAfterTicks` candles in this run (0 panics at the first). It exists so fault tests can
//! crash a runner on purpose; its count is not saved, so every run of the job panics.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Context, Strategy};
use crate::trading::broker::{OrderRequest, OrderSide};
use crate::trading::feed::Candle;

/// A strategy that panics on purpose.
#[derive(Debug, Clone)]
pub struct PanicTest {
    after: u64,
    /// Candles seen per instrument: one per tick of the feed.
    seen: BTreeMap<String, u64>,
}

impl PanicTest {
    /// Panics after `after` candles.
    pub fn new(after: u64) -> Self {
        Self {
            after,
            seen: BTreeMap::new(),
        }
    }
}

impl Strategy for PanicTest {
    fn timeframe_ms(&self) -> i64 {
        60_000
    }

    fn on_candle(&mut self, ctx: &Context, _candle: &Candle) -> Vec<OrderRequest> {
        let seen = self.seen.entry(ctx.instrument.name.to_owned()).or_default();
        if *seen >= self.after {
            panic!(
                "panic-test strategy: panicking after {} ticks, as configured",
                self.after
            );
        }
        *seen += 1;
        if ctx.position.is_zero() {
            vec![OrderRequest::market(
                ctx.instrument,
                OrderSide::Buy,
                ctx.order_size,
            )]
        } else {
            Vec::new()
        }
    }

    fn state(&self) -> Value {
        Value::Null
    }

    fn restore(&mut self, _state: &Value) -> Result<(), String> {
        Ok(())
    }
}
