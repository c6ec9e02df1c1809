//! A trading session: one runner's strategy, risk limits, broker and ledger, driven one feed
//! step at a time. [`Session::step`] is everything that happens on a tick, in this order:
//!
//! 1. the broker sees the new prices (resting limit orders may fill);
//! 2. risk exits: every position whose loss reached the stop-loss or whose gain reached the
//!    take-profit is closed at market (its resting orders cancelled first);
//! 3. the strategy sees each candle of its timeframe that completed, and its orders go through
//!    the risk limits (clipped or refused) to the broker;
//! 4. positions are read back from the broker, the source of truth.
//!
//! Sessions are sync-free of time: the runner ([`crate::runner::run`]) paces them with the feed, and
//! tests drive them bar by bar.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::catalog::{self, Instrument};
use runfleet_shared::job::Position;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::account::{Holding, round_half_away, round_money};
use super::broker::{Broker, BrokerError, BrokerPosition, Fill, OrderRequest, Placed};
use super::feed::{Bar, CandleBuilder};
use super::risk::{Decision, Exit, RiskLimits};
use super::stats::Ledger;
use super::strategy::{Context, RunningStrategy};
use runfleet_shared::kind::{Report, SavedState};

/// Version of the saved state ([`Report::state`]).
pub const STATE_VERSION: u64 = 1;

/// Counts of what the runtime did, kept with the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Events {
    /// Feed steps taken.
    pub ticks: u64,
    /// Orders the risk limits cut.
    pub clipped: u64,
    /// Orders the risk limits refused.
    pub refused: u64,
    /// Orders the broker refused.
    pub rejected: u64,
    /// Positions closed by a stop-loss.
    pub stop_losses: u64,
    /// Positions closed by a take-profit.
    pub take_profits: u64,
}

/// How a flatten ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flatten {
    /// Positions closed and confirmed flat.
    pub closed: u32,
    /// `FLATTEN_FAILED: ...` when positions were still open after the last attempt.
    pub error: Option<String>,
    /// The fills of the closing orders.
    pub fills: Vec<Fill>,
}

/// One runner's trading state.
#[derive(Debug)]
pub struct Session<B> {
    broker: B,
    strategy: RunningStrategy,
    risk: RiskLimits,
    ledger: Ledger,
    instruments: Vec<&'static Instrument>,
    candles: BTreeMap<String, CandleBuilder>,
    marks: BTreeMap<String, Decimal>,
    positions: Vec<BrokerPosition>,
    events: Events,
    /// Fills booked since the current step (or flatten) began.
    fills: Vec<Fill>,
    /// Why the strategy crashed, once it has: it is not called again.
    crashed: Option<String>,
}

impl<B: Broker> Session<B> {
    /// A fresh session.
    pub fn new(
        broker: B,
        strategy: impl Into<RunningStrategy>,
        risk: RiskLimits,
        instruments: Vec<&'static Instrument>,
    ) -> Self {
        let strategy = strategy.into();
        let tf = strategy.timeframe_ms();
        Self {
            broker,
            strategy,
            risk,
            ledger: Ledger::new(&instruments),
            candles: instruments
                .iter()
                .map(|i| (i.name.to_owned(), CandleBuilder::new(tf)))
                .collect(),
            marks: BTreeMap::new(),
            positions: Vec::new(),
            events: Events::default(),
            fills: Vec::new(),
            crashed: None,
            instruments,
        }
    }

    /// A session resumed from a saved state (see [`Session::state`]) over a broker that
    /// already holds the account. The ledger's open trades are reconciled with the broker's
    /// positions before anything else happens.
    pub async fn resume(
        broker: B,
        strategy: impl Into<RunningStrategy>,
        risk: RiskLimits,
        instruments: Vec<&'static Instrument>,
        saved: &Value,
    ) -> Result<Self, String> {
        let version = saved["version"].as_u64();
        if version != Some(STATE_VERSION) {
            return Err(format!(
                "saved state version {version:?}, expected {STATE_VERSION}"
            ));
        }
        let mut s = Self::new(broker, strategy, risk, instruments);
        let field = |name: &str| saved.get(name).cloned().unwrap_or(Value::Null);
        s.ledger = serde_json::from_value(field("ledger")).map_err(|e| format!("ledger: {e}"))?;
        s.events = serde_json::from_value(field("events")).map_err(|e| format!("events: {e}"))?;
        s.marks = serde_json::from_value(field("marks")).map_err(|e| format!("marks: {e}"))?;
        let candles: BTreeMap<String, CandleBuilder> =
            serde_json::from_value(field("candles")).map_err(|e| format!("candles: {e}"))?;
        s.candles.extend(candles);
        s.strategy
            .restore(&field("strategy"))
            .map_err(|e| format!("strategy: {e}"))?;
        s.refresh().await.map_err(|e| e.to_string())?;
        let held: Vec<(String, Decimal)> = s
            .positions
            .iter()
            .map(|p| (p.instrument.clone(), p.size))
            .collect();
        let fixed = s.ledger.reconcile(&held);
        if fixed > 0 {
            warn!(
                fixed,
                "resumed ledger disagreed with the broker's positions; the broker's win"
            );
        }
        Ok(s)
    }

