//! runfleet's trading runner kind: a strategy trading on a paper broker against a market feed.
//! The fleet runs it through [`runfleet_shared::kind::RunnerKind`] and knows nothing else of it.
//!
//! - [`catalog`]: instruments, brokers, timeframes;
//! - [`strategy`]: the strategy abstraction and the registry of strategies, each one file with
//!   its declared parameters and its implementation;
//! - [`external`]: strategies the operator registers as programs, run one child process per
//!   runner over a JSON-lines protocol (docs/strategy-protocol.md);
//! - [`validate`]: a start request's `config` against both;
//! - [`broker`]: the broker abstraction (market and limit orders, cancel, positions, close);
//! - [`paper`]: the paper broker (slippage, fees) over the [`account`] (decimal money, linear
//!   and inverse contracts);
//! - [`feed`]: the simulated and replay market feeds (and the node's replay file cache),
//!   candles of a timeframe; what `market.*` settings mean;
//! - [`risk`]: position limits and stop-loss / take-profit, enforced by the runtime;
//! - [`stats`]: trades and stats from the broker's fills;
//! - [`session`]: one runner's trading state, driven step by step;
//! - [`runner`]: the run the node supervises: paces a session with its feed until told to
//!   stop, then flattens or holds.
//!
//! Definitions (what a trade is, how PnL is marked, rounding) are in docs/trading.md.

pub mod account;
pub mod broker;
pub mod catalog;
pub mod external;
pub mod feed;
pub mod paper;
pub mod risk;
pub mod runner;
pub mod session;
pub mod stats;
pub mod strategy;
pub mod validate;

use std::sync::Arc;

use futures::future::BoxFuture;
use runfleet_shared::config::{ConfigError, MarketSettings, Settings};
use runfleet_shared::job::{JobSpec, StartRunnerRequest, StrategyConfig};
use runfleet_shared::kind::{Kinds, Report, RunOutcome, RunStart, RunnerKind};
use runfleet_shared::validate::{FieldError, ValidationOptions};
use serde_json::Value;

pub use strategy::{parameter_schema, strategy_names};

use crate::external::ExternalStrategies;
use crate::feed::ReplayCache;

/// The trading runner kind: its market settings, the node's replay cache, and whether
/// validation admits the test-only strategies.
#[derive(Debug, Clone)]
pub struct TradingKind {
    market: Arc<MarketSettings>,
    replays: ReplayCache,
    options: ValidationOptions,
    externals: ExternalStrategies,
}

impl TradingKind {
    /// The kind trading on `market`, validating with `options`.
    pub fn new(market: MarketSettings, options: ValidationOptions) -> Self {
        Self {
            market: Arc::new(market),
            replays: ReplayCache::default(),
            options,
            externals: ExternalStrategies::default(),
        }
    }

    /// The same kind, running `externals` too.
    pub fn with_externals(mut self, externals: ExternalStrategies) -> Self {
        self.externals = externals;
        self
    }

    /// The kind as `settings` configure it (`market.*`, `testing.test_strategies`,
    /// `external_strategies`). An external strategy whose type is a built-in one's, or whose
    /// timeframe is unknown, is refused.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let externals =
            ExternalStrategies::new(&settings.external_strategies).map_err(|reason| {
                ConfigError::Invalid {
                    key: "external_strategies",
                    reason,
                }
            })?;
        Ok(Self::new(
            settings.market.clone(),
            ValidationOptions {
                allow_test_strategies: settings.testing.test_strategies,
            },
        )
        .with_externals(externals))
    }

    /// The external strategies it runs.
    pub fn externals(&self) -> &ExternalStrategies {
        &self.externals
    }

    /// A kind used only to validate, with default market settings.
    pub fn for_validation(options: ValidationOptions) -> Self {
        Self::new(MarketSettings::default(), options)
    }
}

/// The runner kinds of a runfleet binary as `settings` configure them: trading, registered
/// once in each `main`.
pub fn kinds(settings: &Settings) -> Result<Kinds, ConfigError> {
    Ok(Kinds::new().with(TradingKind::from_settings(settings)?))
}

