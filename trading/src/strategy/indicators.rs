//! Indicators over closing prices, in decimal.

use std::collections::VecDeque;

use rust_decimal::Decimal;

/// Relative strength index of the last `period` changes in `closes` (Cutler's: simple means of
/// gains and losses). `None` until `period + 1` closes are known. A window that only rose is
/// 100 and one that only fell 0, as the formula gives; a window that never moved is 50,
/// neutral: with no gain and no loss there is no momentum either way, and reading it as
/// overbought (100, the formula's limit of an empty loss) would short a market that is not
/// moving.
pub fn rsi(closes: &VecDeque<Decimal>, period: usize) -> Option<Decimal> {
    if period == 0 || closes.len() <= period {
        return None;
    }
    let start = closes.len() - period - 1;
    let (mut gain, mut loss) = (Decimal::ZERO, Decimal::ZERO);
    for i in start..closes.len() - 1 {
        let d = closes[i + 1] - closes[i];
        if d > Decimal::ZERO {
            gain += d;
        } else {
            loss -= d;
        }
    }
    if loss.is_zero() {
        return Some(Decimal::from(if gain.is_zero() { 50 } else { 100 }));
    }
    Some(Decimal::from(100) - Decimal::from(100) / (Decimal::ONE + gain / loss))
}

/// Simple moving average of the last `period` closes; `None` until there are that many.
pub fn sma(closes: &VecDeque<Decimal>, period: usize) -> Option<Decimal> {
    sum_last(closes, period).map(|sum| sum / Decimal::from(period))
}

/// Sum of the last `period` closes; `None` until there are that many. Exact: comparing two
/// averages by their sums (cross-multiplied by the periods) involves no rounding.
pub fn sum_last(closes: &VecDeque<Decimal>, period: usize) -> Option<Decimal> {
    if period == 0 || closes.len() < period {
        return None;
    }
    Some(closes.iter().skip(closes.len() - period).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn rsi_of_a_rise_is_100_of_a_fall_0_and_of_no_change_50() {
        let up: VecDeque<Decimal> = (1..=15).map(Decimal::from).collect();
        assert_eq!(rsi(&up, 14), Some(dec!(100)));
        let down: VecDeque<Decimal> = (1..=15).rev().map(Decimal::from).collect();
        assert_eq!(rsi(&down, 14), Some(dec!(0)));
        assert_eq!(rsi(&down, 15), None);
        // Gains 2, losses 1 over 2 changes: RS 2, RSI 100 − 100/3.
        let mixed: VecDeque<Decimal> = [dec!(10), dec!(12), dec!(11)].into();
        assert_eq!(rsi(&mixed, 2).unwrap().round_dp(4), dec!(66.6667));
        let flat: VecDeque<Decimal> = [dec!(10), dec!(10), dec!(10)].into();
        assert_eq!(rsi(&flat, 2), Some(dec!(50)));
        // Rises and no fall in the window (the fall is older): 100.
        let risen: VecDeque<Decimal> = [dec!(11), dec!(10), dec!(10), dec!(12)].into();
        assert_eq!(rsi(&risen, 2), Some(dec!(100)));
        let fell: VecDeque<Decimal> = [dec!(10), dec!(10), dec!(9)].into();
        assert_eq!(rsi(&fell, 2), Some(dec!(0)));
    }

    #[test]
    fn sma_averages_the_last_closes() {
        let c: VecDeque<Decimal> = [dec!(1), dec!(2), dec!(3), dec!(6)].into();
        assert_eq!(sma(&c, 2), Some(dec!(4.5)));
        assert_eq!(sma(&c, 4), Some(dec!(3)));
        assert_eq!(sma(&c, 5), None);
        assert_eq!(sum_last(&c, 2), Some(dec!(9)));
        assert_eq!(sum_last(&c, 0), None);
    }
}
