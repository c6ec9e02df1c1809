//! The broker abstraction: market and limit orders, cancels, open orders, positions, closing a
//! position. The runtime trades only through [`Broker`], and reads positions back from it (the
//! broker is the source of truth, as a live exchange would be); the paper broker
//! ([`super::paper::PaperBroker`]) is the one implementation in this version.
//!
//! Methods are async because a live broker is a network round trip. The trait is used
//! generically (`Session<B: Broker>`), never as a trait object.

use std::future::Future;

use crate::catalog::Instrument;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderSide {
    /// Adds to a long or reduces a short.
    Buy,
    /// Adds to a short or reduces a long.
    Sell,
}

impl OrderSide {
    /// +1 for a buy, −1 for a sell.
    pub fn sign(self) -> Decimal {
        match self {
            OrderSide::Buy => Decimal::ONE,
            OrderSide::Sell => Decimal::NEGATIVE_ONE,
        }
    }

    /// `amount` signed by the side.
    pub fn signed(self, amount: Decimal) -> Decimal {
        self.sign() * amount
    }

    /// The side that reduces a position of signed `size` (sell for a long).
    pub fn closing(size: Decimal) -> OrderSide {
        if size > Decimal::ZERO {
            OrderSide::Sell
        } else {
            OrderSide::Buy
        }
    }
}

/// Market or limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    /// Fills at once at the current price (plus slippage on the paper broker).
    Market,
    /// Fills at `price` or better; rests until then.
    Limit {
        /// The limit price.
        price: Decimal,
    },
}

/// An order to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRequest {
    /// What to trade.
    pub instrument: &'static Instrument,
    /// Buy or sell.
    pub side: OrderSide,
    /// How much, in the instrument's amount unit; a positive multiple of its amount step.
    pub amount: Decimal,
    /// Market or limit.
    pub kind: OrderKind,
    /// May only reduce the position (it is cut to the position's size, and refused when flat).
    pub reduce_only: bool,
}

impl OrderRequest {
    /// A market order.
    pub fn market(instrument: &'static Instrument, side: OrderSide, amount: Decimal) -> Self {
        Self {
            instrument,
            side,
            amount,
            kind: OrderKind::Market,
            reduce_only: false,
        }
    }

    /// A limit order at `price`.
    pub fn limit(
        instrument: &'static Instrument,
        side: OrderSide,
        amount: Decimal,
        price: Decimal,
    ) -> Self {
        Self {
            kind: OrderKind::Limit { price },
            ..Self::market(instrument, side, amount)
        }
    }

    /// The same order, reduce-only.
    pub fn reduce_only(self) -> Self {
        Self {
            reduce_only: true,
            ..self
        }
    }
}

/// A resting limit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Broker-assigned id.
    pub id: u64,
    /// Instrument name.
    pub instrument: String,
    /// Buy or sell.
    pub side: OrderSide,
    /// Amount left to fill.
    pub amount: Decimal,
    /// Limit price.
    pub price: Decimal,
    /// Reduce-only.
    pub reduce_only: bool,
}

/// One execution, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fill {
    /// The order filled.
    pub order_id: u64,
    /// Instrument name.
    pub instrument: String,
    /// Buy or sell.
    pub side: OrderSide,
    /// Amount filled.
    pub amount: Decimal,
    /// Fill price (slippage included).
    pub price: Decimal,
    /// Fee paid, in `currency`.
    pub fee: Decimal,
    /// PnL realized by the part of the fill that reduced the position, before the fee.
    pub realized_pnl: Decimal,
    /// Signed position size before the fill.
    pub position_before: Decimal,
    /// Signed position size after the fill.
    pub position_after: Decimal,
    /// Settlement currency of `fee` and `realized_pnl`.
    pub currency: String,
}

/// What placing an order did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Filled at once.
    Filled(Fill),
    /// Resting on the book.
    Resting(Order),
}

/// A position as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPosition {
    /// Instrument name.
    pub instrument: String,
    /// Signed size (negative short).
    pub size: Decimal,
    /// Average entry price.
    pub entry_price: Decimal,
    /// PnL realized by partial closes, before fees.
    pub realized_pnl: Decimal,
}

/// Why a broker refused or failed a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// No price has been seen yet for the instrument.
    #[error("no price yet for {0}")]
    NoPrice(String),
    /// The order itself is wrong (amount, reduce-only while flat...).
    #[error("order refused: {0}")]
    Refused(String),
    /// No such open order.
    #[error("no open order {0}")]
    UnknownOrder(u64),
    /// The broker could not be reached or did not answer.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// A venue to trade on.
pub trait Broker: Send + Sync {
    /// Shows the broker a new price of `instrument` (a paper venue has no market of its own;
    /// a live one ignores this). Returns the fills of resting orders the price reached.
    fn on_price(&mut self, instrument: &'static Instrument, price: Decimal) -> Vec<Fill>;

    /// Places an order.
    fn place(
        &mut self,
        order: OrderRequest,
    ) -> impl Future<Output = Result<Placed, BrokerError>> + Send;

    /// Cancels an open order.
    fn cancel(&mut self, id: u64) -> impl Future<Output = Result<(), BrokerError>> + Send;

    /// Orders resting on the book.
    fn open_orders(&self) -> impl Future<Output = Result<Vec<Order>, BrokerError>> + Send;

    /// Open positions (flat instruments are absent).
    fn positions(&self) -> impl Future<Output = Result<Vec<BrokerPosition>, BrokerError>> + Send;

    /// Closes the whole position on `instrument` with a reduce-only market order. `None` when
    /// there was nothing to close.
    fn close_position(
        &mut self,
        instrument: &'static Instrument,
    ) -> impl Future<Output = Result<Option<Fill>, BrokerError>> + Send {
        async move {
            let size = self
                .positions()
                .await?
                .into_iter()
                .find(|p| p.instrument == instrument.name)
                .map_or(Decimal::ZERO, |p| p.size);
            if size.is_zero() {
                return Ok(None);
            }
            let order = OrderRequest::market(instrument, OrderSide::closing(size), size.abs())
                .reduce_only();
            match self.place(order).await? {
                Placed::Filled(fill) => Ok(Some(fill)),
                Placed::Resting(o) => Err(BrokerError::Refused(format!(
                    "closing market order {} rested instead of filling",
                    o.id
                ))),
            }
        }
    }

    /// The state to persist so the account can be restored on another node (`null` for a
    /// live broker, whose exchange keeps it).
    fn state(&self) -> serde_json::Value;
}
