//! The paper broker: fills orders against the prices the feed shows it, on a
//! [`PaperAccount`]. Market orders fill at the current price moved against the trader by the
//! configured slippage and rounded to the instrument's price step away from the trader; limit
//! orders fill at their limit once the price reaches it (at once, like a market order but
//! never worse than the limit, when they are marketable). Every fill pays the configured fee.

use std::collections::BTreeMap;

use crate::catalog::Instrument;
use runfleet_shared::config::MarketSettings;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::{self, PaperAccount};
use super::broker::{
    Broker, BrokerError, BrokerPosition, Fill, Order, OrderKind, OrderRequest, OrderSide, Placed,
};

/// How the paper broker fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillModel {
    /// Fee of every fill, in basis points of its notional.
    pub fee_bps: Decimal,
    /// Adverse slippage of every market order, in basis points of the price.
    pub slippage_bps: Decimal,
}

impl FillModel {
    /// The fill model of the market settings.
    pub fn from_settings(market: &MarketSettings) -> Self {
        Self {
            fee_bps: market.fee_bps,
            slippage_bps: market.slippage_bps,
        }
    }

    /// The price a market order on `side` fills at when the market is at `price`: moved by the
    /// slippage against the trader, then rounded to the price step away from the trader (up
    /// for a buy, down for a sell).
    pub fn market_price(
        &self,
        instrument: &Instrument,
        side: OrderSide,
        price: Decimal,
    ) -> Decimal {
        let slipped =
            price * (Decimal::ONE + side.sign() * self.slippage_bps / Decimal::from(10_000));
        let steps = slipped / instrument.price_step;
        let steps = match side {
            OrderSide::Buy => steps.ceil(),
            OrderSide::Sell => steps.floor(),
        };
        (steps * instrument.price_step).normalize()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaperState {
    account: PaperAccount,
    prices: BTreeMap<String, Decimal>,
}

/// A broker that trades on a paper account.
#[derive(Debug, Clone)]
pub struct PaperBroker {
    model: FillModel,
    state: PaperState,
}

impl PaperBroker {
    /// An empty account.
    pub fn new(model: FillModel) -> Self {
        Self {
            model,
            state: PaperState::default(),
        }
    }

    /// The account saved by [`Broker::state`].
    pub fn restore(model: FillModel, state: &serde_json::Value) -> Result<Self, serde_json::Error> {
        Ok(Self {
            model,
            state: PaperState::deserialize(state)?,
        })
    }

    /// The account.
    pub fn account(&self) -> &PaperAccount {
        &self.state.account
    }

    /// The fill model.
    pub fn model(&self) -> FillModel {
        self.model
    }

    /// The latest price of `instrument`.
    pub fn price(&self, instrument: &str) -> Option<Decimal> {
        self.state.prices.get(instrument).copied()
    }

    fn check(&self, order: &OrderRequest) -> Result<Decimal, BrokerError> {
        let i = order.instrument;
        if order.amount <= Decimal::ZERO || !(order.amount % i.amount_step).is_zero() {
            return Err(BrokerError::Refused(format!(
                "amount {} of {} is not a positive multiple of {}",
                order.amount, i.name, i.amount_step
            )));
        }
        if let OrderKind::Limit { price } = order.kind
            && (price <= Decimal::ZERO || !(price % i.price_step).is_zero())
        {
            return Err(BrokerError::Refused(format!(
                "limit price {price} of {} is not a positive multiple of {}",
                i.name, i.price_step
            )));
        }
        self.price(i.name)
            .ok_or_else(|| BrokerError::NoPrice(i.name.to_owned()))
    }

    /// The amount a reduce-only order may fill now: cut to the position, zero when it would
    /// not reduce.
    fn reducible(&self, instrument: &str, side: OrderSide, amount: Decimal) -> Decimal {
        let size = self.state.account.size(instrument);
        if size.is_zero() || OrderSide::closing(size) != side {
            Decimal::ZERO
        } else {
            amount.min(size.abs())
        }
    }

    fn fill(
        &mut self,
        instrument: &'static Instrument,
        id: u64,
        side: OrderSide,
        amount: Decimal,
        price: Decimal,
    ) -> Fill {
        let fee = account::fee(instrument, amount, price, self.model.fee_bps);
        self.state
            .account
            .book(instrument, id, side, amount, price, fee)
    }
}

impl Broker for PaperBroker {
    fn on_price(&mut self, instrument: &'static Instrument, price: Decimal) -> Vec<Fill> {
        self.state.prices.insert(instrument.name.to_owned(), price);
        let mut fills = Vec::new();
        let orders = std::mem::take(&mut self.state.account.orders);
        let mut resting = Vec::with_capacity(orders.len());
        for mut o in orders {
            let reached = o.instrument == instrument.name
                && match o.side {
                    OrderSide::Buy => price <= o.price,
                    OrderSide::Sell => price >= o.price,
                };
            if !reached {
                resting.push(o);
                continue;
            }
            if o.reduce_only {
                o.amount = self.reducible(&o.instrument, o.side, o.amount);
                if o.amount.is_zero() {
                    continue; // nothing left to reduce: the order lapses
                }
            }
            fills.push(self.fill(instrument, o.id, o.side, o.amount, o.price));
        }
        self.state.account.orders = resting;
        fills
    }

    async fn place(&mut self, order: OrderRequest) -> Result<Placed, BrokerError> {
        let price = self.check(&order)?;
        let mut amount = order.amount;
        if order.reduce_only {
            amount = self.reducible(order.instrument.name, order.side, amount);
            if amount.is_zero() {
                return Err(BrokerError::Refused(format!(
                    "reduce-only {:?} of {} would not reduce the position",
                    order.side, order.instrument.name
                )));
            }
        }
        let at_market = self.model.market_price(order.instrument, order.side, price);
        let id = self.state.account.next_id();
        let fill_price = match order.kind {
            OrderKind::Market => at_market,
            OrderKind::Limit { price: limit } => match order.side {
                OrderSide::Buy if price <= limit => at_market.min(limit),
                OrderSide::Sell if price >= limit => at_market.max(limit),
                _ => {
                    let resting = Order {
                        id,
                        instrument: order.instrument.name.to_owned(),
                        side: order.side,
                        amount,
                        price: limit,
                        reduce_only: order.reduce_only,
                    };
                    self.state.account.orders.push(resting.clone());
                    return Ok(Placed::Resting(resting));
                }
            },
        };
        Ok(Placed::Filled(self.fill(
            order.instrument,
            id,
            order.side,
            amount,
            fill_price,
        )))
    }

    async fn cancel(&mut self, id: u64) -> Result<(), BrokerError> {
        let orders = &mut self.state.account.orders;
        let before = orders.len();
        orders.retain(|o| o.id != id);
        if orders.len() == before {
            return Err(BrokerError::UnknownOrder(id));
        }
        Ok(())
    }

    async fn open_orders(&self) -> Result<Vec<Order>, BrokerError> {
        Ok(self.state.account.orders.clone())
    }

    async fn positions(&self) -> Result<Vec<BrokerPosition>, BrokerError> {
        Ok(self
            .state
            .account
            .positions
            .iter()
            .map(|(name, h)| BrokerPosition {
                instrument: name.clone(),
                size: h.size,
                entry_price: h.entry_price,
                realized_pnl: h.realized_pnl,
            })
            .collect())
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap_or_default()
    }
}
