//! External strategies: programs the operator registers (`[[external_strategies]]` in the
//! settings), run one child process per runner, speaking the JSON-lines protocol of
//! [`protocol`] (docs/strategy-protocol.md).
//!
//! Everything that must be trusted stays in the runner: the child only answers candles with
//! orders, which go through the same risk limits as a built-in strategy's; it never sees
//! credentials (its environment is empty) and runs under the limits of [`process`]. Any
//! breach of the protocol or of a limit (a late answer, a line too long, too many messages,
//! garbage, an exit) is a crash of that runner alone: [`ExternalStrategy::decide`] returns it,
//! the session stops calling the strategy, and the runner reports the crash to the node, whose
//! restart policy and breaker decide what follows.

pub mod process;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use runfleet_shared::config::ExternalStrategySettings;
use runfleet_shared::validate::{FieldError, refuse};
use rust_decimal::Decimal;
use serde_json::{Map, Value};
use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, warn};

use crate::broker::{BrokerPosition, Fill, OrderRequest, OrderSide};
use crate::catalog::{Instrument, timeframe_ms};
use crate::feed::Candle;
use crate::strategy::Context;
use process::StrategyProcess;
use protocol::{FromChild, LogLevel, OrderMessage, PROTOCOL, ToChild};

/// A registered external strategy: its settings and its compiled parameter schema.
#[derive(Debug)]
pub struct ExternalDefinition {
    /// Its `config.type`, kept for the life of the process (the registry is built once).
    pub name: &'static str,
    /// As the operator configured it.
    pub settings: ExternalStrategySettings,
    validator: jsonschema::Validator,
}

impl ExternalDefinition {
    /// Compiles `settings` (already checked by `Settings::validate`).
    pub fn new(settings: ExternalStrategySettings) -> Result<Self, String> {
        let validator = jsonschema::validator_for(&settings.parameters)
            .map_err(|e| format!("parameters is not a usable JSON Schema: {e}"))?;
        if timeframe_ms(&settings.timeframe).is_none() {
            return Err(format!(
                "timeframe {:?} is not a known timeframe",
                settings.timeframe
            ));
        }
        Ok(Self {
            name: Box::leak(settings.kind.clone().into_boxed_str()),
            settings,
            validator,
        })
    }

    /// Checks `config.parameters` against the schema; the first error names its field
    /// (`config.parameters.fast`).
    pub fn check_parameters(&self, parameters: &Map<String, Value>) -> Result<(), FieldError> {
        let instance = Value::Object(parameters.clone());
        let Some(e) = self.validator.iter_errors(&instance).next() else {
            return Ok(());
        };
        use jsonschema::error::ValidationErrorKind as K;
        let mut field = String::from("config.parameters");
        for segment in e
            .instance_path()
            .as_str()
            .split('/')
            .filter(|s| !s.is_empty())
        {
            field.push('.');
            field.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
        let message = match e.kind() {
            K::Required { property } => {
                field.push('.');
                field.push_str(property.as_str().unwrap_or("?"));
                "missing".to_owned()
            }
            K::AdditionalProperties { unexpected } => {
                if let Some(name) = unexpected.first() {
                    field.push('.');
                    field.push_str(name);
                }
                "unknown parameter for this strategy type".to_owned()
            }
            _ => e.masked().to_string(),
        };
        refuse(field, message)
    }

    /// The defaults the schema declares for absent top-level parameters.
    pub fn apply_defaults(&self, parameters: &mut Map<String, Value>) {
        let Some(props) = self.settings.parameters["properties"].as_object() else {
            return;
        };
        for (name, schema) in props {
            if let Some(d) = schema.get("default") {
                parameters.entry(name.clone()).or_insert_with(|| d.clone());
            }
        }
    }

    /// The timeframe a job runs on: `parameters.timeframe` when given, else the registered one.
    pub fn timeframe<'a>(&'a self, parameters: &'a Map<String, Value>) -> &'a str {
        parameters
            .get("timeframe")
            .and_then(Value::as_str)
            .unwrap_or(&self.settings.timeframe)
    }
}

/// The external strategies of a process, built once from the settings. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ExternalStrategies(Arc<Vec<Arc<ExternalDefinition>>>);

impl ExternalStrategies {
    /// From the settings' entries; a type that is also a built-in strategy's is refused.
    pub fn new(entries: &[ExternalStrategySettings]) -> Result<Self, String> {
        let mut defs = Vec::with_capacity(entries.len());
        for e in entries {
            if crate::strategy::strategy(&e.kind).is_some() {
                return Err(format!(
                    "external strategy {:?}: the type is a built-in strategy's",
                    e.kind
                ));
            }
            defs.push(Arc::new(
                ExternalDefinition::new(e.clone())
                    .map_err(|m| format!("external strategy {:?}: {m}", e.kind))?,
            ));
        }
        Ok(Self(Arc::new(defs)))
    }

    /// The one of `config.type` `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ExternalDefinition>> {
        self.0.iter().find(|d| d.name == name)
    }

