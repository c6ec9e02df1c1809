//! Golden tests: every figure below was worked out by hand (the arithmetic is in the comments)
//! and the runtime must reproduce it to the last digit. The definitions docs/trading.md
//! decides (RSI of a window without change, when sma-cross fires, fee precision, bar spacing)
//! are each pinned by a hand-worked CSV of a few rows, replayed as a runner would play it.

mod common;

use std::time::Duration;

use common::{Script, bar, csv_file, inst, limits, model, play, replay_market, session, spec};
use runfleet_shared::config::MarketSettings;
use runfleet_shared::job::Side;
use runfleet_trading::broker::{
    Broker, BrokerError, BrokerPosition, Fill, Order, OrderRequest, OrderSide, Placed,
};
use runfleet_trading::catalog::Instrument;
use runfleet_trading::feed::ReplayCache;
use runfleet_trading::paper::PaperBroker;
use runfleet_trading::risk::RiskLimits;
use runfleet_trading::runner as trading;
use runfleet_trading::session::Session;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::{Value, json};

use OrderSide::{Buy, Sell};

fn no_sl_tp(max: Decimal) -> RiskLimits {
    limits(max, None, None)
}

#[tokio::test]
async fn linear_round_trip_with_fee_and_slippage() {
    // BTC-USD (linear, USD booked to 1e-8), fee 5 bps, slippage 10 bps.
    let mut s = session(
        model(5, 10),
        Script::new(vec![vec![(Buy, dec!(0.5))], vec![(Sell, dec!(0.5))]]),
        no_sl_tp(dec!(1)),
        &["BTC-USD"],
    );
    let btc = inst("BTC-USD");
    // Buy 0.5 at 50,000 × 1.001 = 50,050; fee 0.5 × 50,050 × 0.0005 = 12.5125.
    let fills = s.step(&[bar(btc, 0, dec!(50000))]).await;
    assert_eq!((fills[0].price, fills[0].fee), (dec!(50050), dec!(12.5125)));
    let p = &s.report().positions[0];
    assert_eq!(
        (p.side, p.amount, p.entry_price),
        (Side::Long, dec!(0.5), dec!(50050))
    );
    // Marked at 50,000: 0.5 × (50,000 − 50,050) = −25.
    assert_eq!(p.unrealized_pnl, dec!(-25));
    // Sell 0.5 at 51,000 × 0.999 = 50,949; realized 0.5 × 899 = 449.50;
    // fee 0.5 × 50,949 × 0.0005 = 12.73725.
    let fills = s.step(&[bar(btc, 1, dec!(51000))]).await;
    assert_eq!(
        (fills[0].price, fills[0].realized_pnl, fills[0].fee),
        (dec!(50949), dec!(449.50), dec!(12.73725))
    );
    // Net 449.50 − 12.5125 − 12.73725 = 424.25025, which is the cash too.
    let st = s.report().stats;
    assert_eq!(
        (st.total_trades, st.winning_trades, st.losing_trades),
        (1, 1, 0)
    );
    assert_eq!(st.total_pnl, dec!(424.25025));
    assert_eq!(st.fees, dec!(25.24975));
    assert_eq!(st.win_rate, dec!(100));
    assert_eq!(st.profit_factor, None, "no losing trade");
    assert_eq!(st.max_drawdown, dec!(0));
    assert_eq!(st.currency, "USD");
    assert_eq!(s.broker().account().balance("USD"), dec!(424.25025));
    assert!(s.report().positions.is_empty());
}

