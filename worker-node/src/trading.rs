//! The built-in runner kind: a strategy trading on a paper account against a simulated market.
//!
//! This is the minimal runtime of the walking skeleton: a seeded random-walk market per runner,
//! a paper account in decimal arithmetic (linear and inverse contracts), the `scalping` strategy
//! (RSI over the last `rsiPeriod` ticks), and the runtime's own stop-loss and take-profit.
//! Fills are at the mark price with no fee or slippage yet. See docs/trading.md.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use runfleet::catalog::{self, ContractKind, Instrument};
use runfleet::job::{JobSpec, Position, RiskManagement, Side, Stats, StopMode};
use rust_decimal::Decimal;
use tokio::sync::watch;

/// Why a runner is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A client asked, with this mode.
    Requested(StopMode),
    /// The store refused this runner's lease (a newer epoch exists, or the node lost it):
    /// stop at once without trading further, leave positions.
    Fenced,
    /// The node is shutting down and hands the job back: leave positions.
    Shutdown,
}

/// What a runner shows between heartbeats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Open positions.
    pub positions: Vec<Position>,
    /// Stats so far.
    pub stats: Stats,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Positions closed by a flatten stop.
    pub flattened: Option<u32>,
    /// Final report.
    pub report: Report,
}

/// A seeded random walk per instrument: each tick moves each price by up to ±0.2 %.
#[derive(Debug)]
pub struct SimulatedMarket {
    prices: Vec<(&'static Instrument, Decimal)>,
    rng: StdRng,
}

impl SimulatedMarket {
    /// A market over `instruments`, reproducible for a given `seed`.
    pub fn new(instruments: &[&'static Instrument], seed: u64) -> Self {
        Self {
            prices: instruments.iter().map(|i| (*i, i.start_price())).collect(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Advances every price by one step and returns the new prices.
    pub fn tick(&mut self) -> Vec<(&'static Instrument, Decimal)> {
        for (_, price) in &mut self.prices {
            let step: i64 = self.rng.random_range(-20..=20);
            *price = (*price * Decimal::from(10_000 + step) / Decimal::from(10_000)).round_dp(2);
        }
        self.prices.clone()
    }
}

/// PnL of closing `amount` of a position opened at `entry`, at `exit`.
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

#[derive(Debug, Clone)]
struct Holding {
    instrument: &'static Instrument,
    side: Side,
    amount: Decimal,
    entry: Decimal,
    mark: Decimal,
}

/// A paper account: positions by instrument and the stats of closed trades.
#[derive(Debug, Default)]
pub struct PaperAccount {
    holdings: BTreeMap<&'static str, Holding>,
    stats: Stats,
}

impl PaperAccount {
    /// Opens a position at `price` (the account holds at most one per instrument).
    pub fn open(
        &mut self,
        instrument: &'static Instrument,
        side: Side,
        amount: Decimal,
        price: Decimal,
    ) {
        self.holdings.entry(instrument.name).or_insert(Holding {
            instrument,
            side,
            amount,
            entry: price,
            mark: price,
        });
    }

    /// Marks a position to the current price.
    pub fn mark(&mut self, instrument: &str, price: Decimal) {
        if let Some(h) = self.holdings.get_mut(instrument) {
            h.mark = price;
        }
    }

    /// The open position on `instrument`: side and price move since entry, in percent.
    pub fn exposure(&self, instrument: &str) -> Option<(Side, Decimal)> {
        self.holdings.get(instrument).map(|h| {
            let moved = (h.mark - h.entry) / h.entry * Decimal::from(100);
            let favourable = if h.side == Side::Long { moved } else { -moved };
            (h.side, favourable)
        })
    }

    /// Closes the position on `instrument` at its mark; one closed trade. Returns its PnL.
    pub fn close(&mut self, instrument: &str) -> Option<Decimal> {
        let h = self.holdings.remove(instrument)?;
        let p = pnl(h.instrument.kind, h.side, h.amount, h.entry, h.mark);
        let s = &mut self.stats;
        s.total_trades += 1;
        if p > Decimal::ZERO {
            s.winning_trades += 1;
        } else if p < Decimal::ZERO {
            s.losing_trades += 1;
        }
        s.total_pnl += p;
        s.win_rate =
            (Decimal::from(s.winning_trades * 100) / Decimal::from(s.total_trades)).round_dp(2);
        Some(p)
    }

    /// Closes every position at its mark. Returns how many were closed.
    pub fn flatten(&mut self) -> u32 {
        let open: Vec<&'static str> = self.holdings.keys().copied().collect();
        open.iter().filter(|i| self.close(i).is_some()).count() as u32
    }

    /// Open positions and stats.
    pub fn report(&self) -> Report {
        Report {
            positions: self
                .holdings
                .values()
                .map(|h| Position {
                    instrument_name: h.instrument.name.into(),
                    side: h.side,
                    amount: h.amount,
                    entry_price: h.entry,
                    unrealized_pnl: pnl(h.instrument.kind, h.side, h.amount, h.entry, h.mark)
                        .round_dp(8),
                    realized_pnl: Decimal::ZERO,
                })
                .collect(),
            stats: Stats {
                total_pnl: self.stats.total_pnl.round_dp(8),
                ..self.stats.clone()
            },
        }
    }
}

/// Relative strength index of the last `period` changes in `closes` (Cutler's, simple means).
pub fn rsi(closes: &VecDeque<Decimal>, period: usize) -> Option<Decimal> {
    if closes.len() <= period {
        return None;
    }
    let recent: Vec<&Decimal> = closes.iter().skip(closes.len() - period - 1).collect();
    let (mut gain, mut loss) = (Decimal::ZERO, Decimal::ZERO);
    for w in recent.windows(2) {
        let d = *w[1] - *w[0];
        if d > Decimal::ZERO {
            gain += d
        } else {
            loss -= d
        }
    }
    if loss.is_zero() {
        return Some(Decimal::from(100));
    }
    Some(Decimal::from(100) - Decimal::from(100) / (Decimal::ONE + gain / loss))
}

/// The `scalping` strategy: long below RSI 30, short above 70, out when RSI crosses 50.
#[derive(Debug)]
pub struct Scalping {
    period: usize,
    size: Decimal,
    risk: Option<RiskManagement>,
    closes: BTreeMap<&'static str, VecDeque<Decimal>>,
}

impl Scalping {
    /// A strategy for a validated spec.
    pub fn new(spec: &JobSpec) -> Self {
        let kind = catalog::strategy(&spec.config.kind).or_else(|| catalog::strategy("scalping"));
        let period = kind
            .map_or(14, |k| k.int(&spec.config.parameters, "rsiPeriod"))
            .max(2) as usize;
        let risk = spec.config.risk_management;
        Self {
            period,
            size: risk.map_or(Decimal::from(100), |r| r.max_position_size),
            risk,
            closes: BTreeMap::new(),
        }
    }

    /// Reacts to a new price.
    pub fn on_price(
        &mut self,
        account: &mut PaperAccount,
        instrument: &'static Instrument,
        price: Decimal,
    ) {
        account.mark(instrument.name, price);
        let closes = self.closes.entry(instrument.name).or_default();
        closes.push_back(price);
        if closes.len() > self.period + 1 {
            closes.pop_front();
        }
        // Risk limits first: the runtime enforces them whatever the signal says.
        if let (Some(r), Some((_, moved))) = (self.risk, account.exposure(instrument.name))
            && (moved <= -r.stop_loss_percent || moved >= r.take_profit_percent)
        {
            account.close(instrument.name);
            return;
        }
        let Some(rsi) = rsi(closes, self.period) else {
            return;
        };
        match account.exposure(instrument.name) {
            None if rsi < Decimal::from(30) => {
                account.open(instrument, Side::Long, self.size, price)
            }
            None if rsi > Decimal::from(70) => {
                account.open(instrument, Side::Short, self.size, price)
            }
            Some((Side::Long, _)) if rsi >= Decimal::from(50) => {
                account.close(instrument.name);
            }
            Some((Side::Short, _)) if rsi <= Decimal::from(50) => {
                account.close(instrument.name);
            }
            _ => {}
        }
    }
}

/// Runs a strategy until `stop` says why it must end; publishes its report after every tick.
pub async fn run(
    spec: Arc<JobSpec>,
    tick: Duration,
    report: Arc<Mutex<Report>>,
    mut stop: watch::Receiver<Option<StopCause>>,
) -> RunOutcome {
    let instruments: Vec<&'static Instrument> = spec
        .config
        .instruments
        .iter()
        .filter_map(|n| catalog::instrument(n))
        .collect();
    let seed = spec
        .id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let mut market = SimulatedMarket::new(&instruments, seed);
    let mut strategy = Scalping::new(&spec);
    let mut account = PaperAccount::default();
    let mut ticks = tokio::time::interval(tick);
    let cause = loop {
        if let Some(cause) = *stop.borrow_and_update() {
            break cause;
        }
        tokio::select! {
            _ = ticks.tick() => {
                for (instrument, price) in market.tick() {
                    strategy.on_price(&mut account, instrument, price);
                }
                *report.lock().unwrap_or_else(|p| p.into_inner()) = account.report();
            }
            changed = stop.changed() => {
                if changed.is_err() {
                    break StopCause::Shutdown;
                }
            }
        }
    };
    let flattened = match cause {
        StopCause::Requested(StopMode::Flatten) => Some(account.flatten()),
        StopCause::Requested(StopMode::Hold) => Some(0),
        StopCause::Fenced | StopCause::Shutdown => None,
    };
    let report = account.report();
    RunOutcome { flattened, report }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn closing_counts_trades_wins_and_losses() {
        let btc = catalog::instrument("BTC-USD").unwrap();
        let eth = catalog::instrument("ETH-USD").unwrap();
        let mut a = PaperAccount::default();
        a.open(btc, Side::Long, dec!(1), dec!(100));
        a.mark("BTC-USD", dec!(105));
        assert_eq!(a.close("BTC-USD"), Some(dec!(5)));
        a.open(eth, Side::Short, dec!(1), dec!(10));
        a.open(btc, Side::Long, dec!(1), dec!(100));
        a.mark("ETH-USD", dec!(11));
        assert_eq!(a.report().positions.len(), 2);
        assert_eq!(a.flatten(), 2);
        let s = a.report().stats;
        assert_eq!(
            (s.total_trades, s.winning_trades, s.losing_trades),
            (3, 1, 1)
        );
        assert_eq!(s.total_pnl, dec!(4));
        assert_eq!(s.win_rate, dec!(33.33));
        assert!(a.report().positions.is_empty());
    }

    #[test]
    fn rsi_of_a_steady_rise_is_100_and_of_a_fall_is_0() {
        let up: VecDeque<Decimal> = (1..=15).map(Decimal::from).collect();
        assert_eq!(rsi(&up, 14), Some(dec!(100)));
        let down: VecDeque<Decimal> = (1..=15).rev().map(Decimal::from).collect();
        assert_eq!(rsi(&down, 14), Some(dec!(0)));
        assert_eq!(rsi(&down, 15), None);
    }

    #[test]
    fn the_simulated_market_is_reproducible() {
        let i = [catalog::instrument("BTC-PERPETUAL").unwrap()];
        let (mut a, mut b) = (SimulatedMarket::new(&i, 7), SimulatedMarket::new(&i, 7));
        for _ in 0..100 {
            assert_eq!(a.tick(), b.tick());
        }
    }
}
