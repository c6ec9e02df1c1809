//! `panic-test` (test-only, refused by validation unless a fleet allows test strategies): opens
//! a long of the order size on its first candle, holds it, and panics once it has seen
//! `panicAfterTicks` candles in this run (0 panics at the first). It exists so fault tests can
//! crash a runner on purpose; its count is not saved, so every run of the job panics.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Context, Param, Params, Strategy, StrategyKind, no_check};
use crate::broker::{OrderRequest, OrderSide};
use crate::feed::Candle;

/// Its declaration.
pub const KIND: StrategyKind = StrategyKind {
    name: "panic-test",
    params: &[Param::Int {
        name: "panicAfterTicks",
        min: 0,
        max: 100_000,
        default: Some(0),
    }],
    default_instruments: &["BTC-PERPETUAL"],
    test_only: true,
    check: no_check,
    build,
};

fn build(p: &Params<'_>) -> Box<dyn Strategy> {
    Box::new(PanicTest::new(p.int("panicAfterTicks").max(0) as u64))
}

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
