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
    /// The asset priced (`BTC`, `EUR`).
    pub base: &'static str,
    /// The currency the price is in (`USD`).
    pub quote: &'static str,
    /// Price increment: fills happen on multiples of it.
    pub price_step: Decimal,
    /// Smallest order and order increment, in the amount unit (USD for inverse contracts).
    pub amount_step: Decimal,
    /// Where the simulated market starts.
    pub simulated_start: Decimal,
    /// The price index a replay file for this instrument is named after (`BTCUSD`).
    pub index: &'static str,
}

impl Instrument {
    /// The simulated market's starting price.
    pub fn start_price(&self) -> Decimal {
        self.simulated_start
    }

    /// The currency PnL and fees are paid in: the quote currency of a linear instrument, the
    /// base coin of an inverse one.
    pub fn settlement(&self) -> &'static str {
        match self.kind {
            ContractKind::Linear => self.quote,
            ContractKind::Inverse => self.base,
        }
    }

    /// Decimal places money is booked with in the settlement currency.
    pub fn money_decimals(&self) -> u32 {
        currency_decimals(self.settlement())
    }
}

/// Decimal places money is booked with in `currency`: cents for fiat, 1e-8 (a satoshi) for
/// coins.
pub fn currency_decimals(currency: &str) -> u32 {
    match currency {
        "USD" | "EUR" => 2,
        _ => 8,
    }
}

/// `mantissa × 10^-scale` as a constant.
const fn dec(mantissa: u32, scale: u32) -> Decimal {
    Decimal::from_parts(mantissa, 0, 0, false, scale)
}

/// Every instrument runfleet knows.
pub const INSTRUMENTS: &[Instrument] = &[
    Instrument {
        name: "BTC-PERPETUAL",
        kind: ContractKind::Inverse,
        base: "BTC",
        quote: "USD",
        price_step: dec(5, 1),
        amount_step: dec(10, 0),
        simulated_start: dec(50_000, 0),
        index: "BTCUSD",
    },
    Instrument {
        name: "ETH-PERPETUAL",
        kind: ContractKind::Inverse,
        base: "ETH",
        quote: "USD",
        price_step: dec(5, 2),
        amount_step: dec(1, 0),
        simulated_start: dec(3_000, 0),
        index: "ETHUSD",
    },
    Instrument {
        name: "BTC-USD",
        kind: ContractKind::Linear,
        base: "BTC",
        quote: "USD",
        price_step: dec(1, 2),
        amount_step: dec(1, 4),
        simulated_start: dec(50_000, 0),
        index: "BTCUSD",
    },
    Instrument {
        name: "ETH-USD",
        kind: ContractKind::Linear,
        base: "ETH",
        quote: "USD",
        price_step: dec(1, 2),
        amount_step: dec(1, 3),
        simulated_start: dec(3_000, 0),
        index: "ETHUSD",
    },
    Instrument {
        name: "EUR-USD",
        kind: ContractKind::Linear,
        base: "EUR",
        quote: "USD",
        price_step: dec(1, 5),
        amount_step: dec(1, 0),
        simulated_start: dec(108, 2),
        index: "EURUSD",
    },
];

/// Looks an instrument up by name.
pub fn instrument(name: &str) -> Option<&'static Instrument> {
    INSTRUMENTS.iter().find(|i| i.name == name)
}

/// The currency a runner trading `instruments` reports its stats in: their common settlement
/// currency, or USD when they settle in different ones (then `true`: figures are converted).
pub fn stats_currency(instruments: &[&Instrument]) -> (&'static str, bool) {
    let mut currencies: Vec<&'static str> = instruments.iter().map(|i| i.settlement()).collect();
    currencies.sort_unstable();
    currencies.dedup();
    match currencies.as_slice() {
        [one] => (one, false),
        [] => ("USD", false),
        _ => ("USD", true),
    }
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
        /// Used when absent; `None` makes the parameter required.
        default: Option<i64>,
    },
    /// One of a few strings.
    Choice {
        /// Parameter name.
        name: &'static str,
        /// Allowed values.
        options: &'static [&'static str],
        /// Used when absent; `None` makes the parameter required.
        default: Option<&'static str>,
    },
}