#[tokio::test]
async fn inverse_round_trip_with_fee_and_slippage() {
    // BTC-PERPETUAL (inverse: amount in USD, PnL in BTC to 1e-8), fee 5 bps, slippage 10 bps.
    let mut s = session(
        model(5, 10),
        Script::new(vec![vec![(Buy, dec!(1000))], vec![(Sell, dec!(1000))]]),
        no_sl_tp(dec!(1000)),
        &["BTC-PERPETUAL"],
    );
    let btc = inst("BTC-PERPETUAL");
    // Buy 1,000 USD at 40,000 × 1.001 = 40,040 (a multiple of the 0.5 step);
    // fee 1,000 / 40,040 × 0.0005 = 0.0000124875… → 0.00001249 BTC (fees round up).
    let fills = s.step(&[bar(btc, 0, dec!(40000))]).await;
    assert_eq!(
        (fills[0].price, fills[0].fee),
        (dec!(40040), dec!(0.00001249))
    );
    // Sell at 50,000 × 0.999 = 49,950; realized 1,000 × (1/40,040 − 1/49,950)
    // = 9,910,000 / 1,999,998,000 = 0.004955004955… → 0.00495500 (half away from zero);
    // fee 1,000 / 49,950 × 0.0005 = 0.00001001001… → 0.00001002 (up).
    let fills = s.step(&[bar(btc, 1, dec!(50000))]).await;
    assert_eq!(
        (fills[0].price, fills[0].realized_pnl, fills[0].fee),
        (dec!(49950), dec!(0.004955), dec!(0.00001002))
    );
    // Net 0.00495500 − 0.00001249 − 0.00001002 = 0.00493249 BTC.
    let st = s.report().stats;
    assert_eq!(st.currency, "BTC");
    assert_eq!(st.total_pnl, dec!(0.00493249));
    assert_eq!(st.fees, dec!(0.00002251));
    assert_eq!(s.broker().account().balance("BTC"), dec!(0.00493249));
}

#[tokio::test]
async fn partial_close_keeps_the_entry_and_books_realized_pnl() {
    // EUR-USD (linear), fee 2 bps, no slippage.
    let mut s = session(
        model(2, 0),
        Script::new(vec![
            vec![(Buy, dec!(10000))],
            vec![(Sell, dec!(4000))],
            vec![(Sell, dec!(6000))],
        ]),
        no_sl_tp(dec!(10000)),
        &["EUR-USD"],
    );
    let eur = inst("EUR-USD");
    // Buy 10,000 at 1.1: fee 10,000 × 1.1 × 0.0002 = 2.20.
    s.step(&[bar(eur, 0, dec!(1.1))]).await;
    // Sell 4,000 at 1.105: realized 4,000 × 0.005 = 20; fee 4,000 × 1.105 × 0.0002 = 0.884.
    let fills = s.step(&[bar(eur, 1, dec!(1.105))]).await;
    assert_eq!(
        (fills[0].realized_pnl, fills[0].fee),
        (dec!(20), dec!(0.884))
    );
    let p = &s.report().positions[0];
    assert_eq!(
        (p.amount, p.entry_price, p.realized_pnl),
        (dec!(6000), dec!(1.1), dec!(20))
    );
    assert_eq!(p.unrealized_pnl, dec!(30), "6,000 × (1.105 − 1.1)");
    assert_eq!(s.report().stats.total_trades, 0, "still open: no trade yet");
    assert_eq!(s.report().stats.fees, dec!(3.084));
    // Sell 6,000 at 1.09: realized 6,000 × (1.09 − 1.1) = −60; fee 6,000 × 1.09 × 0.0002
    // = 1.308. Trade: 20 − 60 − (2.20 + 0.884 + 1.308) = −44.392.
    s.step(&[bar(eur, 2, dec!(1.09))]).await;
    let st = s.report().stats;
    assert_eq!(
        (st.total_trades, st.winning_trades, st.losing_trades),
        (1, 0, 1)
    );
    assert_eq!(st.total_pnl, dec!(-44.392));
    assert_eq!(st.fees, dec!(4.392));
    assert_eq!(st.max_drawdown, dec!(44.392));
    assert_eq!(st.profit_factor, Some(dec!(0)));
    assert_eq!(st.win_rate, dec!(0));
    assert_eq!(s.broker().account().balance("USD"), dec!(-44.392));
}

