//! Properties over random order sequences on the paper broker, through a session: the money
//! adds up exactly, flatten leaves nothing open, and every closed trade is a win, a loss or
//! neither; and a round trip at one price always loses its fees, however small.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Script, bar, inst, limits, model, session};
use proptest::prelude::*;
use runfleet_trading::broker::{Broker, Fill, OrderRequest, OrderSide, Placed};
use runfleet_trading::catalog::INSTRUMENTS;
use runfleet_trading::paper::FillModel;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

#[derive(Debug, Clone)]
enum Op {
    /// Move the price of instrument `i` by `bps` basis points.
    Move { i: usize, bps: i64 },
    /// A market order of `steps` amount steps.
    Market { i: usize, buy: bool, steps: u32 },
    /// A limit order `offset_bps` away from the price (negative: below).
    Limit {
        i: usize,
        buy: bool,
        steps: u32,
        offset_bps: i64,
    },
    /// Cancel the `k`-th open order, if any.
    Cancel { k: usize },
    /// Close the position on instrument `i`.
    Close { i: usize },
}

fn op(instruments: usize) -> impl Strategy<Value = Op> {
    let i = 0..instruments;
    prop_oneof![
        3 => (i.clone(), -150i64..=150).prop_map(|(i, bps)| Op::Move { i, bps }),
        3 => (i.clone(), any::<bool>(), 1u32..=40).prop_map(|(i, buy, steps)| Op::Market { i, buy, steps }),
        2 => (i.clone(), any::<bool>(), 1u32..=40, -100i64..=100)
            .prop_map(|(i, buy, steps, offset_bps)| Op::Limit { i, buy, steps, offset_bps }),
        1 => (0usize..4).prop_map(|k| Op::Cancel { k }),
        1 => i.prop_map(|i| Op::Close { i }),
    ]
}

/// Opens `steps` amount steps of instrument `i` of the catalog at `percent` % of its simulated
/// start price (on the price step) and closes them at the same price, with a fee of
/// `fee_hundredths` hundredths of a basis point and no slippage; checks that the trade lost
/// exactly its two fees, each above zero.
fn round_trip(
    i: usize,
    buy: bool,
    steps: u32,
    percent: i64,
    fee_hundredths: i64,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let instrument = &INSTRUMENTS[i];
        let fill_model = FillModel {
            fee_bps: Decimal::new(fee_hundredths, 2),
            slippage_bps: Decimal::ZERO,
        };
        let mut s = session(
            fill_model,
            Box::new(Script::default()),
            limits(dec!(1000000000), None, None),
            &[instrument.name],
        );
        let price = instrument.start_price() * Decimal::from(percent) / Decimal::from(100);
        let price = ((price / instrument.price_step).round() * instrument.price_step)
            .max(instrument.price_step);
        s.step(&[bar(instrument, 0, price)]).await;
        let side = if buy { OrderSide::Buy } else { OrderSide::Sell };
        let amount = instrument.amount_step * Decimal::from(steps);
        let Some(Placed::Filled(open)) = s
            .submit(OrderRequest::market(instrument, side, amount))
            .await
        else {
            return Err(TestCaseError::fail("the opening order did not fill"));
        };
        let close = s.close(instrument).await.unwrap().unwrap();
        prop_assert_eq!((open.price, close.price), (price, price));
        prop_assert_eq!(close.realized_pnl, Decimal::ZERO);
        prop_assert!(open.fee > Decimal::ZERO && close.fee > Decimal::ZERO);
        let st = s.report().stats;
        prop_assert_eq!((st.total_trades, st.losing_trades), (1, 1));
        prop_assert_eq!(st.total_pnl, -(open.fee + close.fee));
        prop_assert_eq!(st.fees, open.fee + close.fee);
        Ok(())
    })
}

