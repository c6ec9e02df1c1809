//! The job model: what a client sends to start a runner, what the fleet stores about it, and
//! what the status call reports (positions and stats).
//!
//! Field names follow the API's camelCase JSON. Credentials never appear in a [`JobRecord`]:
//! they travel sealed (see [`crate::crypto`]) inside the [`JobSpec`] and are opened only on the
//! worker node that runs the job.

use std::fmt;

use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crypto::{CredentialCipher, CryptoError, SealedCredentials};
use crate::ids::{BrokerId, JobId, NodeId, StrategyId, UserId};

/// Body of a start request (`POST /v1/runners`). Unknown fields are refused at every level.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"userId": "user-123", "strategyId": "scalping-btc", "brokerId": "deribit",
    "credentials": {"apiKey": "key", "apiSecret": "secret"},
    "config": {"name": "BTC Scalping", "type": "scalping", "parameters": {"timeframe": "1m", "rsiPeriod": 14},
        "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
        "instruments": ["BTC-PERPETUAL"]}})))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRunnerRequest {
    /// Whose runner this is.
    pub user_id: UserId,
    /// The user's name for the strategy.
    pub strategy_id: StrategyId,
    /// The broker to trade on (`deribit`, `paper`, ...).
    // The catalog's enum, which the orchestrator's document adds (shared does not know it).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::broker))]
    pub broker_id: BrokerId,
    /// Exchange credentials for the runner; sealed before they are stored.
    pub credentials: Credentials,
    /// What to run and how.
    // One variant per catalog strategy, which the orchestrator's document adds.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::strategy_config))]
    pub config: StrategyConfig,
}

/// Exchange credentials; sealed before they are stored, never returned.
// `Debug` never prints the secret values.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Credentials {
    /// Exchange API key: 1 to 512 characters, not all blank.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::credential))]
    pub api_key: String,
    /// Exchange API secret: 1 to 512 characters, not all blank.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::credential))]
    pub api_secret: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("api_key", &"<redacted>")
            .field("api_secret", &"<redacted>")
            .finish()
    }
}

/// A strategy's configuration, as sent by the client.
// Its OpenAPI schema is the configuration as admitted, in answers (`StrategyConfigView`); the
// start request's is the catalog's, one variant per strategy, which the orchestrator writes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = StrategyConfigView))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrategyConfig {
    /// Display name.
    pub name: String,
    /// Strategy kind (`scalping`, ...): selects the built-in strategy.
    #[serde(rename = "type")]
    pub kind: String,
    /// Strategy-specific parameters (`timeframe`, `rsiPeriod`, ...).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Limits enforced by the runtime, whatever the strategy does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk_management: Option<RiskManagement>,
    /// Instruments the strategy trades (`BTC-PERPETUAL`, ...).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub instruments: Vec<String>,
}

/// Limits the runtime enforces whatever the strategy does. JSON numbers. Optional (`null` =
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RiskManagement {
    /// Largest position in the instrument's amount unit: at most 1e9, and at least the
    /// smallest order of every listed instrument (docs/trading.md, "Instruments").
    #[serde(with = "rust_decimal::serde::float")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64, minimum = 0.0001, maximum = 1000000000))]
    #[schemars(with = "f64")]
    pub max_position_size: Decimal,
    /// Close a position when its loss reaches this percentage of its entry value. Above 0, at
    /// most 100. Read as a decimal of at most 28 places: below 1e-28 is 0.
    #[serde(with = "rust_decimal::serde::float")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64, minimum = 1e-28, maximum = 100))]
    #[schemars(with = "f64")]
    pub stop_loss_percent: Decimal,
    /// Close a position when its gain reaches this percentage of its entry value. Above 0, at
    /// most 1000. Read as a decimal of at most 28 places: below 1e-28 is 0.
    #[serde(with = "rust_decimal::serde::float")]
    #[cfg_attr(feature = "openapi", schema(value_type = f64, minimum = 1e-28, maximum = 1000))]
    #[schemars(with = "f64")]
    pub take_profit_percent: Decimal,
}

/// Everything a worker node needs to run a job. Stored with the job and never returned by the
/// API (it holds the sealed credentials).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// The job's id.
    pub id: JobId,
    /// Whose job.
    pub user_id: UserId,
    /// The user's strategy name.
    pub strategy_id: StrategyId,
    /// The broker.
    pub broker_id: BrokerId,
    /// The strategy configuration.
    pub config: StrategyConfig,
    /// Credentials, sealed with the fleet's credentials key.
    pub credentials: SealedCredentials,
}