#[tokio::test]
async fn a_flip_from_long_to_short_closes_one_trade_and_opens_the_next() {
    // BTC-USD, fee 10 bps, no slippage.
    let mut s = session(
        model(10, 0),
        Script::new(vec![
            vec![(Buy, dec!(2))],
            vec![(Sell, dec!(5))],
            vec![(Buy, dec!(3))],
        ]),
        no_sl_tp(dec!(3)),
        &["BTC-USD"],
    );
    let btc = inst("BTC-USD");
    // Buy 2 at 100: fee 0.20.
    s.step(&[bar(btc, 0, dec!(100))]).await;
    // Sell 5 at 110: closes the 2 (realized 20) and opens a short of 3 at 110; fee 0.55,
    // split 2/5 → 0.22 to the closed trade and 0.33 to the new one.
    let fills = s.step(&[bar(btc, 1, dec!(110))]).await;
    assert_eq!(
        (fills[0].realized_pnl, fills[0].fee),
        (dec!(20), dec!(0.55))
    );
    let p = &s.report().positions[0];
    assert_eq!(
        (p.side, p.amount, p.entry_price, p.realized_pnl),
        (Side::Short, dec!(3), dec!(110), dec!(0))
    );
    let st = s.report().stats;
    // First trade: 20 − 0.20 − 0.22 = 19.58.
    assert_eq!((st.total_trades, st.total_pnl), (1, dec!(19.58)));
    // Buy 3 at 120: realized −30; fee 0.36. Second trade: −30 − 0.33 − 0.36 = −30.69.
    s.step(&[bar(btc, 2, dec!(120))]).await;
    let st = s.report().stats;
    assert_eq!(
        (st.total_trades, st.winning_trades, st.losing_trades),
        (2, 1, 1)
    );
    assert_eq!(st.total_pnl, dec!(-11.11));
    assert_eq!(st.fees, dec!(1.11));
    assert_eq!(st.win_rate, dec!(50));
    // Peak 19.58, then −11.11: a drawdown of 30.69. Profit factor 19.58 / 30.69 = 0.63799…
    assert_eq!(st.max_drawdown, dec!(30.69));
    assert_eq!(st.profit_factor, Some(dec!(0.638)));
    let recent: Vec<Decimal> = s.ledger().recent().map(|t| t.pnl).collect();
    assert_eq!(recent, vec![dec!(19.58), dec!(-30.69)]);
    assert_eq!(s.broker().account().balance("USD"), dec!(-11.11));
}

#[tokio::test]
async fn a_stop_loss_closes_the_position_when_the_loss_reaches_the_limit() {
    // BTC-USD long 1 at 100, stop-loss 2 %, take-profit 3 %, no fee or slippage.
    let mut s = session(
        model(0, 0),
        Script::new(vec![vec![(Buy, dec!(1))]]),
        limits(dec!(1), Some(dec!(2)), Some(dec!(3))),
        &["BTC-USD"],
    );
    let btc = inst("BTC-USD");
    for (n, price) in [dec!(100), dec!(99), dec!(98.01)].into_iter().enumerate() {
        s.step(&[bar(btc, n as i64, price)]).await;
    }
    assert_eq!(s.events().stop_losses, 0, "−1.99 % is not yet −2 %");
    assert_eq!(s.report().positions.len(), 1);
    // At 98: exactly −2 %, the limit is reached; closed at 98, realized −2.
    let fills = s.step(&[bar(btc, 3, dec!(98))]).await;
    assert_eq!(
        (fills[0].price, fills[0].realized_pnl),
        (dec!(98), dec!(-2))
    );
    assert_eq!(s.events().stop_losses, 1);
    assert!(s.report().positions.is_empty());
    assert_eq!(s.report().stats.total_pnl, dec!(-2));
    // A gap through the limit fills at the price found, not at the limit.
    let mut s = session(
        model(0, 0),
        Script::new(vec![vec![(Buy, dec!(1))]]),
        limits(dec!(1), Some(dec!(2)), Some(dec!(3))),
        &["BTC-USD"],
    );
    s.step(&[bar(btc, 0, dec!(100))]).await;
    let fills = s.step(&[bar(btc, 1, dec!(95.5))]).await;
    assert_eq!(fills[0].realized_pnl, dec!(-4.5));
}

#[tokio::test]
async fn a_take_profit_closes_a_short_with_fees() {
    // BTC-USD short 1 at 100, take-profit 3 %, fee 10 bps.
    let mut s = session(
        model(10, 0),
        Script::new(vec![vec![(Sell, dec!(1))]]),
        limits(dec!(1), Some(dec!(2)), Some(dec!(3))),
        &["BTC-USD"],
    );
    let btc = inst("BTC-USD");
    s.step(&[bar(btc, 0, dec!(100))]).await; // fee 0.10
    s.step(&[bar(btc, 1, dec!(97.5))]).await; // +2.5 %: held
    assert_eq!(s.events().take_profits, 0);
    // At 97: +3 %, closed; realized 3, fee 97 × 0.001 = 0.097; net 3 − 0.10 − 0.097 = 2.803.
    let fills = s.step(&[bar(btc, 2, dec!(97))]).await;
    assert_eq!(
        (fills[0].realized_pnl, fills[0].fee),
        (dec!(3), dec!(0.097))
    );
    assert_eq!(s.events().take_profits, 1);
    assert_eq!(s.report().stats.total_pnl, dec!(2.803));
}