impl RunnerKind for TradingKind {
    fn name(&self) -> &'static str {
        "trading"
    }

    fn config_types(&self) -> Vec<&'static str> {
        strategy::STRATEGIES
            .iter()
            .filter(|s| !s.test_only || self.options.allow_test_strategies)
            .map(|s| s.name)
            .chain(self.externals.iter().map(|d| d.name))
            .collect()
    }

    fn runs(&self, config_type: &str) -> bool {
        strategy::strategy(config_type).is_some() || self.externals.get(config_type).is_some()
    }

    fn brokers(&self) -> &'static [&'static str] {
        catalog::BROKERS
    }

    fn parameter_schema(&self) -> Value {
        let mut schema = strategy::parameter_schema();
        if let Some(map) = schema.as_object_mut() {
            for d in self.externals.iter() {
                map.insert(d.name.to_owned(), d.settings.parameters.clone());
            }
        }
        schema
    }

    fn apply_defaults(&self, config: &mut StrategyConfig) {
        match self.externals.get(&config.kind) {
            Some(def) => validate::apply_external_defaults(def, config),
            None => validate::apply_defaults(config),
        }
    }

    fn validate(&self, req: &StartRunnerRequest) -> Result<(), FieldError> {
        if let Some(def) = self.externals.get(&req.config.kind) {
            return validate::check_external_config(def, req);
        }
        match strategy::strategy(&req.config.kind) {
            Some(kind) => validate::check_config(kind, req),
            None => Err(FieldError::new(
                "config.type",
                format!(
                    "unknown strategy type; known: {}",
                    self.config_types().join(", ")
                ),
            )),
        }
    }

    fn before_start(&self, spec: &JobSpec) -> Report {
        runner::before_start(spec)
    }

    fn run(&self, start: RunStart) -> BoxFuture<'static, Result<RunOutcome, String>> {
        let (market, replays, externals) = (
            self.market.clone(),
            self.replays.clone(),
            self.externals.clone(),
        );
        Box::pin(async move {
            runner::run(
                start.spec,
                &market,
                &externals,
                &replays,
                start.resume,
                start.report,
                start.stop,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use runfleet_shared::crypto::CredentialCipher;
    use runfleet_shared::ids::JobId;
    use runfleet_shared::job::StartRunnerRequest;
    use serde_json::json;

    use super::*;

    fn spec(instruments: Value) -> JobSpec {
        let req: StartRunnerRequest = serde_json::from_value(json!({
            "userId": "u1", "strategyId": "s1", "brokerId": "paper",
            "credentials": {"apiKey": "k", "apiSecret": "s"},
            "config": {"name": "n", "type": "scalping", "instruments": instruments}
        }))
        .unwrap();
        JobSpec::sealed(JobId::new("job-1"), req, &CredentialCipher::ephemeral()).unwrap()
    }

    #[test]
    fn the_registry_gives_the_advertised_names_and_their_parameter_schemas() {
        assert_eq!(strategy_names(), ["scalping", "sma-cross"]);
        let schema = parameter_schema();
        assert_eq!(
            schema.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["scalping", "sma-cross"]
        );
        let sma = &schema["sma-cross"];
        assert_eq!(sma["required"], json!(["fastPeriod", "slowPeriod"]));
        assert_eq!(sma["additionalProperties"], false);
        assert_eq!(
            sma["properties"]["slowPeriod"],
            json!({"type": "integer", "minimum": 2, "maximum": 500})
        );
        assert_eq!(
            schema["scalping"]["properties"]["timeframe"]["default"],
            "1m"
        );
        assert!(schema["scalping"].get("required").is_none());
    }

    #[test]
    fn test_strategies_are_admitted_only_when_allowed_but_always_run() {
        let public = TradingKind::for_validation(ValidationOptions::default());
        assert_eq!(public.config_types(), strategy_names());
        assert!(public.runs("panic-test"));
        let testing = TradingKind::for_validation(ValidationOptions {
            allow_test_strategies: true,
        });
        assert!(testing.config_types().contains(&"panic-test"));
    }

    #[test]
    fn before_start_stats_are_in_the_currency_trades_will_be_counted_in() {
        let kind = TradingKind::for_validation(ValidationOptions::default());
        let one = kind.before_start(&spec(json!(["BTC-PERPETUAL"])));
        assert_eq!(one.stats.currency, "BTC");
        assert!(one.positions.is_empty() && one.state.is_none());
        let mixed = kind.before_start(&spec(json!(["BTC-PERPETUAL", "ETH-PERPETUAL"])));
        assert_eq!(mixed.stats.currency, "USD");
    }
}