    /// Every registered one, in the settings' order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ExternalDefinition>> {
        self.0.iter()
    }
}

/// One runner's external strategy: the child process and what the runner keeps of it (the
/// state it saved last, fills it has not been told of yet).
#[derive(Debug)]
pub struct ExternalStrategy {
    def: Arc<ExternalDefinition>,
    job: String,
    parameters: Value,
    instruments: Vec<&'static Instrument>,
    timeframe: String,
    timeframe_ms: i64,
    /// Its latest `state`, saved with the account; sent back in `hello` on a resume.
    state: Value,
    child: Option<StrategyProcess>,
    /// Fills to tell it of before the next candle.
    fills: Vec<Fill>,
    /// The positions after those fills, to send with them.
    positions: Option<Vec<BrokerPosition>>,
}

impl ExternalStrategy {
    /// The strategy of `def` for runner `job`, not started yet.
    pub fn new(
        def: Arc<ExternalDefinition>,
        job: &str,
        parameters: &Map<String, Value>,
        instruments: Vec<&'static Instrument>,
    ) -> Self {
        let timeframe = def.timeframe(parameters).to_owned();
        let timeframe_ms = timeframe_ms(&timeframe).unwrap_or(60_000) as i64;
        Self {
            def,
            job: job.to_owned(),
            parameters: Value::Object(parameters.clone()),
            instruments,
            timeframe,
            timeframe_ms,
            state: Value::Null,
            child: None,
            fills: Vec::new(),
            positions: None,
        }
    }

    /// Candle length, ms.
    pub fn timeframe_ms(&self) -> i64 {
        self.timeframe_ms
    }

    /// The state it saved last (`null` before any).
    pub fn state(&self) -> Value {
        self.state.clone()
    }

    /// Takes back a saved state, sent in `hello` when it starts.
    pub fn restore(&mut self, state: &Value) {
        self.state = state.clone();
    }

    /// Checks that its program can be run (exists and is executable): a missing one is a
    /// configuration failure of the node, not a crash to restart.
    pub fn check_command(&self) -> Result<(), String> {
        process::resolve(&self.def.settings.command).map(|_| ())
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(StrategyProcess::pid)
    }