#[tokio::test]
async fn an_inverse_take_profit_counts_pnl_against_the_entry_value_in_coin() {
    // BTC-PERPETUAL long 100 USD at 50,000, take-profit 3 %. In BTC the gain is
    // (1/50,000 − 1/x) / (1/50,000) = 1 − 50,000/x: at 51,500 (a 3 % price move) it is 2.91 %,
    // at 51,550 it is 3.007 %.
    let mut s = session(
        model(0, 0),
        Script::new(vec![vec![(Buy, dec!(100))]]),
        limits(dec!(100), Some(dec!(50)), Some(dec!(3))),
        &["BTC-PERPETUAL"],
    );
    let btc = inst("BTC-PERPETUAL");
    s.step(&[bar(btc, 0, dec!(50000))]).await;
    s.step(&[bar(btc, 1, dec!(51500))]).await;
    assert_eq!(s.events().take_profits, 0);
    // Realized 100 × 1,550 / (50,000 × 51,550) = 0.0000601358… → 0.00006014 BTC.
    let fills = s.step(&[bar(btc, 2, dec!(51550))]).await;
    assert_eq!(fills[0].realized_pnl, dec!(0.00006014));
    assert_eq!(s.events().take_profits, 1);
}

#[tokio::test]
async fn orders_beyond_max_position_size_are_clipped_or_refused() {
    let mut s = session(
        model(0, 0),
        Script::new(vec![
            vec![(Buy, dec!(250))],
            vec![(Buy, dec!(10))],
            vec![(Sell, dec!(300))],
        ]),
        no_sl_tp(dec!(100)),
        &["BTC-PERPETUAL"],
    );
    let btc = inst("BTC-PERPETUAL");
    s.step(&[bar(btc, 0, dec!(50000))]).await;
    assert_eq!(
        s.report().positions[0].amount,
        dec!(100),
        "250 clipped to 100"
    );
    assert_eq!(s.events().clipped, 1);
    s.step(&[bar(btc, 1, dec!(50000))]).await;
    assert_eq!(s.events().refused, 1, "no room left for 10 more");
    // Selling 300 from a 100 long is clipped to 200: a 100 short, the limit.
    s.step(&[bar(btc, 2, dec!(50000))]).await;
    let p = &s.report().positions[0];
    assert_eq!((p.side, p.amount), (Side::Short, dec!(100)));
    assert_eq!(s.events().clipped, 2);
}

#[tokio::test]
async fn limit_orders_rest_until_the_price_reaches_them() {
    let btc = inst("BTC-USD");
    let mut b = PaperBroker::new(model(10, 10));
    b.on_price(btc, dec!(100));
    // A buy limit below the market rests; the price must come down to it.
    let Placed::Resting(o) = b
        .place(OrderRequest::limit(btc, Buy, dec!(1), dec!(99)))
        .await
        .unwrap()
    else {
        panic!("should rest")
    };
    assert!(b.on_price(btc, dec!(99.5)).is_empty());
    let fills = b.on_price(btc, dec!(98.9));
    // Filled at its limit, no slippage; fee 99 × 0.001 = 0.099.
    assert_eq!(
        (fills[0].order_id, fills[0].price, fills[0].fee),
        (o.id, dec!(99), dec!(0.099))
    );
    assert!(b.open_orders().await.unwrap().is_empty());
    // A marketable limit fills at once, at the slipped market price when better than its limit.
    let Placed::Filled(f) = b
        .place(OrderRequest::limit(btc, Buy, dec!(1), dec!(101)))
        .await
        .unwrap()
    else {
        panic!("marketable")
    };
    assert_eq!(
        f.price,
        dec!(99),
        "98.9 × 1.001 = 98.9989, rounded up to the cent"
    );
    // Amounts off the step and cancels of unknown orders are refused.
    assert!(matches!(
        b.place(OrderRequest::market(btc, Buy, dec!(0.00005))).await,
        Err(BrokerError::Refused(_))
    ));
    assert_eq!(b.cancel(42).await, Err(BrokerError::UnknownOrder(42)));
}

