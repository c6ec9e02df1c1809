//! Strategies: what decides to trade. A strategy sees completed candles of its timeframe, one
//! instrument at a time, with the position held there, and answers with orders. It decides
//! nothing about risk: the runtime clips its orders to `maxPositionSize` and closes positions
//! on stop-loss and take-profit whatever it does.
//!
//! Each strategy is one file holding its declaration (a [`StrategyKind`]: its `config.type`,
//! declared parameters, default instruments, and how to build it) and its implementation;
//! [`STRATEGIES`] registers it with one line. Validation, the parameter schema the API
//! publishes and the runner all read the registry, so adding a strategy touches nothing else.
//!
//! Built in: [`Scalping`] (`scalping`), [`SmaCross`] (`sma-cross`), and the test-only
//! [`PanicTest`] (`panic-test`).

mod indicators;
mod panic_test;
pub mod params;
mod scalping;
mod sma_cross;

use std::fmt;

use runfleet_shared::job::JobSpec;
use runfleet_shared::validate::FieldError;
use rust_decimal::Decimal;
use serde_json::Value;

pub use indicators::{rsi, sma, sum_last};
pub use panic_test::PanicTest;
pub use params::{Param, Params};
pub use scalping::Scalping;
pub use sma_cross::SmaCross;

use crate::broker::{BrokerPosition, Fill, OrderRequest};
use crate::catalog::Instrument;
use crate::external::{ExternalStrategies, ExternalStrategy};
use crate::feed::Candle;

/// Every strategy, in the order the API lists them: one line per strategy.
pub const STRATEGIES: &[StrategyKind] = &[scalping::KIND, sma_cross::KIND, panic_test::KIND];

/// A strategy's declaration: what selects it, the parameters it accepts, and how it is built.
#[derive(Debug, Clone, Copy)]
pub struct StrategyKind {
    /// The `config.type` that selects it.
    pub name: &'static str,
    /// Its parameters.
    pub params: &'static [Param],
    /// What it trades when the start request names no instrument.
    pub default_instruments: &'static [&'static str],
    /// Only for fault tests: refused unless validation allows test strategies.
    pub test_only: bool,
    /// Checks between parameters beyond each one's own range (`Ok` for most strategies).
    pub check: fn(&Params<'_>) -> Result<(), FieldError>,
    /// Builds the strategy from validated parameters.
    pub build: fn(&Params<'_>) -> Box<dyn Strategy>,
}

impl StrategyKind {
    /// Its parameter values in `values`, read with their defaults.
    pub fn params<'a>(&self, values: &'a serde_json::Map<String, Value>) -> Params<'a> {
        Params::new(self.params, values)
    }
}

/// No check between parameters.
pub fn no_check(_: &Params<'_>) -> Result<(), FieldError> {
    Ok(())
}

/// Looks a strategy up by `config.type` (test-only ones included).
pub fn strategy(name: &str) -> Option<&'static StrategyKind> {
    STRATEGIES.iter().find(|s| s.name == name)
}

/// The `config.type` values the API advertises: every strategy but the test-only ones.
pub fn strategy_names() -> Vec<&'static str> {
    STRATEGIES
        .iter()
        .filter(|s| !s.test_only)
        .map(|s| s.name)
        .collect()
}

/// The JSON Schema of `config.parameters` of each advertised strategy, keyed by its
/// `config.type`.
pub fn parameter_schema() -> Value {
    STRATEGIES
        .iter()
        .filter(|s| !s.test_only)
        .map(|s| (s.name.to_owned(), params::schema(s.params)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

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
    let kind = strategy(&config.kind).ok_or_else(|| UnknownStrategy(config.kind.clone()))?;
    Ok((kind.build)(&kind.params(&config.parameters)))
}

/// The strategy a (validated) spec selects, built in or one of `externals` (not started: see
/// [`RunningStrategy::start`]), trading `instruments`.
pub fn build_running(
    spec: &JobSpec,
    externals: &ExternalStrategies,
    instruments: &[&'static Instrument],
) -> Result<RunningStrategy, UnknownStrategy> {
    if let Some(def) = externals.get(&spec.config.kind) {
        return Ok(RunningStrategy::External(Box::new(ExternalStrategy::new(
            def.clone(),
            spec.id.as_str(),
            &spec.config.parameters,
            instruments.to_vec(),
        ))));
    }
    build(spec).map(RunningStrategy::BuiltIn)
}

/// The strategy a session drives. The seam is an enum rather than an async trait: a built-in
/// strategy is called in place, synchronously, as it always was (no future boxed per candle),
/// and only an external one awaits its child's answer.
#[derive(Debug)]
pub enum RunningStrategy {
    /// A built-in strategy.
    BuiltIn(Box<dyn Strategy>),
    /// A program run as a child process.
    External(Box<ExternalStrategy>),
}

impl From<Box<dyn Strategy>> for RunningStrategy {
    fn from(s: Box<dyn Strategy>) -> Self {
        Self::BuiltIn(s)
    }
}

impl RunningStrategy {
    /// Length of the candles it trades on, ms.
    pub fn timeframe_ms(&self) -> i64 {
        match self {
            Self::BuiltIn(s) => s.timeframe_ms(),
            Self::External(s) => s.timeframe_ms(),
        }
    }

    /// Starts it (an external one's process, with its saved state); a built-in one has
    /// nothing to start. `Err`: it crashed starting.
    pub async fn start(&mut self) -> Result<(), String> {
        match self {
            Self::BuiltIn(_) => Ok(()),
            Self::External(s) => s.start().await,
        }
    }

    /// Reacts to a completed candle with orders to place. `Err`: the strategy crashed (an
    /// external one broke the protocol, a limit, or exited); it must not be called again.
    pub async fn on_candle(
        &mut self,
        ctx: &Context,
        candle: &Candle,
    ) -> Result<Vec<OrderRequest>, String> {
        match self {
            Self::BuiltIn(s) => Ok(s.on_candle(ctx, candle)),
            Self::External(s) => s.decide(ctx, candle).await,
        }
    }

    /// A fill on the account (an external strategy is told of it before its next candle).
    pub fn on_fill(&mut self, fill: &Fill) {
        if let Self::External(s) = self {
            s.on_fill(fill);
        }
    }

    /// The account's positions before a candle (an external strategy is sent them when fills
    /// changed them).
    pub fn on_positions(&mut self, positions: &[BrokerPosition]) {
        if let Self::External(s) = self {
            s.on_positions(positions);
        }
    }

    /// Its state, to resume it elsewhere.
    pub fn state(&self) -> Value {
        match self {
            Self::BuiltIn(s) => s.state(),
            Self::External(s) => s.state(),
        }
    }

    /// Takes back a state saved by [`RunningStrategy::state`].
    pub fn restore(&mut self, state: &Value) -> Result<(), String> {
        match self {
            Self::BuiltIn(s) => s.restore(state),
            Self::External(s) => {
                s.restore(state);
                Ok(())
            }
        }
    }

    /// Ends it: an external one is sent `stop` and given `grace` to exit, then killed with its
    /// whole process group (`grace` zero: killed at once).
    pub async fn stop(&mut self, reason: &str, grace: std::time::Duration) {
        if let Self::External(s) = self {
            s.stop(reason, grace).await;
        }
    }

    /// The external strategy's process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Self::BuiltIn(_) => None,
            Self::External(s) => s.pid(),
        }
    }
}
