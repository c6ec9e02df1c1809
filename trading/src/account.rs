//! The paper account: cash by currency, net positions by instrument, resting orders, and the
//! position arithmetic every fill goes through (average entry, realized PnL, fees), all in
//! decimal. One function books a fill, so balances, positions and the fills the ledger sees
//! can never disagree.

use std::collections::BTreeMap;

use crate::catalog::{ContractKind, Instrument};
use runfleet_shared::job::Side;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::broker::{Fill, Order, OrderSide};

/// PnL of closing `amount` of a position opened at `entry`, at `exit`, unrounded: linear
/// `amount × (exit − entry)` in the quote currency, inverse `amount × (1/entry − 1/exit)` in the
/// base coin; shorts are the negative.
pub fn pnl(
    kind: ContractKind,
    side: Side,
    amount: Decimal,
    entry: Decimal,
    exit: Decimal,
) -> Decimal {
    let dir = match side {
        Side::Long => Decimal::ONE,
        Side::Short => Decimal::NEGATIVE_ONE,
    };
    match kind {
        ContractKind::Linear => dir * amount * (exit - entry),
        ContractKind::Inverse => dir * amount * (Decimal::ONE / entry - Decimal::ONE / exit),
    }
}

/// Decimal places every fee and realized PnL is booked with, in every currency: 1e-8, a
/// satoshi, which is also what venues and accounting engines book fiat fees at. Cents are too
/// coarse: a fee under half a cent would book as nothing, and a small trade closed at its
/// entry price would end at exactly zero instead of losing its fees.
pub const BOOKING_DECIMALS: u32 = 8;

/// Rounds money to the booking precision ([`BOOKING_DECIMALS`]), half away from zero.
pub fn round_money(value: Decimal) -> Decimal {
    round_half_away(value, BOOKING_DECIMALS)
}

/// Rounds half away from zero (0.005 → 0.01, −0.005 → −0.01).
pub fn round_half_away(value: Decimal, decimals: u32) -> Decimal {
    value
        .round_dp_with_strategy(decimals, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// The value a fill of `amount` at `price` moves, in the settlement currency: `amount × price`
/// for a linear instrument, `amount / price` (coins) for an inverse one.
pub fn notional(instrument: &Instrument, amount: Decimal, price: Decimal) -> Decimal {
    match instrument.kind {
        ContractKind::Linear => amount * price,
        ContractKind::Inverse => amount / price,
    }
}

/// The fee of a fill: `fee_bps` basis points of its notional, rounded up to the booking
/// precision. Up, as a venue charges: a fee rate above zero then never books a fee of zero,
/// so a round trip at one price always loses its fees.
pub fn fee(instrument: &Instrument, amount: Decimal, price: Decimal, fee_bps: Decimal) -> Decimal {
    (notional(instrument, amount, price) * fee_bps / Decimal::from(10_000))
        .round_dp_with_strategy(BOOKING_DECIMALS, RoundingStrategy::ToPositiveInfinity)
        .normalize()
}

/// A net position on one instrument.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// Signed size: above zero long, below zero short, in the instrument's amount unit.
    pub size: Decimal,
    /// Average entry price, full precision: arithmetic mean of the fills' prices weighted by
    /// amount for a linear instrument, harmonic for an inverse one (so that PnL adds up).
    pub entry_price: Decimal,
    /// PnL realized by partial closes since the position opened, before fees.
    pub realized_pnl: Decimal,
}

impl Holding {
    /// Long or short (long when flat).
    pub fn side(&self) -> Side {
        if self.size < Decimal::ZERO {
            Side::Short
        } else {
            Side::Long
        }
    }

    /// PnL of closing the whole position at `mark`, before fees, unrounded.
    pub fn unrealized(&self, instrument: &Instrument, mark: Decimal) -> Decimal {
        if self.size.is_zero() {
            return Decimal::ZERO;
        }
        pnl(
            instrument.kind,
            self.side(),
            self.size.abs(),
            self.entry_price,
            mark,
        )
    }

    /// The position's value at entry, in the settlement currency (the base of its PnL
    /// percentage).
    pub fn entry_value(&self, instrument: &Instrument) -> Decimal {
        notional(instrument, self.size.abs(), self.entry_price)
    }

    /// Books a signed quantity at `price`. Returns the PnL realized by the part that reduces
    /// the position, rounded to the booking precision.
    pub fn apply(&mut self, instrument: &Instrument, qty: Decimal, price: Decimal) -> Decimal {
        if qty.is_zero() {
            return Decimal::ZERO;
        }
        let adds = self.size.is_zero() || (self.size > Decimal::ZERO) == (qty > Decimal::ZERO);
        if adds {
            self.entry_price = if self.size.is_zero() {
                self.realized_pnl = Decimal::ZERO;
                price
            } else {
                average_entry(
                    instrument.kind,
                    self.size.abs(),
                    self.entry_price,
                    qty.abs(),
                    price,
                )
            };
            self.size += qty;
            return Decimal::ZERO;
        }
        let closing = qty.abs().min(self.size.abs());
        let realized = round_money(pnl(
            instrument.kind,
            self.side(),
            closing,
            self.entry_price,
            price,
        ));
        let before = self.size;
        self.size += qty;
        if self.size.is_zero() {
            *self = Holding::default();
        } else if (self.size > Decimal::ZERO) == (before > Decimal::ZERO) {
            self.realized_pnl += realized;
        } else {
            // Flipped through zero: what is left opened at this price.
            self.entry_price = price;
            self.realized_pnl = Decimal::ZERO;
        }
        realized
    }
}

/// Decimals an averaged entry price is kept with: far below any price step, and enough to
/// absorb the last-digit error of a 28-digit division (an exact 48,000 stays 48,000).
pub const ENTRY_DECIMALS: u32 = 12;

fn average_entry(
    kind: ContractKind,
    a1: Decimal,
    p1: Decimal,
    a2: Decimal,
    p2: Decimal,
) -> Decimal {
    let mean = match kind {
        ContractKind::Linear => (a1 * p1 + a2 * p2) / (a1 + a2),
        ContractKind::Inverse => (a1 + a2) / (a1 / p1 + a2 / p2),
    };
    round_half_away(mean, ENTRY_DECIMALS)
}

/// A paper account. Cash starts at zero in every currency and moves by exactly the realized
/// PnL minus the fees of each fill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaperAccount {
    /// Cash by currency.
    pub balances: BTreeMap<String, Decimal>,
    /// Open positions by instrument name (flat instruments are absent).
    pub positions: BTreeMap<String, Holding>,
    /// Resting limit orders, oldest first.
    pub orders: Vec<Order>,
    /// Fees paid, by currency.
    pub fees: BTreeMap<String, Decimal>,
    /// Id of the next order.
    pub next_order_id: u64,
    /// Fills booked so far.
    pub fills: u64,
}