fn holding_of(s: &Session<impl Broker>, name: &str) -> Option<(Side, Decimal)> {
    s.report()
        .positions
        .iter()
        .find(|p| p.instrument_name == name)
        .map(|p| (p.side, p.amount))
}

#[tokio::test(start_paused = true)]
async fn flatten_cancels_orders_and_closes_every_position_confirmed_flat() {
    // Three positions in two settlement currencies: stats are in USD, each coin figure converted
    // at its fill's price. No fee, no slippage.
    let mut s = session(
        model(0, 0),
        Box::new(Script::default()),
        no_sl_tp(dec!(1000)),
        &["BTC-PERPETUAL", "EUR-USD", "BTC-USD"],
    );
    let (perp, eur, btc) = (inst("BTC-PERPETUAL"), inst("EUR-USD"), inst("BTC-USD"));
    s.step(&[
        bar(perp, 0, dec!(50000)),
        bar(eur, 0, dec!(1.1)),
        bar(btc, 0, dec!(100)),
    ])
    .await;
    s.submit(OrderRequest::market(perp, Buy, dec!(100)))
        .await
        .unwrap();
    s.submit(OrderRequest::market(eur, Sell, dec!(1000)))
        .await
        .unwrap();
    s.submit(OrderRequest::market(btc, Buy, dec!(0.5)))
        .await
        .unwrap();
    s.submit(OrderRequest::limit(btc, Buy, dec!(0.5), dec!(90)))
        .await
        .unwrap();
    s.step(&[
        bar(perp, 1, dec!(52500)),
        bar(eur, 1, dec!(1.09)),
        bar(btc, 1, dec!(104)),
    ])
    .await;
    assert_eq!(s.report().positions.len(), 3);
    assert_eq!(s.broker().open_orders().await.unwrap().len(), 1);

    let f = s.flatten(3, Duration::from_millis(200)).await;
    assert_eq!(f.closed, 3);
    assert_eq!(f.error, None);
    assert!(
        s.broker().positions().await.unwrap().is_empty(),
        "the broker says flat"
    );
    assert!(
        s.broker().open_orders().await.unwrap().is_empty(),
        "orders cancelled"
    );
    assert!(s.report().positions.is_empty());
    // BTC-PERPETUAL: 100 × (1/50,000 − 1/52,500) = 0.0000952380… → 0.00009524 BTC,
    // × 52,500 = 5.0001 USD. EUR-USD short: 1,000 × 0.01 = 10.00. BTC-USD: 0.5 × 4 = 2.
    let realized: Vec<Decimal> = f.fills.iter().map(|f| f.realized_pnl).collect();
    assert_eq!(realized, vec![dec!(0.00009524), dec!(2), dec!(10)]);
    let st = s.report().stats;
    assert_eq!(st.currency, "USD");
    assert_eq!((st.total_trades, st.winning_trades), (3, 3));
    assert_eq!(st.total_pnl, dec!(17.0001));
}

/// A paper broker whose closes of one instrument never go through.
#[derive(Debug)]
struct Stuck {
    inner: PaperBroker,
    instrument: &'static str,
}

impl Broker for Stuck {
    fn on_price(&mut self, instrument: &'static Instrument, price: Decimal) -> Vec<Fill> {
        self.inner.on_price(instrument, price)
    }

    async fn place(&mut self, order: OrderRequest) -> Result<Placed, BrokerError> {
        if order.reduce_only && order.instrument.name == self.instrument {
            return Err(BrokerError::Unavailable("exchange timeout".into()));
        }
        self.inner.place(order).await
    }

    async fn cancel(&mut self, id: u64) -> Result<(), BrokerError> {
        self.inner.cancel(id).await
    }

    async fn open_orders(&self) -> Result<Vec<Order>, BrokerError> {
        self.inner.open_orders().await
    }

    async fn positions(&self) -> Result<Vec<BrokerPosition>, BrokerError> {
        self.inner.positions().await
    }

    fn state(&self) -> serde_json::Value {
        self.inner.state()
    }
}