    /// The broker.
    pub fn broker(&self) -> &B {
        &self.broker
    }

    /// The broker, to trade on it directly (tests).
    pub fn broker_mut(&mut self) -> &mut B {
        &mut self.broker
    }

    /// The trade ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the runtime did so far.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The instruments traded.
    pub fn instruments(&self) -> &[&'static Instrument] {
        &self.instruments
    }

    /// The strategy's candle length.
    pub fn timeframe_ms(&self) -> i64 {
        self.strategy.timeframe_ms()
    }

    /// Starts the strategy (an external one's process). `Err`: it crashed starting.
    pub async fn start_strategy(&mut self) -> Result<(), String> {
        let started = self.strategy.start().await;
        if let Err(e) = &started {
            self.crashed = Some(e.clone());
        }
        started
    }

    /// Ends the strategy (see [`RunningStrategy::stop`]).
    pub async fn stop_strategy(&mut self, reason: &str, grace: Duration) {
        self.strategy.stop(reason, grace).await;
    }

    /// Why the strategy crashed, once it has: the session no longer calls it, and the runner
    /// reports the crash.
    pub fn crashed(&self) -> Option<&str> {
        self.crashed.as_deref()
    }

    /// The strategy (its process id, for tests and tools).
    pub fn strategy(&self) -> &RunningStrategy {
        &self.strategy
    }

    /// The positions as of the last step.
    pub fn positions(&self) -> &[BrokerPosition] {
        &self.positions
    }

    fn size(&self, instrument: &str) -> Decimal {
        self.positions
            .iter()
            .find(|p| p.instrument == instrument)
            .map_or(Decimal::ZERO, |p| p.size)
    }

    async fn refresh(&mut self) -> Result<(), BrokerError> {
        self.positions = self.broker.positions().await?;
        Ok(())
    }

    fn book(&mut self, fill: &Fill) {
        self.fills.push(fill.clone());
        self.strategy.on_fill(fill);
        match catalog::instrument(&fill.instrument) {
            Some(i) => {
                if let Some(t) = self.ledger.record(i, fill) {
                    debug!(instrument = %t.instrument, pnl = %t.pnl, "trade closed");
                }
            }
            None => warn!(instrument = %fill.instrument, "fill of an unknown instrument ignored"),
        }
    }