impl Param {
    /// The parameter's name.
    pub fn name(&self) -> &'static str {
        match self {
            Param::Int { name, .. } | Param::Choice { name, .. } => name,
        }
    }

    /// Whether a start request must give it.
    pub fn required(&self) -> bool {
        match self {
            Param::Int { default, .. } => default.is_none(),
            Param::Choice { default, .. } => default.is_none(),
        }
    }

    fn expected(&self) -> String {
        match self {
            Param::Int { min, max, .. } => format!("a whole number from {min} to {max}"),
            Param::Choice { options, .. } => format!("one of {}", options.join(", ")),
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
    /// What it trades when the start request names no instrument.
    pub default_instruments: &'static [&'static str],
    /// Only for fault tests: refused unless validation allows test strategies.
    pub test_only: bool,
}

/// Candle lengths a strategy may use, with their length in milliseconds.
pub const TIMEFRAMES: &[(&str, u64)] = &[
    ("1s", 1_000),
    ("5s", 5_000),
    ("1m", 60_000),
    ("5m", 300_000),
    ("15m", 900_000),
    ("30m", 1_800_000),
    ("1h", 3_600_000),
    ("4h", 14_400_000),
    ("1d", 86_400_000),
];

const TIMEFRAME_NAMES: &[&str] = &["1s", "5s", "1m", "5m", "15m", "30m", "1h", "4h", "1d"];

/// A timeframe's length in milliseconds.
pub fn timeframe_ms(name: &str) -> Option<u64> {
    TIMEFRAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ms)| *ms)
}

const TIMEFRAME: Param = Param::Choice {
    name: "timeframe",
    options: TIMEFRAME_NAMES,
    default: Some("1m"),
};

/// The built-in strategies (and the test-only `panic-test`).
pub const STRATEGIES: &[StrategyKind] = &[
    StrategyKind {
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
    },
    StrategyKind {
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
    },
    StrategyKind {
        name: "panic-test",
        params: &[Param::Int {
            name: "panicAfterTicks",
            min: 0,
            max: 100_000,
            default: Some(0),
        }],
        default_instruments: &["BTC-PERPETUAL"],
        test_only: true,
    },
];

/// Fills in what a start request may leave out, so that the stored job says exactly what runs:
/// `instruments` absent or empty becomes the strategy kind's default instruments, and every
/// parameter with a default that is absent gets it. `riskManagement` absent stays absent,
/// which the runtime reads as positions of at most one amount step and no stop-loss or
/// take-profit (docs/api.md). An unknown `type` is left for validation to refuse.
pub fn apply_defaults(config: &mut crate::job::StrategyConfig) {
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
        let default = match p {
            Param::Int { default, .. } => default.map(Value::from),
            Param::Choice { default, .. } => default.map(Value::from),
        };
        if let Some(d) = default {
            config.parameters.entry(p.name()).or_insert(d);
        }
    }
}

/// Looks a strategy kind up by `config.type` (test-only kinds included).
pub fn strategy(name: &str) -> Option<&'static StrategyKind> {
    STRATEGIES.iter().find(|s| s.name == name)
}

impl StrategyKind {
    /// An integer parameter's value from `params`, or its default. Assumes validated input.
    pub fn int(&self, params: &serde_json::Map<String, Value>, name: &str) -> i64 {
        let default = self.params.iter().find_map(|p| match p {
            Param::Int {
                name: n, default, ..
            } if *n == name => *default,
            _ => None,
        });
        params
            .get(name)
            .and_then(Value::as_i64)
            .or(default)
            .unwrap_or(0)
    }

