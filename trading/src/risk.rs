//! Risk limits, enforced by the runtime whatever the strategy asks: orders are clipped so that
//! no position (counting resting orders on the same side) can exceed `maxPositionSize`, and a
//! position is closed once its loss reaches `stopLossPercent` or its gain `takeProfitPercent`
//! of its entry value.

use crate::catalog::Instrument;
use runfleet_shared::job::RiskManagement;
use rust_decimal::Decimal;

use super::account::Holding;
use super::broker::OrderSide;

/// Why the runtime closed a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The loss reached `stopLossPercent`.
    StopLoss,
    /// The gain reached `takeProfitPercent`.
    TakeProfit,
}

/// What the limits make of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within the limits.
    Accept,
    /// Cut to this amount.
    Clip(Decimal),
    /// Nothing of it fits.
    Refuse,
}

/// A runner's risk limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RiskLimits {
    /// Largest position per instrument, in its amount unit; without it, one amount step.
    pub max_position_size: Option<Decimal>,
    /// Close at this loss, in percent of the entry value.
    pub stop_loss_percent: Option<Decimal>,
    /// Close at this gain, in percent of the entry value.
    pub take_profit_percent: Option<Decimal>,
}

impl RiskLimits {
    /// The limits of a strategy configuration.
    pub fn from_config(risk: Option<&RiskManagement>) -> Self {
        Self {
            max_position_size: risk.map(|r| r.max_position_size),
            stop_loss_percent: risk.map(|r| r.stop_loss_percent),
            take_profit_percent: risk.map(|r| r.take_profit_percent),
        }
    }

    /// The largest position allowed on `instrument`: `maxPositionSize` rounded down to the
    /// amount step, or one amount step when no limit was given.
    pub fn max_position(&self, instrument: &Instrument) -> Decimal {
        self.max_position_size.map_or(instrument.amount_step, |m| {
            floor_to(m, instrument.amount_step)
        })
    }

    /// Checks an order that would move `position` (signed) by `side`/`amount` while
    /// `resting` more (unsigned) rests on the book on the same side.
    pub fn check(
        &self,
        instrument: &Instrument,
        side: OrderSide,
        amount: Decimal,
        position: Decimal,
        resting: Decimal,
    ) -> Decision {
        let room = self.max_position(instrument) - side.sign() * position - resting;
        if amount <= room {
            return Decision::Accept;
        }
        let allowed = floor_to(room, instrument.amount_step);
        if allowed <= Decimal::ZERO {
            Decision::Refuse
        } else {
            Decision::Clip(allowed)
        }
    }

    /// Whether `holding`, marked at `mark`, must be closed. The PnL percentage is its
    /// unrealized PnL (before fees) over its entry value, both in the settlement currency.
    pub fn exit(&self, instrument: &Instrument, holding: &Holding, mark: Decimal) -> Option<Exit> {
        let value = holding.entry_value(instrument);
        if value.is_zero() {
            return None;
        }
        let percent = holding.unrealized(instrument, mark) / value * Decimal::from(100);
        if self.stop_loss_percent.is_some_and(|sl| percent <= -sl) {
            Some(Exit::StopLoss)
        } else if self.take_profit_percent.is_some_and(|tp| percent >= tp) {
            Some(Exit::TakeProfit)
        } else {
            None
        }
    }
}

/// `value` rounded down to a multiple of `step`.
pub fn floor_to(value: Decimal, step: Decimal) -> Decimal {
    ((value / step).floor() * step).normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use rust_decimal_macros::dec;

    fn limits() -> RiskLimits {
        RiskLimits {
            max_position_size: Some(dec!(100)),
            stop_loss_percent: Some(dec!(2)),
            take_profit_percent: Some(dec!(3)),
        }
    }

    #[test]
    fn orders_are_clipped_to_the_room_left() {
        let btc = catalog::instrument("BTC-PERPETUAL").unwrap();
        let r = limits();
        assert_eq!(
            r.check(btc, OrderSide::Buy, dec!(100), dec!(0), dec!(0)),
            Decision::Accept
        );
        assert_eq!(
            r.check(btc, OrderSide::Buy, dec!(100), dec!(40), dec!(0)),
            Decision::Clip(dec!(60))
        );
        // Resting buys count: 40 held + 50 resting leaves 10.
        assert_eq!(
            r.check(btc, OrderSide::Buy, dec!(100), dec!(40), dec!(50)),
            Decision::Clip(dec!(10))
        );
        assert_eq!(
            r.check(btc, OrderSide::Buy, dec!(10), dec!(100), dec!(0)),
            Decision::Refuse
        );
        // A flip from a 100 long can sell down to a 100 short.
        assert_eq!(
            r.check(btc, OrderSide::Sell, dec!(200), dec!(100), dec!(0)),
            Decision::Accept
        );
        assert_eq!(
            r.check(btc, OrderSide::Sell, dec!(300), dec!(100), dec!(0)),
            Decision::Clip(dec!(200))
        );
        // Clipping rounds down to the amount step (10 USD for BTC-PERPETUAL).
        assert_eq!(
            r.check(btc, OrderSide::Buy, dec!(100), dec!(35), dec!(0)),
            Decision::Clip(dec!(60))
        );
    }

    #[test]
    fn no_risk_settings_mean_one_amount_step_and_no_exits() {
        let eur = catalog::instrument("EUR-USD").unwrap();
        let r = RiskLimits::default();
        assert_eq!(r.max_position(eur), dec!(1));
        let h = Holding {
            size: dec!(1),
            entry_price: dec!(1),
            realized_pnl: dec!(0),
        };
        assert_eq!(r.exit(eur, &h, dec!(0.5)), None);
    }
}
