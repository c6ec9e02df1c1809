//! The trade ledger: turns the broker's fills into closed trades and [`Stats`]. A trade is a
//! position's life on one instrument, from the fill that opens it from flat to the fill that
//! brings it back to flat or flips it through zero (that fill closes one trade and opens the
//! next; its fee is split between them in proportion to the amounts). A trade's PnL is the sum
//! of its realized PnL minus every fee it paid. See docs/trading.md.

use std::collections::{BTreeMap, VecDeque};

use crate::catalog::{ContractKind, Instrument};
use runfleet_shared::job::{Side, Stats};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::account::{round_half_away, round_money};
use super::broker::Fill;

/// Closed trades kept for inspection in the saved state.
const RECENT: usize = 20;

/// A closed trade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trade {
    /// Instrument name.
    pub instrument: String,
    /// Long or short.
    pub side: Side,
    /// Realized PnL minus fees, in the ledger's currency.
    pub pnl: Decimal,
    /// Fees it paid, in the ledger's currency.
    pub fees: Decimal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenTrade {
    side: Side,
    realized: Decimal,
    fees: Decimal,
}

/// Stats so far, kept as running sums so that the saved state stays small however long a
/// runner lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// The currency of every figure.
    pub currency: String,
    /// Whether figures are converted (instruments settle in different currencies).
    pub converted: bool,
    open: BTreeMap<String, OpenTrade>,
    trades: u64,
    wins: u64,
    losses: u64,
    total_pnl: Decimal,
    gross_profit: Decimal,
    gross_loss: Decimal,
    fees: Decimal,
    peak: Decimal,
    max_drawdown: Decimal,
    recent: VecDeque<Trade>,
}

impl Ledger {
    /// A ledger for a runner trading `instruments`: in their common settlement currency, or in
    /// USD when they settle in different ones.
    pub fn new(instruments: &[&'static Instrument]) -> Self {
        let (currency, converted) = crate::catalog::stats_currency(instruments);
        Self {
            currency: currency.into(),
            converted,
            ..Self::default()
        }
    }

    /// `amount` of `instrument`'s settlement currency in the ledger's currency: itself, or
    /// (when converting) coins times the fill price, rounded to the booking precision.
    fn value(&self, instrument: &Instrument, amount: Decimal, price: Decimal) -> Decimal {
        if !self.converted || instrument.settlement() == self.currency {
            amount
        } else if instrument.kind == ContractKind::Inverse {
            round_money(amount * price)
        } else {
            amount
        }
    }

    /// Books a fill. Returns the trade it closed, if it closed one.
    pub fn record(&mut self, instrument: &Instrument, fill: &Fill) -> Option<Trade> {
        let fee = self.value(instrument, fill.fee, fill.price);
        let realized = self.value(instrument, fill.realized_pnl, fill.price);
        self.fees += fee;
        let (before, after) = (fill.position_before, fill.position_after);
        let side_of = |size: Decimal| {
            if size < Decimal::ZERO {
                Side::Short
            } else {
                Side::Long
            }
        };
        if before.is_zero() {
            self.open.insert(
                fill.instrument.clone(),
                OpenTrade {
                    side: side_of(after),
                    realized: Decimal::ZERO,
                    fees: fee,
                },
            );
            return None;
        }
        let trade = self
            .open
            .entry(fill.instrument.clone())
            .or_insert_with(|| OpenTrade {
                side: side_of(before),
                ..OpenTrade::default()
            });
        let same_side = !after.is_zero() && (after > Decimal::ZERO) == (before > Decimal::ZERO);
        if same_side {
            trade.realized += realized;
            trade.fees += fee;
            return None;
        }
        // Closed (flat) or flipped: the closing part carries its share of the fee.
        let closing_fee = if after.is_zero() {
            fee
        } else {
            round_money(fee * before.abs() / fill.amount)
        };
        let trade = self.open.remove(&fill.instrument).unwrap_or_default();
        let fees = trade.fees + closing_fee;
        let closed = Trade {
            instrument: fill.instrument.clone(),
            side: trade.side,
            pnl: trade.realized + realized - fees,
            fees,
        };
        self.close(&closed);
        if !after.is_zero() {
            self.open.insert(
                fill.instrument.clone(),
                OpenTrade {
                    side: side_of(after),
                    realized: Decimal::ZERO,
                    fees: fee - closing_fee,
                },
            );
        }
        Some(closed)
    }

    fn close(&mut self, t: &Trade) {
        self.trades += 1;
        if t.pnl > Decimal::ZERO {
            self.wins += 1;
            self.gross_profit += t.pnl;
        } else if t.pnl < Decimal::ZERO {
            self.losses += 1;
            self.gross_loss -= t.pnl;
        }
        self.total_pnl += t.pnl;
        self.peak = self.peak.max(self.total_pnl);
        self.max_drawdown = self.max_drawdown.max(self.peak - self.total_pnl);
        self.recent.push_back(t.clone());
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Makes the open trades agree with the broker's positions (the broker is the source of
    /// truth): a position the ledger does not know opens a trade with nothing booked yet; a
    /// trade without a position is dropped. Returns how many disagreed.
    pub fn reconcile(&mut self, positions: &[(String, Decimal)]) -> usize {
        let mut fixed = 0;
        let held: BTreeMap<&str, Decimal> = positions
            .iter()
            .filter(|(_, s)| !s.is_zero())
            .map(|(n, s)| (n.as_str(), *s))
            .collect();
        let before = self.open.len();
        self.open.retain(|name, _| held.contains_key(name.as_str()));
        fixed += before - self.open.len();
        for (name, size) in held {
            let side = if size < Decimal::ZERO {
                Side::Short
            } else {
                Side::Long
            };
            match self.open.get(name) {
                Some(t) if t.side == side => {}
                _ => {
                    fixed += 1;
                    self.open.insert(
                        name.to_owned(),
                        OpenTrade {
                            side,
                            ..OpenTrade::default()
                        },
                    );
                }
            }
        }
        fixed
    }

    /// The last closed trades, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Trade> {
        self.recent.iter()
    }

    /// Closed trades with PnL of exactly zero.
    pub fn breakeven_trades(&self) -> u64 {
        self.trades - self.wins - self.losses
    }

    /// The stats as the API shows them.
    pub fn stats(&self) -> Stats {
        let hundred = Decimal::from(100);
        Stats {
            total_trades: self.trades,
            winning_trades: self.wins,
            losing_trades: self.losses,
            total_pnl: self.total_pnl.normalize(),
            win_rate: if self.trades == 0 {
                Decimal::ZERO
            } else {
                round_half_away(
                    Decimal::from(self.wins) * hundred / Decimal::from(self.trades),
                    2,
                )
            },
            fees: self.fees.normalize(),
            max_drawdown: self.max_drawdown.normalize(),
            profit_factor: (!self.gross_loss.is_zero())
                .then(|| round_half_away(self.gross_profit / self.gross_loss, 4)),
            currency: self.currency.clone(),
        }
    }
}