#[tokio::test(start_paused = true)]
async fn flatten_that_cannot_confirm_flat_reports_flatten_failed() {
    let broker = Stuck {
        inner: PaperBroker::new(model(0, 0)),
        instrument: "EUR-USD",
    };
    let (perp, eur) = (inst("BTC-PERPETUAL"), inst("EUR-USD"));
    let mut s = Session::new(
        broker,
        Box::new(Script::default()) as Box<dyn runfleet_trading::strategy::Strategy>,
        no_sl_tp(dec!(1000)),
        vec![perp, eur],
    );
    s.step(&[bar(perp, 0, dec!(50000)), bar(eur, 0, dec!(1.1))])
        .await;
    s.submit(OrderRequest::market(perp, Buy, dec!(100)))
        .await
        .unwrap();
    s.submit(OrderRequest::market(eur, Sell, dec!(1000)))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let f = s.flatten(3, Duration::from_millis(200)).await;
    assert_eq!(f.closed, 1, "BTC-PERPETUAL closed");
    let error = f.error.expect("FLATTEN_FAILED");
    assert!(
        error.starts_with(
            "FLATTEN_FAILED: 1 position(s) still open after 3 attempt(s): EUR-USD -1000"
        ),
        "{error}"
    );
    assert!(error.contains("exchange timeout"), "{error}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(400),
        "two pauses between three rounds"
    );
    assert_eq!(holding_of(&s, "EUR-USD"), Some((Side::Short, dec!(1000))));
    assert_eq!(holding_of(&s, "BTC-PERPETUAL"), None);
}

/// A EUR-USD runner of strategy `kind` with `parameters` and `risk` (`null`: none, one amount
/// step).
fn eur_usd(kind: &str, parameters: Value, risk: Value) -> Value {
    json!({
        "name": "golden", "type": kind, "parameters": parameters,
        "riskManagement": risk, "instruments": ["EUR-USD"]
    })
}

/// Replays `csv` (written to a file named after `name`) for a runner of `config`, with
/// `fee_bps` and no slippage, to its last row.
async fn replay_csv(
    name: &str,
    config: Value,
    fee_bps: i64,
    csv: &str,
) -> (Session<PaperBroker>, Vec<Vec<Fill>>) {
    let file = csv_file(name, csv);
    let played = play(&spec(name, config), &replay_market(&file, fee_bps, 0)).await;
    std::fs::remove_file(&file).unwrap();
    played.unwrap()
}

/// The fills of a replay as (line of the CSV row they traded on, side, amount, price), for a
/// CSV with its header on line 1 and one row per line after it.
fn fills_by_line(steps: &[Vec<Fill>]) -> Vec<(usize, OrderSide, Decimal, Decimal)> {
    steps
        .iter()
        .enumerate()
        .flat_map(|(n, fills)| {
            fills
                .iter()
                .map(move |f| (n + 2, f.side, f.amount, f.price))
        })
        .collect()
}

/// 1,000 EUR a position, stop-loss and take-profit out of reach.
fn risk_1000() -> Value {
    json!({"maxPositionSize": 1000, "stopLossPercent": 50, "takeProfitPercent": 100})
}

#[tokio::test]
async fn rsi_of_a_window_that_never_moved_is_neutral_50() {
    // RSI over 2 changes, hourly rows, fee 5 bps, no slippage.
    let csv = "\
,Open,High,Low,Close,Volume
2020-01-02 09:00,1.1,1.1,1.1,1.1,0
2020-01-02 10:00,1.1,1.1,1.1,1.1,0
2020-01-02 11:00,1.1,1.1,1.1,1.1,0
2020-01-02 12:00,1.1,1.1,1.09,1.09,0
2020-01-02 13:00,1.09,1.09,1.09,1.09,0
2020-01-02 14:00,1.09,1.09,1.09,1.09,0
2020-01-02 15:00,1.09,1.1,1.09,1.1,0
";
    let params = json!({"rsiPeriod": 2, "timeframe": "1h"});
    let (s, steps) = replay_csv("rsi-flat", eur_usd("scalping", params, risk_1000()), 5, csv).await;
    // Line 4: 1.1, 1.1, 1.1 never moved: RSI 50, flat stays flat (read as 100, it would have
    // sold short into a market that is not moving).
    // Line 5: 1.1, 1.1, 1.09 only fell: RSI 0, buy 1,000 at 1.09.
    // Line 6: 1.1, 1.09, 1.09 only fell: 0, the long is held.
    // Line 7: 1.09, 1.09, 1.09 never moved: 50, back to neutral, the long closes at 1.09.
    // Line 8: 1.09, 1.09, 1.1 only rose: RSI 100, sell short 1,000 at 1.1.
    assert_eq!(
        fills_by_line(&steps),
        vec![
            (5, Buy, dec!(1000), dec!(1.09)),
            (7, Sell, dec!(1000), dec!(1.09)),
            (8, Sell, dec!(1000), dec!(1.1)),
        ]
    );
    // Fees 1,000 × 1.09 × 0.0005 = 0.545 twice, then 1,000 × 1.1 × 0.0005 = 0.55. The
    // closed long made 0 − 0.545 − 0.545 = −1.09: a loss.
    let st = s.report().stats;
    assert_eq!(
        (st.total_trades, st.winning_trades, st.losing_trades),
        (1, 0, 1)
    );
    assert_eq!((st.total_pnl, st.fees), (dec!(-1.09), dec!(1.64)));
    assert_eq!(holding_of(&s, "EUR-USD"), Some((Side::Short, dec!(1000))));
}