impl PaperAccount {
    /// Cash in `currency`.
    pub fn balance(&self, currency: &str) -> Decimal {
        self.balances.get(currency).copied().unwrap_or_default()
    }

    /// The signed size held on `instrument` (zero when flat).
    pub fn size(&self, instrument: &str) -> Decimal {
        self.positions
            .get(instrument)
            .map_or(Decimal::ZERO, |h| h.size)
    }

    /// A fresh order id.
    pub fn next_id(&mut self) -> u64 {
        self.next_order_id += 1;
        self.next_order_id
    }

    /// Books a fill: moves the position, the cash (realized PnL minus `fee`) and the fee total.
    pub fn book(
        &mut self,
        instrument: &'static Instrument,
        order_id: u64,
        side: OrderSide,
        amount: Decimal,
        price: Decimal,
        fee: Decimal,
    ) -> Fill {
        let holding = self
            .positions
            .entry(instrument.name.to_owned())
            .or_default();
        let before = holding.size;
        let realized = holding.apply(instrument, side.signed(amount), price);
        let after = holding.size;
        if after.is_zero() {
            self.positions.remove(instrument.name);
        }
        let currency = instrument.settlement();
        *self.balances.entry(currency.to_owned()).or_default() += realized - fee;
        *self.fees.entry(currency.to_owned()).or_default() += fee;
        self.fills += 1;
        Fill {
            order_id,
            instrument: instrument.name.to_owned(),
            side,
            amount,
            price,
            fee,
            realized_pnl: realized,
            position_before: before,
            position_after: after,
            currency: currency.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog;
    use rust_decimal_macros::dec;

    #[test]
    fn linear_and_inverse_pnl() {
        assert_eq!(
            pnl(
                ContractKind::Linear,
                Side::Long,
                dec!(2),
                dec!(100),
                dec!(110)
            ),
            dec!(20)
        );
        assert_eq!(
            pnl(
                ContractKind::Linear,
                Side::Short,
                dec!(2),
                dec!(100),
                dec!(110)
            ),
            dec!(-20)
        );
        // 100 USD of BTC-PERPETUAL long from 50,000 to 55,000: 100 × (1/50000 − 1/55000) BTC.
        let p = pnl(
            ContractKind::Inverse,
            Side::Long,
            dec!(100),
            dec!(50000),
            dec!(55000),
        );
        assert_eq!(p.round_dp(10), dec!(0.0001818182));
    }

    #[test]
    fn inverse_entries_average_harmonically_so_pnl_adds_up() {
        let btc = catalog::instrument("BTC-PERPETUAL").unwrap();
        let mut h = Holding::default();
        h.apply(btc, dec!(100), dec!(40000));
        h.apply(btc, dec!(100), dec!(60000));
        // 200 / (100/40000 + 100/60000) = 48,000, not the arithmetic 50,000.
        assert_eq!(h.entry_price, dec!(48000));
        // Closing both lots at 50,000 realizes what the two lots would have separately.
        let lots = pnl(btc.kind, Side::Long, dec!(100), dec!(40000), dec!(50000))
            + pnl(btc.kind, Side::Long, dec!(100), dec!(60000), dec!(50000));
        assert_eq!(h.apply(btc, dec!(-200), dec!(50000)), round_money(lots));
        assert_eq!(h, Holding::default());
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_half_away(dec!(0.005), 2), dec!(0.01));
        assert_eq!(round_half_away(dec!(-0.005), 2), dec!(-0.01));
        assert_eq!(round_half_away(dec!(0.0049), 2), dec!(0));
    }

    #[test]
    fn fees_book_to_1e_8_rounded_up_so_a_fee_rate_always_charges() {
        let eur = catalog::instrument("EUR-USD").unwrap();
        // 1 EUR at 1.1, 5 bps: 0.00055 USD, no longer 0.00 (under half a cent).
        assert_eq!(fee(eur, dec!(1), dec!(1.1), dec!(5)), dec!(0.00055));
        // 10 USD of BTC-PERPETUAL at 50,000, 0.01 bps: 2e-10 BTC, charged as 1e-8.
        let perp = catalog::instrument("BTC-PERPETUAL").unwrap();
        assert_eq!(
            fee(perp, dec!(10), dec!(50000), dec!(0.01)),
            dec!(0.00000001)
        );
        assert_eq!(fee(perp, dec!(10), dec!(50000), dec!(0)), dec!(0));
        assert_eq!(round_money(dec!(-0.000000005)), dec!(-0.00000001));
    }
}