    /// One feed step (see the module documentation). Returns the fills it booked.
    pub async fn step(&mut self, bars: &[Bar]) -> Vec<Fill> {
        self.fills.clear();
        self.events.ticks += 1;
        for bar in bars {
            let price = bar.candle.close;
            self.marks.insert(bar.instrument.name.to_owned(), price);
            for fill in self.broker.on_price(bar.instrument, price) {
                self.book(&fill);
            }
        }
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "positions unavailable; skipping this step");
            return std::mem::take(&mut self.fills);
        }
        self.enforce_exits().await;
        for bar in bars {
            let Some(builder) = self.candles.get_mut(bar.instrument.name) else {
                continue;
            };
            for candle in builder.push(bar.candle) {
                if self.crashed.is_some() {
                    break;
                }
                let ctx = Context {
                    instrument: bar.instrument,
                    position: self.size(bar.instrument.name),
                    order_size: self.risk.max_position(bar.instrument),
                };
                self.strategy.on_positions(&self.positions);
                match self.strategy.on_candle(&ctx, &candle).await {
                    Ok(orders) => {
                        for order in orders {
                            self.submit(order).await;
                        }
                    }
                    Err(e) => self.crashed = Some(e),
                }
            }
        }
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "positions unavailable after the step");
        }
        std::mem::take(&mut self.fills)
    }

    /// Closes the position on `instrument` at market and books it (a no-op when flat).
    pub async fn close(
        &mut self,
        instrument: &'static Instrument,
    ) -> Result<Option<Fill>, BrokerError> {
        let fill = self.broker.close_position(instrument).await?;
        if let Some(f) = &fill {
            self.book(f);
        }
        self.refresh().await?;
        Ok(fill)
    }

    async fn enforce_exits(&mut self) {
        let exits: Vec<(&'static Instrument, Exit)> = self
            .positions
            .iter()
            .filter_map(|p| {
                let i = catalog::instrument(&p.instrument)?;
                let mark = *self.marks.get(&p.instrument)?;
                let holding = Holding {
                    size: p.size,
                    entry_price: p.entry_price,
                    realized_pnl: p.realized_pnl,
                };
                self.risk.exit(i, &holding, mark).map(|e| (i, e))
            })
            .collect();
        for (instrument, exit) in exits {
            self.cancel_orders(Some(instrument.name)).await;
            match self.broker.close_position(instrument).await {
                Ok(Some(fill)) => {
                    debug!(instrument = instrument.name, ?exit, price = %fill.price, "risk exit");
                    match exit {
                        Exit::StopLoss => self.events.stop_losses += 1,
                        Exit::TakeProfit => self.events.take_profits += 1,
                    }
                    self.book(&fill);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(instrument = instrument.name, ?exit, error = %e, "risk exit failed; retrying next tick")
                }
            }
        }
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "positions unavailable after risk exits");
        }
    }

    /// Places an order through the risk limits (reduce-only orders always pass: they can only
    /// shrink a position). Returns what the broker did with it, if it got there.
    pub async fn submit(&mut self, mut order: OrderRequest) -> Option<Placed> {
        if !order.reduce_only {
            let resting: Decimal = match self.broker.open_orders().await {
                Ok(orders) => orders
                    .iter()
                    .filter(|o| {
                        o.instrument == order.instrument.name
                            && o.side == order.side
                            && !o.reduce_only
                    })
                    .map(|o| o.amount)
                    .sum(),
                Err(e) => {
                    warn!(error = %e, "open orders unavailable; order dropped");
                    return None;
                }
            };
            let position = self.size(order.instrument.name);
            match self.risk.check(
                order.instrument,
                order.side,
                order.amount,
                position,
                resting,
            ) {
                Decision::Accept => {}
                Decision::Clip(amount) => {
                    debug!(instrument = order.instrument.name, asked = %order.amount, %amount, "order clipped to maxPositionSize");
                    self.events.clipped += 1;
                    order.amount = amount;
                }
                Decision::Refuse => {
                    debug!(instrument = order.instrument.name, asked = %order.amount, "order refused: maxPositionSize reached");
                    self.events.refused += 1;
                    return None;
                }
            }
        }
        match self.broker.place(order).await {
            Ok(placed) => {
                if let Placed::Filled(fill) = &placed {
                    self.book(fill);
                    if let Err(e) = self.refresh().await {
                        warn!(error = %e, "positions unavailable after a fill");
                    }
                }
                Some(placed)
            }
            Err(e) => {
                debug!(instrument = order.instrument.name, error = %e, "order rejected by the broker");
                self.events.rejected += 1;
                None
            }
        }
    }

    async fn cancel_orders(&mut self, instrument: Option<&str>) {
        match self.broker.open_orders().await {
            Ok(orders) => {
                for o in orders
                    .iter()
                    .filter(|o| instrument.is_none_or(|i| o.instrument == i))
                {
                    if let Err(e) = self.broker.cancel(o.id).await {
                        warn!(order = o.id, error = %e, "cancel failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "open orders unavailable; none cancelled"),
        }
    }

    /// Cancels every open order and closes every position at market, then confirms from the
    /// broker's positions that each is flat; up to `attempts` rounds, `pause` apart.
    pub async fn flatten(&mut self, attempts: u32, pause: Duration) -> Flatten {
        self.fills.clear();
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut last_error = None;
        let mut still_open: Vec<BrokerPosition> = Vec::new();
        for attempt in 1..=attempts.max(1) {
            self.cancel_orders(None).await;
            let open = match self.broker.positions().await {
                Ok(p) => p
                    .into_iter()
                    .filter(|p| !p.size.is_zero())
                    .collect::<Vec<_>>(),
                Err(e) => {
                    last_error = Some(e.to_string());
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            for p in &open {
                let Some(instrument) = catalog::instrument(&p.instrument) else {
                    last_error = Some(format!("unknown instrument {}", p.instrument));
                    continue;
                };
                match self.broker.close_position(instrument).await {
                    Ok(Some(fill)) => {
                        self.book(&fill);
                        closed.insert(p.instrument.clone());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(instrument = instrument.name, attempt, error = %e, "flatten: close failed");
                        last_error = Some(e.to_string());
                    }
                }
            }
            // Confirm from the broker's own positions, never from what the orders said.
            match self.broker.positions().await {
                Ok(p) => {
                    still_open = p.into_iter().filter(|p| !p.size.is_zero()).collect();
                    if still_open.is_empty() {
                        break;
                    }
                }
                Err(e) => last_error = Some(e.to_string()),
            }
            if attempt < attempts {
                tokio::time::sleep(pause).await;
            }
        }
        if let Err(e) = self.refresh().await {
            warn!(error = %e, "positions unavailable after flatten");
        }
        let open_now: BTreeSet<&str> = self
            .positions
            .iter()
            .filter(|p| !p.size.is_zero())
            .map(|p| p.instrument.as_str())
            .collect();
        let flat = closed
            .iter()
            .filter(|i| !open_now.contains(i.as_str()))
            .count() as u32;
        let error = (!open_now.is_empty() || !still_open.is_empty()).then(|| {
            let left: Vec<String> = self
                .positions
                .iter()
                .map(|p| format!("{} {}", p.instrument, p.size.normalize()))
                .collect();
            let mut msg = format!(
                "FLATTEN_FAILED: {} position(s) still open after {} attempt(s): {}",
                left.len().max(still_open.len()),
                attempts.max(1),
                left.join(", ")
            );
            if let Some(e) = &last_error {
                msg.push_str(&format!("; last error: {e}"));
            }
            msg
        });
        if let Some(e) = &error {
            warn!(error = %e, "flatten failed");
        }
        Flatten {
            closed: flat,
            error,
            fills: std::mem::take(&mut self.fills),
        }
    }

    /// Open positions as the API shows them, marked at the latest feed price.
    pub fn report_positions(&self) -> Vec<Position> {
        self.positions
            .iter()
            .filter(|p| !p.size.is_zero())
            .filter_map(|p| {
                let i = catalog::instrument(&p.instrument)?;
                let mark = self
                    .marks
                    .get(&p.instrument)
                    .copied()
                    .unwrap_or(p.entry_price);
                let holding = Holding {
                    size: p.size,
                    entry_price: p.entry_price,
                    realized_pnl: p.realized_pnl,
                };
                Some(Position {
                    instrument_name: p.instrument.clone(),
                    side: holding.side(),
                    amount: p.size.abs().normalize(),
                    entry_price: round_half_away(p.entry_price, 8),
                    mark_price: mark.normalize(),
                    unrealized_pnl: round_money(holding.unrealized(i, mark)),
                    realized_pnl: p.realized_pnl.normalize(),
                    currency: i.settlement().to_owned(),
                })
            })
            .collect()
    }

    /// Everything needed to resume the session elsewhere (the feed's position is added by the
    /// runner): the broker's account, the ledger, the strategy's and the candle builders'
    /// state, the latest prices and the event counts.
    pub fn state(&self) -> Value {
        json!({
            "version": STATE_VERSION,
            "broker": self.broker.state(),
            "ledger": self.ledger,
            "strategy": self.strategy.state(),
            "candles": self.candles,
            "marks": self.marks,
            "events": self.events,
        })
    }

    /// Positions, stats and the saved state.
    pub fn report(&self) -> Report {
        self.report_with(None)
    }

    /// [`Session::report`], the feed's position (a [`crate::feed::MarketFeed::state`]) saved
    /// with the state as its `feed` when given.
    pub fn report_with(&self, feed: Option<Value>) -> Report {
        let mut state = self.state();
        if let Some(feed) = feed {
            state["feed"] = feed;
        }
        Report {
            positions: self.report_positions(),
            stats: self.ledger.stats(),
            // A `Value` always serializes.
            state: SavedState::of(&state).ok(),
        }
    }
}