#[tokio::test]
async fn sma_cross_fires_when_the_side_changes_and_ties_keep_the_side() {
    // Fast 1, slow 2: fast − slow = (close − previous close) / 2, so the side of a row is the
    // sign of its change. No fee, no slippage.
    let csv = "\
,Open,High,Low,Close,Volume
2020-01-02 09:00,1.1,1.1,1.1,1.1,0
2020-01-02 10:00,1.1,1.1,1.1,1.1,0
2020-01-02 11:00,1.1,1.11,1.1,1.11,0
2020-01-02 12:00,1.11,1.11,1.11,1.11,0
2020-01-02 13:00,1.11,1.11,1.1,1.1,0
2020-01-02 14:00,1.1,1.1,1.1,1.1,0
2020-01-02 15:00,1.1,1.1,1.1,1.1,0
2020-01-02 16:00,1.1,1.1,1.09,1.09,0
2020-01-02 17:00,1.09,1.095,1.09,1.095,0
2020-01-02 18:00,1.095,1.095,1.095,1.095,0
";
    let params = json!({"fastPeriod": 1, "slowPeriod": 2, "timeframe": "1h"});
    let (s, steps) = replay_csv(
        "sma-ties",
        eur_usd("sma-cross", params, risk_1000()),
        0,
        csv,
    )
    .await;
    // Line 2: warming up. Line 3: a tie, no side. Line 4: above, the first side after warm-up:
    // only remembered, no trade. Line 5: a tie keeps "above". Line 6: below, a cross: sell
    // 1,000 at 1.1. Lines 7, 8: ties. Line 9: below again, no cross (ties between two "below"
    // are no cross). Line 10: above, a cross: buy 2,000 at 1.095, the short becomes a long.
    // Line 11: a tie.
    assert_eq!(
        fills_by_line(&steps),
        vec![
            (6, Sell, dec!(1000), dec!(1.1)),
            (10, Buy, dec!(2000), dec!(1.095)),
        ]
    );
    // The short: 1,000 × (1.1 − 1.095) = 5.
    let st = s.report().stats;
    assert_eq!((st.total_trades, st.winning_trades), (1, 1));
    assert_eq!(st.total_pnl, dec!(5));
    assert_eq!(holding_of(&s, "EUR-USD"), Some((Side::Long, dec!(1000))));
}

