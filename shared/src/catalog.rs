//! What a runner can trade and run: the instrument catalog, the built-in strategy kinds with
//! their declared parameters, and validation of a start request against both. Validation runs
//! in the orchestrator before anything is written, so a bad request changes nothing.

use rust_decimal::Decimal;
use serde_json::Value;

use crate::job::StartRunnerRequest;

/// How an instrument's PnL is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractKind {
    /// Amount in the base asset; PnL = amount × (exit − entry), in the quote currency.
    Linear,
    /// Amount in USD (Deribit perpetuals); PnL = amount × (1/entry − 1/exit), in the base coin.
    Inverse,
}

/// A tradable instrument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instrument {
    /// Exchange name, e.g. `BTC-PERPETUAL`.
    pub name: &'static str,
    /// Linear or inverse.
    pub kind: ContractKind,
    /// Where the simulated market starts (in cents of the quote currency, exact).
    pub start_price_cents: i64,
}

impl Instrument {
    /// The simulated market's starting price.
    pub fn start_price(&self) -> Decimal {
        Decimal::new(self.start_price_cents, 2)
    }
}

/// Every instrument runfleet knows.
pub const INSTRUMENTS: &[Instrument] = &[
    Instrument {
        name: "BTC-PERPETUAL",
        kind: ContractKind::Inverse,
        start_price_cents: 5_000_000,
    },
    Instrument {
        name: "ETH-PERPETUAL",
        kind: ContractKind::Inverse,
        start_price_cents: 300_000,
    },
    Instrument {
        name: "BTC-USD",
        kind: ContractKind::Linear,
        start_price_cents: 5_000_000,
    },
    Instrument {
        name: "ETH-USD",
        kind: ContractKind::Linear,
        start_price_cents: 300_000,
    },
];

/// Looks an instrument up by name.
pub fn instrument(name: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.name == name)
}

/// Brokers a start request may name. Every one of them trades on the paper broker in this
/// version (no live exchange connector exists yet).
pub const BROKERS: &[&str] = &["paper", "deribit"];

/// A declared strategy parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// An integer in `min..=max`.
    Int {
        /// Parameter name.
        name: &'static str,
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
        /// Used when absent.
        default: i64,
    },
    /// One of a few strings.
    Choice {
        /// Parameter name.
        name: &'static str,
        /// Allowed values.
        options: &'static [&'static str],
        /// Used when absent.
        default: &'static str,
    },
}

impl Param {
    /// The parameter's name.
    pub fn name(&self) -> &'static str {
        match self {
            Param::Int { name, .. } | Param::Choice { name, .. } => name,
        }
    }
}

/// A built-in strategy and the parameters it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrategyKind {
    /// The `config.type` that selects it.
    pub name: &'static str,
    /// Its parameters.
    pub params: &'static [Param],
}

const TIMEFRAMES: &[&str] = &["1s", "5s", "1m", "5m", "15m", "1h"];

/// The built-in strategies.
pub const STRATEGIES: &[StrategyKind] = &[StrategyKind {
    name: "scalping",
    params: &[
        Param::Int {
            name: "rsiPeriod",
            min: 2,
            max: 100,
            default: 14,
        },
        Param::Choice {
            name: "timeframe",
            options: TIMEFRAMES,
            default: "1m",
        },
    ],
}];

/// Looks a strategy kind up by `config.type`.
pub fn strategy(name: &str) -> Option<&'static StrategyKind> {
    STRATEGIES.iter().find(|s| s.name == name)
}

impl StrategyKind {
    /// An integer parameter's value from `params`, or its default. Assumes validated input.
    pub fn int(&self, params: &serde_json::Map<String, Value>, name: &str) -> i64 {
        let default = self.params.iter().find_map(|p| match p {
            Param::Int {
                name: n, default, ..
            } if *n == name => Some(*default),
            _ => None,
        });
        params
            .get(name)
            .and_then(Value::as_i64)
            .or(default)
            .unwrap_or(0)
    }
}

/// A refused field: the JSON path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path, e.g. `config.parameters.rsiPeriod`.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
}

fn refuse<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field: field.into(),
        message: message.into(),
    })
}

/// Checks an identifier-like string: 1..=max chars of `A-Z a-z 0-9 . _ : @ -`.
pub fn check_id(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > max {
        return refuse(field, format!("must be 1 to {max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._:@-".contains(c))
    {
        return refuse(field, "may contain only letters, digits and . _ : @ -");
    }
    Ok(())
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() || value.chars().count() > max {
        return refuse(field, format!("must be 1 to {max} characters"));
    }
    Ok(())
}

fn check_param(p: &Param, v: &Value) -> Result<(), FieldError> {
    let field = format!("config.parameters.{}", p.name());
    match p {
        Param::Int { min, max, .. } => match v.as_i64() {
            Some(n) if (*min..=*max).contains(&n) => Ok(()),
            _ => refuse(field, format!("must be a whole number from {min} to {max}")),
        },
        Param::Choice { options, .. } => match v.as_str() {
            Some(s) if options.contains(&s) => Ok(()),
            _ => refuse(field, format!("must be one of {}", options.join(", "))),
        },
    }
}

/// Validates a start request: ids, credentials, strategy kind and parameters, risk settings,
/// instruments. Returns the first refused field.
pub fn validate_start(req: &StartRunnerRequest) -> Result<(), FieldError> {
    check_id("userId", req.user_id.as_str(), 128)?;
    check_id("strategyId", req.strategy_id.as_str(), 128)?;
    if !BROKERS.contains(&req.broker_id.as_str()) {
        return refuse("brokerId", format!("must be one of {}", BROKERS.join(", ")));
    }
    check_text("credentials.apiKey", &req.credentials.api_key, 512)?;
    check_text("credentials.apiSecret", &req.credentials.api_secret, 512)?;
    let c = &req.config;
    check_text("config.name", &c.name, 128)?;
    let Some(kind) = strategy(&c.kind) else {
        let known: Vec<&str> = STRATEGIES.iter().map(|s| s.name).collect();
        return refuse(
            "config.type",
            format!("unknown strategy type; known: {}", known.join(", ")),
        );
    };
    for (name, value) in &c.parameters {
        match kind.params.iter().find(|p| p.name() == name) {
            Some(p) => check_param(p, value)?,
            None => {
                return refuse(
                    format!("config.parameters.{name}"),
                    "unknown parameter for this strategy type",
                );
            }
        }
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
    if c.instruments.is_empty() || c.instruments.len() > 10 {
        return refuse("config.instruments", "must list 1 to 10 instruments");
    }
    for (i, name) in c.instruments.iter().enumerate() {
        if instrument(name).is_none() {
            let known: Vec<&str> = INSTRUMENTS.iter().map(|i| i.name).collect();
            return refuse(
                format!("config.instruments[{i}]"),
                format!("unknown instrument; known: {}", known.join(", ")),
            );
        }
        if c.instruments[..i].contains(name) {
            return refuse(format!("config.instruments[{i}]"), "listed twice");
        }
    }
    Ok(())
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
        assert_eq!(kind.int(&serde_json::Map::new(), "rsiPeriod"), 14);
    }
}