impl JobSpec {
    /// The spec of job `id` running `req`, its credentials sealed with `cipher` (bound to the
    /// id).
    pub fn sealed(
        id: JobId,
        req: StartRunnerRequest,
        cipher: &CredentialCipher,
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            credentials: cipher.seal(&id, &req.credentials)?,
            id,
            user_id: req.user_id,
            strategy_id: req.strategy_id,
            broker_id: req.broker_id,
            config: req.config,
        })
    }

    /// The JSON Schema of a job spec (draft 2020-12), as committed in
    /// `docs/job-spec.schema.json`: the shape any Redis client must store as a job's `spec`
    /// (docs/redis-schema.md). Pretty-printed, ending with a newline.
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(JobSpec);
        let mut text =
            serde_json::to_string_pretty(&schema).expect("a JSON Schema serializes to JSON");
        text.push('\n');
        text
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Admitted and waiting for a worker node.
    Queued,
    /// Leased to a worker node and running.
    Running,
    /// Stopped on request. Final.
    Stopped,
    /// Ended with an error, or ran out of restarts. Final.
    Failed,
    /// Its runner went silent or died; it may be restarted.
    Crashed,
}

impl JobStatus {
    /// The status' name as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Stopped => "stopped",
            JobStatus::Failed => "failed",
            JobStatus::Crashed => "crashed",
        }
    }

    /// Whether the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Stopped | JobStatus::Failed)
    }

    /// Parses a stored status name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Stopped,
            JobStatus::Failed,
            JobStatus::Crashed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to open positions when a runner stops: `flatten` closes every position at
/// market and confirms flat; `hold` leaves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum StopMode {
    /// Cancel open orders and close every position at market, then confirm flat.
    #[default]
    Flatten,
    /// Leave positions as they are.
    Hold,
}

impl StopMode {
    /// The mode's name as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Flatten => "flatten",
            StopMode::Hold => "hold",
        }
    }
}

/// Direction of a position.
#[derive(Debug, Clone, Copy, PartialEq, Hash, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Profits when the price rises.
    #[default]
    Long,
    /// Profits when the price falls.
    Short,
}

/// An open position as reported by a runner. Money fields are exact decimal strings (see
/// [`decimal`]); PnL is in the instrument's settlement currency (`currency`).
// Every field is `required` in its schema: `default` only lets old records load; every
// answer carries them all.
#[derive(Debug, Clone, PartialEq, Hash, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Position {
    /// The instrument.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub instrument_name: String,
    /// Long or short.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub side: Side,
    /// Size, in the instrument's amount unit (USD for inverse perpetuals).
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub amount: Decimal,
    /// Average entry price (arithmetic for linear instruments, harmonic for inverse ones).
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub entry_price: Decimal,
    /// The price the position is marked at: the latest price of the market feed.
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub mark_price: Decimal,
    /// PnL if closed at `markPrice`, before fees, in the settlement currency.
    #[serde(rename = "unrealizedPnL", with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub unrealized_pnl: Decimal,
    /// PnL already realized by partial closes of this position, before fees.
    #[serde(rename = "realizedPnL", with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub realized_pnl: Decimal,
    /// The settlement currency of the PnL fields (`BTC` for BTC-PERPETUAL, `USD` for EUR-USD).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub currency: String,
}

/// A runner's trading statistics. See docs/trading.md for the definitions. Money fields are
/// exact decimal strings in `currency`.
#[derive(Debug, Clone, PartialEq, Hash, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    /// Closed trades (a trade is a position's life from flat back to flat, or to a flip).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub total_trades: u64,
    /// Closed trades whose PnL net of fees is above zero.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub winning_trades: u64,
    /// Closed trades whose PnL net of fees is below zero. A trade of exactly zero is neither.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub losing_trades: u64,
    /// Sum of the closed trades' PnL, net of their fees.
    #[serde(rename = "totalPnL", with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub total_pnl: Decimal,
    /// Winning trades as a percentage of closed trades, 2 decimals (0 when none).
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub win_rate: Decimal,
    /// Fees paid on every fill so far, open positions' included.
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub fees: Decimal,
    /// Largest fall of cumulative closed-trade PnL from its running peak (0 or positive).
    #[serde(with = "decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money, required = true))]
    pub max_drawdown: Decimal,
    /// Sum of winning trades' PnL over the absolute sum of losing trades' PnL, 4 decimals;
    /// `null` when there is no losing trade.
    #[serde(with = "decimal::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Money>, required = true))]
    pub profit_factor: Option<Decimal>,
    /// The currency of the money fields: the instruments' common settlement currency, or `USD`
    /// when they settle in different currencies (each figure converted at its fill's price).
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub currency: String,
}