    /// Starts the child and waits for its `ready` (within `start_deadline_ms`).
    pub async fn start(&mut self) -> Result<(), String> {
        let mut child = StrategyProcess::spawn(&self.def.settings, &self.job)?;
        let hello = ToChild::Hello {
            protocol: PROTOCOL,
            strategy: self.def.name,
            parameters: &self.parameters,
            instruments: self.instruments.iter().map(|i| (*i).into()).collect(),
            timeframe: &self.timeframe,
            timeframe_ms: self.timeframe_ms,
            state: &self.state,
        };
        let line = serde_json::to_vec(&hello).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_millis(self.def.settings.start_deadline_ms);
        let result = async {
            send(&mut child, &line, deadline).await?;
            let mut budget = self.def.settings.max_messages_per_candle;
            loop {
                match self.receive(&mut child, deadline, &mut budget).await? {
                    FromChild::Ready {} => return Ok(()),
                    FromChild::Orders { .. } => {
                        return Err("protocol error: orders before ready".to_owned());
                    }
                    FromChild::State { .. } | FromChild::Log { .. } => {}
                }
            }
        }
        .await;
        self.child = Some(child);
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.crash(e, "start").await),
        }
    }

    /// Tells it of a fill on the account (sent before the next candle).
    pub fn on_fill(&mut self, fill: &Fill) {
        self.fills.push(fill.clone());
    }

    /// The account's positions as of now: sent (as `account`) before the next candle when fills
    /// changed them since the last one.
    pub fn on_positions(&mut self, positions: &[BrokerPosition]) {
        if !self.fills.is_empty() {
            self.positions = Some(positions.to_vec());
        }
    }

    /// Sends a completed candle and reads its answer. `Err`: the strategy crashed (the child is
    /// killed by then).
    pub async fn decide(
        &mut self,
        ctx: &Context,
        candle: &Candle,
    ) -> Result<Vec<OrderRequest>, String> {
        let Some(mut child) = self.child.take() else {
            return Err("the strategy is not running".into());
        };
        let deadline = Instant::now() + Duration::from_millis(self.def.settings.answer_deadline_ms);
        let result = self.exchange(&mut child, ctx, candle, deadline).await;
        self.child = Some(child);
        match result {
            Ok(orders) => Ok(orders),
            Err(e) => Err(self.crash(e, "candle").await),
        }
    }

    async fn exchange(
        &mut self,
        child: &mut StrategyProcess,
        ctx: &Context,
        candle: &Candle,
        deadline: Instant,
    ) -> Result<Vec<OrderRequest>, String> {
        for fill in std::mem::take(&mut self.fills) {
            let line =
                serde_json::to_vec(&ToChild::Fill { fill: &fill }).map_err(|e| e.to_string())?;
            send(child, &line, deadline).await?;
        }
        if let Some(positions) = self.positions.take() {
            let msg = ToChild::Account {
                positions: positions.iter().map(Into::into).collect(),
            };
            let line = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
            send(child, &line, deadline).await?;
        }
        let msg = ToChild::Candle {
            instrument: ctx.instrument.name,
            candle,
            position: ctx.position,
            order_size: ctx.order_size,
        };
        let line = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        send(child, &line, deadline).await?;
        let mut budget = self.def.settings.max_messages_per_candle;
        loop {
            match self.receive(child, deadline, &mut budget).await? {
                FromChild::Orders { orders, state } => {
                    if let Some(state) = state {
                        self.state = state;
                    }
                    return orders
                        .iter()
                        .filter_map(|o| order(ctx, o).transpose())
                        .collect();
                }
                FromChild::Ready {} => return Err("protocol error: ready twice".into()),
                FromChild::State { .. } | FromChild::Log { .. } => {}
            }
        }
    }

    /// Reads one message, within the deadline and the message budget; keeps `state`, logs
    /// `log`.
    async fn receive(
        &mut self,
        child: &mut StrategyProcess,
        deadline: Instant,
        budget: &mut u32,
    ) -> Result<FromChild, String> {
        if *budget == 0 {
            return Err(format!(
                "more than {} messages in answer to one message (max_messages_per_candle)",
                self.def.settings.max_messages_per_candle
            ));
        }
        *budget -= 1;
        let line = match timeout_at(deadline, child.read_line()).await {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer within the deadline".into()),
        };
        let msg: FromChild = serde_json::from_slice(&line).map_err(|e| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
            format!("protocol error: {e} in {shown:?}")
        })?;
        match &msg {
            FromChild::State { state } => self.state = state.clone(),
            FromChild::Log { level, message } => {
                let (job, message) = (&self.job, truncate(message, 2_000));
                match level {
                    LogLevel::Debug => debug!(job = %job, message, "strategy log"),
                    LogLevel::Info => info!(job = %job, message, "strategy log"),
                    LogLevel::Warn => warn!(job = %job, message, "strategy log"),
                    LogLevel::Error => error!(job = %job, message, "strategy log"),
                }
            }
            _ => {}
        }
        Ok(msg)
    }

    /// Kills the child and says why the strategy crashed (with how the child ended, when it
    /// had).
    async fn crash(&mut self, reason: String, during: &str) -> String {
        let mut status = None;
        if let Some(child) = self.child.as_mut() {
            // A child that exited is reaped promptly; give it a moment to be seen as such.
            for _ in 0..20 {
                status = child.exit_status();
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            child.kill().await;
        }
        self.child = None;
        let reason = match status {
            Some(s) => format!("external strategy crashed ({during}): {reason}; the process {s}"),
            None => format!("external strategy crashed ({during}): {reason}"),
        };
        warn!(job = %self.job, strategy = self.def.name, error = %reason, "external strategy crashed");
        reason
    }

    /// Ends the child: `stop` then a short grace for a requested stop; at once otherwise (a
    /// fenced runner must not act further, a draining node hands back fast).
    pub async fn stop(&mut self, reason: &str, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if !grace.is_zero()
            && let Ok(line) = serde_json::to_vec(&ToChild::Stop { reason })
        {
            let deadline = Instant::now() + grace;
            if send(&mut child, &line, deadline).await.is_ok() {
                let _ = timeout_at(deadline, async {
                    while child.exit_status().is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
            }
        }
        child.kill().await;
        debug!(job = %self.job, strategy = self.def.name, reason, "external strategy ended");
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn send(child: &mut StrategyProcess, line: &[u8], deadline: Instant) -> Result<(), String> {
    match timeout_at(deadline, child.send(line)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot write to the strategy (exited?): {e}")),
        Err(_) => Err("the strategy does not read its input (deadline passed)".into()),
    }
}

/// The order a message asks for on the candle's instrument (`None`: nothing to trade).
fn order(ctx: &Context, msg: &OrderMessage) -> Result<Option<OrderRequest>, String> {
    let i = ctx.instrument;
    let check_instrument = |given: &Option<String>| match given {
        Some(name) if name != i.name => Err(format!(
            "protocol error: an order on {name} in answer to a candle of {}",
            i.name
        )),
        _ => Ok(()),
    };
    match msg {
        OrderMessage::Market {
            instrument,
            side,
            amount,
            reduce_only,
        } => {
            check_instrument(instrument)?;
            if *amount <= Decimal::ZERO {
                return Err(format!(
                    "protocol error: order amount {amount} is not above 0"
                ));
            }
            let o = OrderRequest::market(i, *side, *amount);
            Ok(Some(if *reduce_only { o.reduce_only() } else { o }))
        }
        OrderMessage::Target {
            instrument,
            position,
        } => {
            check_instrument(instrument)?;
            let diff = *position - ctx.position;
            if diff.is_zero() {
                return Ok(None);
            }
            let side = if diff > Decimal::ZERO {
                OrderSide::Buy
            } else {
                OrderSide::Sell
            };
            Ok(Some(OrderRequest::market(i, side, diff.abs())))
        }
    }
}