    /// A choice parameter's value from `params`, or its default. Assumes validated input.
    pub fn choice<'a>(&self, params: &'a serde_json::Map<String, Value>, name: &str) -> &'a str {
        let default = self.params.iter().find_map(|p| match p {
            Param::Choice {
                name: n, default, ..
            } if *n == name => *default,
            _ => None,
        });
        params
            .get(name)
            .and_then(Value::as_str)
            .or(default)
            .unwrap_or("")
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

/// The user id the fleet-wide status is asked for (`GET /v1/users/system/runners`, admin
/// only, as the seed's `getStatus({userId: 'system'})`); no real user may have it.
pub const SYSTEM_USER: &str = "system";

/// Checks a user id: an id ([`check_id`], at most 128 characters) that is not
/// [`SYSTEM_USER`].
pub fn check_user_id(field: &str, value: &str) -> Result<(), FieldError> {
    check_id(field, value, 128)?;
    if value == SYSTEM_USER {
        return refuse(
            field,
            "`system` is reserved for the fleet-wide status and cannot be a user",
        );
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
    let ok = match p {
        Param::Int { min, max, .. } => v.as_i64().is_some_and(|n| (*min..=*max).contains(&n)),
        Param::Choice { options, .. } => v.as_str().is_some_and(|s| options.contains(&s)),
    };
    if ok {
        Ok(())
    } else {
        refuse(field, format!("must be {}", p.expected()))
    }
}

/// What validation lets through beyond the public API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ValidationOptions {
    /// Accept test-only strategy kinds (`panic-test`). Off in production: a fleet enables it
    /// only for fault tests.
    pub allow_test_strategies: bool,
}

/// Validates a start request: ids, credentials, strategy kind and parameters, instruments,
/// risk settings. Returns the first refused field. Test-only strategy kinds are refused.
pub fn validate_start(req: &StartRunnerRequest) -> Result<(), FieldError> {
    validate_start_with(req, ValidationOptions::default())
}

/// [`validate_start`], with `options` deciding whether test-only strategy kinds pass.
pub fn validate_start_with(
    req: &StartRunnerRequest,
    options: ValidationOptions,
) -> Result<(), FieldError> {
    check_user_id("userId", req.user_id.as_str())?;
    check_id("strategyId", req.strategy_id.as_str(), 128)?;
    if !BROKERS.contains(&req.broker_id.as_str()) {
        return refuse("brokerId", format!("must be one of {}", BROKERS.join(", ")));
    }
    check_text("credentials.apiKey", &req.credentials.api_key, 512)?;
    check_text("credentials.apiSecret", &req.credentials.api_secret, 512)?;
    let c = &req.config;
    check_text("config.name", &c.name, 128)?;
    let allowed = |k: &&StrategyKind| !k.test_only || options.allow_test_strategies;
    let Some(kind) = strategy(&c.kind).filter(allowed) else {
        let known: Vec<&str> = STRATEGIES.iter().filter(allowed).map(|s| s.name).collect();
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
    for p in kind.params {
        if p.required() && !c.parameters.contains_key(p.name()) {
            return refuse(
                format!("config.parameters.{}", p.name()),
                format!("missing; must be {}", p.expected()),
            );
        }
    }
    if kind.name == "sma-cross"
        && kind.int(&c.parameters, "fastPeriod") >= kind.int(&c.parameters, "slowPeriod")
    {
        return refuse("config.parameters.fastPeriod", "must be below slowPeriod");
    }
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
        assert_eq!(kind.choice(&serde_json::Map::new(), "timeframe"), "1m");
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

    #[test]
    fn instruments_know_their_settlement_currency() {
        let btc = instrument("BTC-PERPETUAL").unwrap();
        assert_eq!((btc.settlement(), btc.money_decimals()), ("BTC", 8));
        assert_eq!(btc.price_step.to_string(), "0.5");
        let eur = instrument("EUR-USD").unwrap();
        assert_eq!((eur.settlement(), eur.money_decimals()), ("USD", 2));
        assert_eq!(eur.start_price().to_string(), "1.08");
        assert_eq!(timeframe_ms("1h"), Some(3_600_000));
    }
}