/// Plays `ops` on a session over `names` (all settling in one currency), checking after every
/// operation that realized PnL minus fees equals the change in balance, then flattens.
fn check(
    names: &[&str],
    fee_bps: i64,
    slippage_bps: i64,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let instruments: Vec<_> = names.iter().map(|n| inst(n)).collect();
        let currency = instruments[0].settlement();
        let mut s = session(
            model(fee_bps, slippage_bps),
            Box::new(Script::default()),
            limits(dec!(1000000), None, None),
            names,
        );
        let mut prices: Vec<Decimal> = instruments.iter().map(|i| i.start_price()).collect();
        let mut step = 0;
        let bars = |prices: &[Decimal], step: i64| -> Vec<_> {
            instruments
                .iter()
                .zip(prices)
                .map(|(i, p)| bar(i, step, *p))
                .collect()
        };
        s.step(&bars(&prices, step)).await;
        let mut fills: Vec<Fill> = Vec::new();
        for op in ops {
            match op {
                Op::Move { i, bps } => {
                    let instrument = instruments[i];
                    let moved = prices[i] * Decimal::from(10_000 + bps) / Decimal::from(10_000);
                    prices[i] = ((moved / instrument.price_step).round() * instrument.price_step)
                        .max(instrument.price_step);
                    step += 1;
                    fills.extend(s.step(&bars(&prices, step)).await);
                }
                Op::Market { i, buy, steps } => {
                    let side = if buy { OrderSide::Buy } else { OrderSide::Sell };
                    let amount = instruments[i].amount_step * Decimal::from(steps);
                    if let Some(Placed::Filled(f)) = s
                        .submit(OrderRequest::market(instruments[i], side, amount))
                        .await
                    {
                        fills.push(f);
                    }
                }
                Op::Limit {
                    i,
                    buy,
                    steps,
                    offset_bps,
                } => {
                    let instrument = instruments[i];
                    let side = if buy { OrderSide::Buy } else { OrderSide::Sell };
                    let amount = instrument.amount_step * Decimal::from(steps);
                    let at = prices[i] * Decimal::from(10_000 + offset_bps) / Decimal::from(10_000);
                    let at = ((at / instrument.price_step).round() * instrument.price_step)
                        .max(instrument.price_step);
                    if let Some(Placed::Filled(f)) = s
                        .submit(OrderRequest::limit(instrument, side, amount, at))
                        .await
                    {
                        fills.push(f);
                    }
                }
                Op::Cancel { k } => {
                    let open = s.broker().open_orders().await.unwrap();
                    if let Some(o) = open.get(k) {
                        s.broker_mut().cancel(o.id).await.unwrap();
                    }
                }
                Op::Close { i } => {
                    fills.extend(s.close(instruments[i]).await.unwrap());
                }
            }
            let booked: Decimal = fills.iter().map(|f| f.realized_pnl - f.fee).sum();
            prop_assert_eq!(booked, s.broker().account().balance(currency));
        }
        let flatten = s.flatten(3, Duration::ZERO).await;
        prop_assert_eq!(flatten.error, None);
        fills.extend(flatten.fills);
        prop_assert!(
            s.broker().positions().await.unwrap().is_empty(),
            "flat after flatten"
        );
        prop_assert!(s.broker().open_orders().await.unwrap().is_empty());
        prop_assert!(s.report().positions.is_empty());

        // Realized PnL minus fees equals the change in balance, currency by currency.
        let mut by_currency: BTreeMap<&str, Decimal> = BTreeMap::new();
        for f in &fills {
            *by_currency.entry(f.currency.as_str()).or_default() += f.realized_pnl - f.fee;
        }
        for (c, v) in &by_currency {
            prop_assert_eq!(*v, s.broker().account().balance(c));
        }
        // Once flat, closed trades are all the money there is.
        let st = s.report().stats;
        let balance = s.broker().account().balance(currency);
        prop_assert_eq!(st.total_pnl, balance.normalize());
        let fees: Decimal = fills.iter().map(|f| f.fee).sum();
        prop_assert_eq!(st.fees, fees.normalize());
        // Win + loss + neither = total; a trade closes with each fill that ends or flips a
        // position.
        prop_assert_eq!(
            st.winning_trades + st.losing_trades + s.ledger().breakeven_trades(),
            st.total_trades
        );
        let closing = fills
            .iter()
            .filter(|f| {
                !f.position_before.is_zero()
                    && (f.position_after.is_zero()
                        || (f.position_after > Decimal::ZERO)
                            != (f.position_before > Decimal::ZERO))
            })
            .count() as u64;
        prop_assert_eq!(st.total_trades, closing);
        prop_assert!(st.max_drawdown >= Decimal::ZERO);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn linear_books_balance_exactly(
        fee in 0i64..=50,
        slip in 0i64..=50,
        ops in proptest::collection::vec(op(2), 1..60),
    ) {
        check(&["BTC-USD", "EUR-USD"], fee, slip, ops)?;
    }

    #[test]
    fn inverse_books_balance_exactly(
        fee in 0i64..=50,
        slip in 0i64..=50,
        ops in proptest::collection::vec(op(1), 1..60),
    ) {
        check(&["BTC-PERPETUAL"], fee, slip, ops)?;
    }

    #[test]
    fn a_round_trip_at_one_price_always_loses_its_fees(
        i in 0..INSTRUMENTS.len(),
        buy in any::<bool>(),
        steps in 1u32..=1000,
        percent in 1i64..=1000,
        fee_hundredths in 1i64..=100_000,
    ) {
        round_trip(i, buy, steps, percent, fee_hundredths)?;
    }
}
