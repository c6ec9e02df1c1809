//! The trading kind's checks of a start request's `config`: the strategy's declared parameters
//! (and the checks between them), the instruments, the risk settings. The fleet checks the
//! envelope (ids, broker, credentials, display name) and the `config.type` first
//! ([`runfleet_shared::kind::Kinds::validate`]); together they name the first refused field, before
//! anything is written.

use runfleet_shared::job::{StartRunnerRequest, StrategyConfig};
use runfleet_shared::kind::Kinds;
use runfleet_shared::validate::{FieldError, ValidationOptions, refuse};
use rust_decimal::Decimal;

use crate::catalog::{INSTRUMENTS, instrument};
use crate::external::ExternalDefinition;
use crate::strategy::params::TIMEFRAME;
use crate::strategy::{StrategyKind, strategy};

/// Fills in what a start request may leave out, so that the stored job says exactly what runs:
/// `instruments` absent or empty becomes the strategy's default instruments, and every
/// parameter with a default that is absent gets it. `riskManagement` absent stays absent,
/// which the runtime reads as positions of at most one amount step and no stop-loss or
/// take-profit (docs/api.md). An unknown `type` is left for validation to refuse.
pub fn apply_defaults(config: &mut StrategyConfig) {
    let Some(kind) = strategy(&config.kind) else {
        return;
    };
    if config.instruments.is_empty() {
        config.instruments = kind
            .default_instruments
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    for p in kind.params {
        if let Some(d) = p.default() {
            config.parameters.entry(p.name()).or_insert(d);
        }
    }
}

/// [`apply_defaults`] for an external strategy: its registered default instruments and the
/// defaults its parameter schema declares.
pub fn apply_external_defaults(def: &ExternalDefinition, config: &mut StrategyConfig) {
    if config.instruments.is_empty() {
        config.instruments = def.settings.default_instruments.clone();
    }
    def.apply_defaults(&mut config.parameters);
}

/// Checks `config` of a request whose `config.type` selects the external strategy `def`: its
/// parameters against the registered JSON Schema, a `timeframe` parameter against the
/// catalog's, then the instruments and risk settings as for a built-in strategy.
pub fn check_external_config(
    def: &ExternalDefinition,
    req: &StartRunnerRequest,
) -> Result<(), FieldError> {
    let c = &req.config;
    def.check_parameters(&c.parameters)?;
    if let Some(tf) = c.parameters.get("timeframe") {
        TIMEFRAME.check(tf)?;
    }
    check_market(req)
}

/// Checks `config` of a request whose `config.type` selects `kind`.
pub fn check_config(kind: &StrategyKind, req: &StartRunnerRequest) -> Result<(), FieldError> {
    let c = &req.config;
    for (name, value) in &c.parameters {
        match kind.params.iter().find(|p| p.name() == name) {
            Some(p) => p.check(value)?,
            None => {
                return refuse(
                    format!("config.parameters.{name}"),
                    "unknown parameter for this strategy type",
                );
            }
        }
    }
    for p in kind.params {
        p.check_present(&c.parameters)?;
    }
    (kind.check)(&kind.params(&c.parameters))?;
    check_market(req)
}

/// The instruments and risk settings of `config`, whatever the strategy.
fn check_market(req: &StartRunnerRequest) -> Result<(), FieldError> {
    let c = &req.config;
    if c.instruments.is_empty() || c.instruments.len() > 10 {
        return refuse("config.instruments", "must list 1 to 10 instruments");
    }
    let mut instruments = Vec::with_capacity(c.instruments.len());
    for (i, name) in c.instruments.iter().enumerate() {
        let Some(found) = instrument(name) else {
            let known: Vec<&str> = INSTRUMENTS.iter().map(|i| i.name).collect();
            return refuse(
                format!("config.instruments[{i}]"),
                format!("unknown instrument; known: {}", known.join(", ")),
            );
        };
        if c.instruments[..i].contains(name) {
            return refuse(format!("config.instruments[{i}]"), "listed twice");
        }
        instruments.push(found);
    }
    if let Some(r) = &c.risk_management {
        let hundred = Decimal::from(100);
        if r.max_position_size <= Decimal::ZERO
            || r.max_position_size > Decimal::from(1_000_000_000)
        {
            return refuse(
                "config.riskManagement.maxPositionSize",
                "must be above 0 and at most 1e9",
            );
        }
        if let Some(i) = instruments
            .iter()
            .find(|i| r.max_position_size < i.amount_step)
        {
            return refuse(
                "config.riskManagement.maxPositionSize",
                format!(
                    "must be at least the smallest order of {} ({})",
                    i.name, i.amount_step
                ),
            );
        }
        if r.stop_loss_percent <= Decimal::ZERO || r.stop_loss_percent > hundred {
            return refuse(
                "config.riskManagement.stopLossPercent",
                "must be above 0 and at most 100",
            );
        }
        if r.take_profit_percent <= Decimal::ZERO || r.take_profit_percent > Decimal::from(1_000) {
            return refuse(
                "config.riskManagement.takeProfitPercent",
                "must be above 0 and at most 1000",
            );
        }
    }
    Ok(())
}

/// Validates a whole start request as an orchestrator with only the trading kind does (test
/// strategies refused), without filling in defaults.
pub fn validate_start(req: &StartRunnerRequest) -> Result<(), FieldError> {
    validate_start_with(req, ValidationOptions::default())
}

/// [`validate_start`], with `options` deciding whether test-only strategies pass.
pub fn validate_start_with(
    req: &StartRunnerRequest,
    options: ValidationOptions,
) -> Result<(), FieldError> {
    Kinds::new()
        .with(crate::TradingKind::for_validation(options))
        .validate(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(f: impl FnOnce(&mut serde_json::Value)) -> StartRunnerRequest {
        let mut v = serde_json::json!({
            "userId": "user-123", "strategyId": "scalping-btc", "brokerId": "deribit",
            "credentials": {"apiKey": "key", "apiSecret": "secret"},
            "config": {
                "name": "BTC Scalping", "type": "scalping",
                "parameters": {"timeframe": "1m", "rsiPeriod": 14},
                "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
                "instruments": ["BTC-PERPETUAL"]
            }
        });
        f(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn field(f: impl FnOnce(&mut serde_json::Value)) -> String {
        validate_start(&request(f)).unwrap_err().field
    }

    #[test]
    fn the_seed_example_is_valid() {
        validate_start(&request(|_| {})).unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field(|v| v["userId"] = "".into()), "userId");
        assert_eq!(field(|v| v["userId"] = "a b".into()), "userId");
        assert_eq!(field(|v| v["brokerId"] = "nyse".into()), "brokerId");
        assert_eq!(
            field(|v| v["credentials"]["apiSecret"] = "".into()),
            "credentials.apiSecret"
        );
        assert_eq!(
            field(|v| v["config"]["type"] = "martingale".into()),
            "config.type"
        );
        assert_eq!(
            field(|v| v["config"]["parameters"]["rsiPeriod"] = 1.into()),
            "config.parameters.rsiPeriod"
        );
        assert_eq!(
            field(|v| v["config"]["parameters"]["rsiPeriod"] = "14".into()),
            "config.parameters.rsiPeriod"
        );
        assert_eq!(
            field(|v| v["config"]["parameters"]["timeframe"] = "2m".into()),
            "config.parameters.timeframe"
        );
        assert_eq!(
            field(|v| v["config"]["parameters"]["bogus"] = 1.into()),
            "config.parameters.bogus"
        );
        assert_eq!(
            field(|v| v["config"]["riskManagement"]["stopLossPercent"] = 0.into()),
            "config.riskManagement.stopLossPercent"
        );
        assert_eq!(
            field(|v| v["config"]["riskManagement"]["maxPositionSize"] = (-5).into()),
            "config.riskManagement.maxPositionSize"
        );
        assert_eq!(
            field(|v| v["config"]["instruments"] = serde_json::json!([])),
            "config.instruments"
        );
        assert_eq!(
            field(|v| v["config"]["instruments"] = serde_json::json!(["DOGE"])),
            "config.instruments[0]"
        );
        assert_eq!(
            field(|v| v["config"]["instruments"] = serde_json::json!(["BTC-USD", "BTC-USD"])),
            "config.instruments[1]"
        );
    }

    #[test]
    fn parameters_fall_back_to_their_defaults() {
        let kind = strategy("scalping").unwrap();
        let none = serde_json::Map::new();
        assert_eq!(kind.params(&none).int("rsiPeriod"), 14);
        assert_eq!(kind.params(&none).choice("timeframe"), "1m");
        // The seed's minimal config (no parameters, no risk settings) is valid.
        validate_start(&request(|v| {
            v["config"] = serde_json::json!({"name": "Test", "type": "scalping",
                "instruments": ["BTC-PERPETUAL"]});
        }))
        .unwrap();
    }

    fn sma(v: &mut serde_json::Value) {
        v["config"]["type"] = "sma-cross".into();
        v["config"]["parameters"] = serde_json::json!({"fastPeriod": 5, "slowPeriod": 20});
    }

    #[test]
    fn sma_cross_needs_both_periods_in_order() {
        validate_start(&request(sma)).unwrap();
        let missing = validate_start(&request(|v| {
            sma(v);
            v["config"]["parameters"] = serde_json::json!({"fastPeriod": 5});
        }))
        .unwrap_err();
        assert_eq!(missing.field, "config.parameters.slowPeriod");
        assert!(
            missing.message.starts_with("missing"),
            "{}",
            missing.message
        );
        assert_eq!(
            field(|v| {
                sma(v);
                v["config"]["parameters"]["fastPeriod"] = 20.into();
            }),
            "config.parameters.fastPeriod"
        );
        assert_eq!(
            field(|v| {
                sma(v);
                v["config"]["parameters"]["slowPeriod"] = 501.into();
            }),
            "config.parameters.slowPeriod"
        );
        assert_eq!(
            field(|v| {
                sma(v);
                v["config"]["parameters"]["rsiPeriod"] = 14.into();
            }),
            "config.parameters.rsiPeriod"
        );
    }

    #[test]
    fn risk_settings_are_checked_against_the_instruments() {
        let e = validate_start(&request(|v| {
            v["config"]["riskManagement"]["maxPositionSize"] = 5.into();
        }))
        .unwrap_err();
        assert_eq!(e.field, "config.riskManagement.maxPositionSize");
        assert!(e.message.contains("BTC-PERPETUAL (10)"), "{}", e.message);
        validate_start(&request(|v| {
            v["config"]["riskManagement"]["maxPositionSize"] = 5.into();
            v["config"]["instruments"] = serde_json::json!(["EUR-USD"]);
        }))
        .unwrap();
        assert_eq!(
            field(|v| v["config"]["riskManagement"]["takeProfitPercent"] = 1001.into()),
            "config.riskManagement.takeProfitPercent"
        );
        assert_eq!(
            field(|v| v["config"]["riskManagement"]["stopLossPercent"] = 100.5.into()),
            "config.riskManagement.stopLossPercent"
        );
    }

    #[test]
    fn test_strategies_are_refused_unless_allowed() {
        let panic_test = |v: &mut serde_json::Value| {
            v["config"]["type"] = "panic-test".into();
            v["config"]["parameters"] = serde_json::json!({"panicAfterTicks": 10});
        };
        let e = validate_start(&request(panic_test)).unwrap_err();
        assert_eq!(e.field, "config.type");
        assert!(
            !e.message.contains("panic-test"),
            "not advertised: {}",
            e.message
        );
        let allow = ValidationOptions {
            allow_test_strategies: true,
        };
        validate_start_with(&request(panic_test), allow).unwrap();
        let e = validate_start_with(
            &request(|v| {
                panic_test(v);
                v["config"]["parameters"]["panicAfterTicks"] = 100_001.into();
            }),
            allow,
        )
        .unwrap_err();
        assert_eq!(e.field, "config.parameters.panicAfterTicks");
    }
}