/// Exact JSON for money: a [`Decimal`] is written as a string in plain decimal notation
/// (`"-0.00002281"`, never `-2.281e-05`), trailing zeros removed. Reading accepts a string or a
/// JSON number, so records written as numbers by older versions still load.
///
/// Why strings: serde_json holds a number without its `arbitrary_precision` feature as an
/// `f64`, and the API builds its answers through `serde_json::Value`, so a number would be
/// rounded through binary floating point and printed in exponent notation. The feature would
/// keep numbers exact, but it unifies across the workspace and breaks deserializing numbers
/// inside internally tagged enums (the store's `NodeCommand`) and `#[serde(flatten)]` structs.
/// docs/trading.md has the details.
pub mod decimal {
    use std::fmt;
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde::{Deserializer, Serializer, de};

    /// Writes `value` as a plain decimal string.
    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&value.normalize())
    }

    /// Reads a decimal from a string or a JSON number.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        d.deserialize_any(DecimalVisitor)
    }

    /// Parses a decimal in plain or scientific notation.
    pub fn parse(text: &str) -> Option<Decimal> {
        let text = text.trim();
        Decimal::from_str(text)
            .ok()
            .or_else(|| Decimal::from_scientific(text).ok())
    }

    struct DecimalVisitor;

    impl de::Visitor<'_> for DecimalVisitor {
        type Value = Decimal;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal number or a string holding one")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            // The shortest text that reads back as `v`: what the writer of the number meant.
            parse(&v.to_string()).ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }

    /// The same for `Option<Decimal>`, `null` for `None`.
    pub mod option {
        use rust_decimal::Decimal;
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some` as a plain decimal string, `None` as `null`.
        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads `null`, a string or a number.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            #[derive(serde::Deserialize)]
            struct Wrap(#[serde(with = "super")] Decimal);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Everything the fleet knows about a job, as the status call reports it. Holds no secrets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// The job's id; also reported as `workerId`.
    pub job_id: JobId,
    /// Whose job.
    pub user_id: UserId,
    /// The user's strategy name.
    pub strategy_id: StrategyId,
    /// The broker.
    pub broker_id: BrokerId,
    /// The strategy configuration (no credentials).
    pub config: StrategyConfig,
    /// Current status.
    pub status: JobStatus,
    /// The node running it, while it runs (and the last one, after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    /// Fencing token: incremented on every claim.
    pub epoch: u64,
    /// How many times it was restarted after a crash.
    pub restarts: u32,
    /// When it was admitted (ms since the Unix epoch, store clock).
    pub created_at: u64,
    /// When its current run started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// The last heartbeat the store accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<u64>,
    /// Why it failed or crashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The stop mode requested, once a stop was requested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_mode: Option<StopMode>,
    /// How many positions the stop closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flattened_positions: Option<u32>,
    /// Open positions as of the last heartbeat (or at the end).
    pub positions: Vec<Position>,
    /// Statistics as of the last heartbeat (or at the end).
    pub stats: Stats,
}

impl JobRecord {
    /// A freshly admitted job's record. Its stats before the first report are what the
    /// job's runner kind says a runner shows before it starts (empty stats in the currency
    /// its trades will be counted in), through the process' installed
    /// [`Kinds`](crate::kind::Kinds); empty stats when none is installed.
    pub fn queued(spec: &JobSpec, now_ms: u64) -> Self {
        let stats = crate::kind::Kinds::installed()
            .map(|k| k.before_start(spec).stats)
            .unwrap_or_default();
        Self {
            config: spec.config.clone(),
            broker_id: spec.broker_id.clone(),
            stats,
            ..Self::unreadable(
                spec.id.clone(),
                spec.user_id.clone(),
                spec.strategy_id.clone(),
                now_ms,
            )
        }
    }

    /// The record of a job whose stored spec cannot be read: what the store knows besides it,
    /// with an empty configuration.
    pub fn unreadable(
        job_id: JobId,
        user_id: UserId,
        strategy_id: StrategyId,
        created_at: u64,
    ) -> Self {
        Self {
            job_id,
            user_id,
            strategy_id,
            broker_id: BrokerId::new(""),
            config: StrategyConfig {
                name: String::new(),
                kind: String::new(),
                parameters: serde_json::Map::new(),
                risk_management: None,
                instruments: Vec::new(),
            },
            status: JobStatus::Queued,
            node_id: None,
            epoch: 0,
            restarts: 0,
            created_at,
            started_at: None,
            ended_at: None,
            last_heartbeat_at: None,
            error: None,
            stop_mode: None,
            flattened_positions: None,
            positions: Vec::new(),
            stats: Stats::default(),
        }
    }
}

/// A job leased to a worker node: the spec to run, and the fencing epoch its writes must carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// What to run.
    pub spec: JobSpec,
    /// The claim's fencing token.
    pub epoch: u64,
    /// The saved state the job's previous run left (its runner kind's
    /// [`Report::state`](crate::kind::Report::state)), to resume from.
    pub account: Option<crate::kind::SavedState>,
    /// From the job's admission to this claim, on the store's clock (ms): its start-to-running
    /// latency on a first claim.
    pub since_created_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_request_parses_the_seed_example() {
        let body = serde_json::json!({
            "userId": "user-123",
            "strategyId": "scalping-btc",
            "brokerId": "deribit",
            "credentials": {"apiKey": "key", "apiSecret": "secret"},
            "config": {
                "name": "BTC Scalping",
                "type": "scalping",
                "parameters": {"timeframe": "1m", "rsiPeriod": 14},
                "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
                "instruments": ["BTC-PERPETUAL"]
            }
        });
        let req: StartRunnerRequest = serde_json::from_value(body).unwrap();
        assert_eq!(req.config.kind, "scalping");
        let risk = req.config.risk_management.unwrap();
        assert_eq!(risk.max_position_size, Decimal::from(100));
        assert_eq!(risk.stop_loss_percent, Decimal::from(2));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let body = serde_json::json!({
            "userId": "u", "strategyId": "s", "brokerId": "b",
            "credentials": {"apiKey": "k", "apiSecret": "s"},
            "config": {"name": "n", "type": "scalping"},
            "extra": 1
        });
        let err = serde_json::from_value::<StartRunnerRequest>(body).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let c = Credentials {
            api_key: "AKIA-visible?".into(),
            api_secret: "s3cr3t".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t") && !shown.contains("AKIA"));
    }

    #[test]
    fn positions_serialize_with_the_seed_field_names() {
        let p = Position {
            instrument_name: "BTC-PERPETUAL".into(),
            side: Side::Long,
            amount: Decimal::from(100),
            entry_price: Decimal::new(5_000_000, 2),
            mark_price: Decimal::from(50_100),
            unrealized_pnl: Decimal::new(-2281, 8),
            realized_pnl: Decimal::ZERO,
            currency: "BTC".into(),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["instrumentName"], "BTC-PERPETUAL");
        assert_eq!(v["side"], "long");
        assert_eq!(v["amount"], "100");
        assert_eq!(v["entryPrice"], "50000");
        assert_eq!(v["unrealizedPnL"], "-0.00002281", "exact, no exponent");
        assert_eq!(v["realizedPnL"], "0");
        // Through `json!` and back, as the API and the store do.
        let back: Position =
            serde_json::from_value(serde_json::json!({ "p": v })["p"].clone()).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn money_reads_numbers_and_strings_and_old_records() {
        let old = serde_json::json!({"totalTrades": 3, "winningTrades": 2, "losingTrades": 1,
            "totalPnL": -2.281e-05, "winRate": 66.67});
        let s: Stats = serde_json::from_value(old).unwrap();
        assert_eq!(s.total_pnl, Decimal::new(-2281, 8));
        assert_eq!(s.win_rate, Decimal::new(6667, 2));
        assert_eq!(s.profit_factor, None);
        let s: Stats = serde_json::from_str(
            r#"{"totalPnL": "12345678901234.123456789012", "profitFactor": "1.5", "fees": 0.1}"#,
        )
        .unwrap();
        assert_eq!(s.total_pnl.to_string(), "12345678901234.123456789012");
        assert_eq!(s.profit_factor, Some(Decimal::new(15, 1)));
        assert_eq!(s.fees, Decimal::new(1, 1));
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""totalPnL":"12345678901234.123456789012""#),
            "{json}"
        );
        assert!(json.contains(r#""profitFactor":"1.5""#), "{json}");
        assert!(serde_json::from_str::<Stats>(r#"{"fees": "ten"}"#).is_err());
    }
}