#[tokio::test]
async fn a_round_trip_at_one_price_loses_its_fees_however_small() {
    // No riskManagement: one amount step, 1 EUR. Fee 5 bps, no slippage; sma-cross 1/2.
    let csv = "\
,Open,High,Low,Close,Volume
2020-01-02 09:00,1.1,1.1,1.1,1.1,0
2020-01-02 10:00,1.1,1.1,1.09,1.09,0
2020-01-02 11:00,1.09,1.1,1.09,1.1,0
2020-01-02 12:00,1.1,1.1,1.1,1.1,0
";
    let params = json!({"fastPeriod": 1, "slowPeriod": 2, "timeframe": "1h"});
    let (mut s, steps) = replay_csv(
        "fee-small",
        eur_usd("sma-cross", params, Value::Null),
        5,
        csv,
    )
    .await;
    // Line 4 crosses up: buy 1 at 1.1, fee 1 × 1.1 × 0.0005 = 0.00055 (booked as 0.00 when
    // money was rounded to the cent).
    assert_eq!(fills_by_line(&steps), vec![(4, Buy, dec!(1), dec!(1.1))]);
    assert_eq!(steps[2][0].fee, dec!(0.00055));
    // Flattened at 1.1 too: realized 0, fee 0.00055; the trade made −0.0011, a loss.
    let f = s.flatten(1, Duration::ZERO).await;
    assert_eq!(
        (f.fills[0].price, f.fills[0].realized_pnl, f.fills[0].fee),
        (dec!(1.1), dec!(0), dec!(0.00055))
    );
    let st = s.report().stats;
    assert_eq!(
        (st.total_trades, st.winning_trades, st.losing_trades),
        (1, 0, 1)
    );
    assert_eq!((st.total_pnl, st.fees), (dec!(-0.0011), dec!(0.0011)));
    assert_eq!(s.broker().account().balance("USD"), dec!(-0.0011));
    // The API's money stays exact decimal strings.
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(
        (&json["totalPnL"], &json["fees"]),
        (&json!("-0.0011"), &json!("0.0011"))
    );
}

#[tokio::test]
async fn daily_rows_last_a_day_over_weekends_and_a_stray_intraday_row_is_refused() {
    // Daily rows, Thursday to Tuesday; sma-cross 1/2 on 1d candles, no fee.
    let rows = [
        "2020-01-02,1.1,1.1,1.1,1.1,0",
        "2020-01-03,1.1,1.1,1.09,1.09,0",
        "2020-01-06,1.09,1.1,1.09,1.1,0",
        "2020-01-07,1.1,1.11,1.1,1.11,0",
    ];
    let csv = |rows: &[&str]| format!(",Open,High,Low,Close,Volume\n{}\n", rows.join("\n"));
    let params = json!({"fastPeriod": 1, "slowPeriod": 2, "timeframe": "1d"});
    let config = eur_usd("sma-cross", params, risk_1000());
    // The weekend is a longer gap, not a shorter bar: each row is a 1d candle, and the cross
    // of Monday (line 4) trades on Monday's row, at its close.
    let (_, steps) = replay_csv("daily", config.clone(), 0, &csv(&rows)).await;
    assert_eq!(fills_by_line(&steps), vec![(4, Buy, dec!(1000), dec!(1.1))]);
    // A stray row on Friday afternoon would have made every row 15 h long (the smallest gap),
    // and a 1d strategy would have seen each day only once the next row came: a row late.
    // The file is refused instead, naming the file and the line.
    let stray = [
        rows[0],
        rows[1],
        "2020-01-03 15:00,1.09,1.1,1.09,1.095,0",
        rows[2],
        rows[3],
    ];
    let file = csv_file("daily-stray", &csv(&stray));
    let refused = trading::start(
        &spec("stray", config),
        &replay_market(&file, 0, 0),
        None,
        &ReplayCache::default(),
    )
    .await;
    std::fs::remove_file(&file).unwrap();
    let Err(e) = refused else {
        panic!("a stray row is refused")
    };
    assert!(
        e.starts_with(&format!(
            "replay file {file}: line 4: this row starts 15h after line 3"
        )),
        "{e}"
    );
    assert!(e.contains("rows are 1d apart"), "{e}");
}

#[tokio::test]
async fn a_runner_that_has_not_traded_shows_its_currency() {
    for (instruments, currency) in [
        (json!(["BTC-PERPETUAL"]), "BTC"),
        (json!(["EUR-USD"]), "USD"),
        (json!(["BTC-PERPETUAL", "ETH-PERPETUAL"]), "USD"),
    ] {
        let spec = spec(
            "idle",
            json!({
                "name": "idle", "type": "scalping", "parameters": {},
                "instruments": instruments
            }),
        );
        let before = trading::before_start(&spec);
        assert_eq!(before.stats.currency, currency);
        assert_eq!(before.stats.total_trades, 0);
        let (session, _) = trading::start(
            &spec,
            &MarketSettings::default(),
            None,
            &ReplayCache::default(),
        )
        .await
        .unwrap();
        assert_eq!(session.report().stats, before.stats, "{instruments}");
    }
}
