//! The strategy protocol, version [`PROTOCOL`]: JSON lines over the child's stdin and stdout
//! (docs/strategy-protocol.md). What runfleet sends is [`ToChild`]; what the child sends is
//! parsed into [`FromChild`] and nothing else: unknown message types, unknown fields, numbers
//! that are not decimals and orders of another instrument are protocol errors.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::broker::{BrokerPosition, Fill, OrderSide};
use crate::catalog::{ContractKind, Instrument};
use crate::feed::Candle;

/// The protocol version this runtime speaks; `hello` carries it.
pub const PROTOCOL: u32 = 1;

/// An instrument as `hello` describes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstrumentSpec {
    /// Exchange name (`BTC-PERPETUAL`).
    pub name: &'static str,
    /// `linear` or `inverse`.
    pub contract: &'static str,
    /// The asset priced.
    pub base: &'static str,
    /// The currency the price is in.
    pub quote: &'static str,
    /// Price increment.
    pub price_step: Decimal,
    /// Smallest order and order increment, in the amount unit.
    pub amount_step: Decimal,
    /// The currency PnL and fees are paid in.
    pub settlement: &'static str,
}

impl From<&'static Instrument> for InstrumentSpec {
    fn from(i: &'static Instrument) -> Self {
        Self {
            name: i.name,
            contract: match i.kind {
                ContractKind::Linear => "linear",
                ContractKind::Inverse => "inverse",
            },
            base: i.base,
            quote: i.quote,
            price_step: i.price_step,
            amount_step: i.amount_step,
            settlement: i.settlement(),
        }
    }
}

/// A message runfleet sends to the strategy.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToChild<'a> {
    /// The first message: who the strategy is and what it resumes from.
    #[serde(rename_all = "camelCase")]
    Hello {
        /// [`PROTOCOL`].
        protocol: u32,
        /// The `config.type` it runs as.
        strategy: &'a str,
        /// `config.parameters`, validated against the registered schema.
        parameters: &'a Value,
        /// The instruments it trades.
        instruments: Vec<InstrumentSpec>,
        /// Candle length name (`1m`).
        timeframe: &'a str,
        /// Candle length, ms.
        timeframe_ms: i64,
        /// The state it saved last (its latest `state`), `null` on a fresh start.
        state: &'a Value,
    },
    /// A completed candle: answer with `orders`.
    #[serde(rename_all = "camelCase")]
    Candle {
        /// Its instrument.
        instrument: &'a str,
        /// The candle.
        candle: &'a Candle,
        /// Signed position held on the instrument (negative short), from the broker.
        position: Decimal,
        /// The largest position the risk limits allow on it: the size to trade.
        order_size: Decimal,
    },
    /// An execution on the account (its own orders, risk exits, flatten).
    Fill {
        /// The fill.
        fill: &'a Fill,
    },
    /// The account's positions after fills changed them (before the next candle).
    Account {
        /// Every position on the account, as the broker reports them (a closed one may be
        /// absent or of size 0).
        positions: Vec<PositionView<'a>>,
    },
    /// The runner is stopping: no more messages follow; exit.
    Stop {
        /// `requested`, `fenced`, `shutdown`.
        reason: &'a str,
    },
}

/// A position as `account` describes it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PositionView<'a> {
    /// Instrument name.
    pub instrument: &'a str,
    /// Signed size (negative short).
    pub size: Decimal,
    /// Average entry price.
    pub entry_price: Decimal,
    /// PnL realized by partial closes, before fees.
    pub realized_pnl: Decimal,
}

impl<'a> From<&'a BrokerPosition> for PositionView<'a> {
    fn from(p: &'a BrokerPosition) -> Self {
        Self {
            instrument: &p.instrument,
            size: p.size,
            entry_price: p.entry_price,
            realized_pnl: p.realized_pnl,
        }
    }
}

/// A message the strategy sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum FromChild {
    /// Answer to `hello`.
    Ready {},
    /// Answer to a candle (possibly no order), with the state to save, optionally.
    Orders {
        /// Orders on the candle's instrument.
        orders: Vec<OrderMessage>,
        /// The state to save, replacing the previous one.
        #[serde(default)]
        state: Option<Value>,
    },
    /// The state to save, replacing the previous one.
    State {
        /// Any JSON.
        state: Value,
    },
    /// A line for the runner's logs.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
}

/// A log line's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warning.
    Warn,
    /// Error.
    Error,
}

/// One order of an `orders` message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum OrderMessage {
    /// Buy or sell `amount` (in the instrument's amount unit) at market.
    #[serde(rename_all = "camelCase")]
    Market {
        /// Must be the candle's instrument when given.
        #[serde(default)]
        instrument: Option<String>,
        /// `buy` or `sell`.
        side: OrderSide,
        /// Above zero.
        #[serde(deserialize_with = "decimal")]
        amount: Decimal,
        /// May only reduce the position.
        #[serde(default)]
        reduce_only: bool,
    },
    /// Trade at market to hold `position` (signed, negative short).
    #[serde(rename_all = "camelCase")]
    Target {
        /// Must be the candle's instrument when given.
        #[serde(default)]
        instrument: Option<String>,
        /// The position wanted.
        #[serde(deserialize_with = "decimal")]
        position: Decimal,
    },
}

/// A decimal given as a JSON string (`"0.1"`, exact) or number (read from its shortest text).
fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    use serde::de::Error;
    let text = match Value::deserialize(d)? {
        Value::String(s) => s,
        Value::Number(n) => n.to_string(),
        other => return Err(D::Error::custom(format!("expected a decimal, got {other}"))),
    };
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(&text)
    } else {
        text.parse::<Decimal>()
    };
    parsed.map_err(|e| D::Error::custom(format!("{text:?} is not a decimal: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<FromChild, serde_json::Error> {
        serde_json::from_str(line)
    }

    #[test]
    fn every_message_is_checked_field_by_field() {
        assert_eq!(parse(r#"{"type":"ready"}"#).unwrap(), FromChild::Ready {});
        let orders = parse(
            r#"{"type":"orders","orders":[{"kind":"market","side":"buy","amount":"0.25"},
                {"kind":"target","position":-1.5}],"state":{"n":1}}"#,
        )
        .unwrap();
        let FromChild::Orders { orders, state } = orders else {
            panic!("orders")
        };
        assert_eq!(state, Some(serde_json::json!({"n": 1})));
        assert_eq!(
            orders[0],
            OrderMessage::Market {
                instrument: None,
                side: OrderSide::Buy,
                amount: Decimal::new(25, 2),
                reduce_only: false
            }
        );
        assert_eq!(
            orders[1],
            OrderMessage::Target {
                instrument: None,
                position: Decimal::new(-15, 1)
            }
        );
        for bad in [
            r#"{"type":"ready","extra":1}"#,
            r#"{"type":"orders","orders":[{"kind":"market","side":"buy","amount":"x"}]}"#,
            r#"{"type":"orders","orders":[{"kind":"market","side":"up","amount":"1"}]}"#,
            r#"{"type":"orders","orders":[{"kind":"market","side":"buy","amount":"1","leverage":9}]}"#,
            r#"{"type":"orders"}"#,
            r#"{"type":"shell","cmd":"rm"}"#,
            r#"{"type":"log","level":"loud","message":"x"}"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
