//! What a trading runner can trade on: the instruments, the brokers a start request may name,
//! and the candle lengths (timeframes) strategies use. The strategies themselves, with their
//! declared parameters, are in [`crate::strategy`]; validation of a start request against
//! both in [`crate::validate`].

use rust_decimal::Decimal;

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

/// A timeframe's length in milliseconds.
pub fn timeframe_ms(name: &str) -> Option<u64> {
    TIMEFRAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, ms)| *ms)
}

#[cfg(test)]
mod tests {
    use super::*;

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
