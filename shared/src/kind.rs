//! Runner kinds: the seam between the fleet and what its runners do.
//!
//! The fleet (jobs, queue, store, leases, policy, lifecycle) knows nothing of what a runner
//! runs. A *runner kind* does: it declares the `config.type` values it runs and the JSON Schema
//! of their parameters, checks its part of a start request, and runs a job from its spec and
//! saved state until told to stop, publishing positions, stats and its saved state as it goes.
//! The trading kind (`runfleet_trading::TradingKind`) is the one built in; strategies written
//! by users, run as external processes, are meant to plug in here as another kind.
//!
//! Each binary builds one [`Kinds`] registry in its `main`: the orchestrator validates start
//! requests through it ([`Kinds::prepare`]) before it writes anything, and the worker node
//! runs every job through it ([`Kinds::run`]).
//!
//! Why a boxed future rather than an `async fn` in the trait: kinds are held as trait objects
//! (`Arc<dyn RunnerKind>`), and a trait with `async fn` methods cannot be one; one allocation
//! per run is nothing next to a run's life.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use crate::job::{JobSpec, Position, StartRunnerRequest, Stats, StopMode, StrategyConfig};
use crate::lease::LeaseDeadline;
use crate::validate::{FieldError, check_id, check_text, check_user_id, refuse};

/// Why a runner is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// A client asked, with this mode (flatten or hold).
    Requested(StopMode),
    /// The store refused this runner's lease (a newer epoch exists, or the node lost it), or
    /// the lease may have lapsed: stop at once without acting further, leave positions.
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
    /// The runner's complete saved state, stored with the job (the job hash's `account`
    /// field) and given back to [`RunnerKind::run`] as [`RunStart::resume`] when the job runs
    /// again. `None`: nothing to save yet.
    pub state: Option<SavedState>,
}

/// A runner's saved state, as the JSON text the store keeps: serialized once by the runner,
/// then shared, not copied, by its report, the heartbeat's record of what it last sent and the
/// store call that saves it. (As a `serde_json::Value` tree it cost each running runner several
/// times its text, twice over.) Cheap to clone; equal when the texts are.
#[derive(Clone, PartialEq, Eq)]
pub struct SavedState(Arc<str>);

impl SavedState {
    /// `value` serialized.
    pub fn of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(|text| Self(text.into()))
    }

    /// A state as the store gave it back. Not checked here: the runner kind parses it when it
    /// resumes, and refuses one it cannot read rather than taking it for a fresh start.
    pub fn from_text(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The state parsed.
    pub fn parse(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for SavedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SavedState({} bytes)", self.0.len())
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Why the run ended: the stop it was given, or `Fenced` when its lease passed.
    pub cause: StopCause,
    /// Positions closed by a flatten stop (`Some(0)` for hold; `None` when fenced or shut
    /// down).
    pub flattened: Option<u32>,
    /// `Some("FLATTEN_FAILED: ...")` when a flatten stop could not confirm every position flat.
    pub flatten_error: Option<String>,
    /// Final report.
    pub report: Report,
    /// `Some(reason)` when what the runner runs crashed (an external strategy's process broke
    /// the protocol, a limit, or exited): the node records a crash, as for a panic, and the
    /// restart policy and breaker decide what follows. `cause` is then `Shutdown` (positions
    /// held). Never set for a fenced runner, which records nothing.
    pub crashed: Option<String>,
}

impl RunOutcome {
    /// A run that ended as `cause` says, with `report`.
    pub fn stopped(cause: StopCause, report: Report) -> Self {
        Self {
            cause,
            flattened: None,
            flatten_error: None,
            report,
            crashed: None,
        }
    }

    /// A run whose strategy crashed for `reason`, leaving `report`.
    pub fn crashed(reason: String, report: Report) -> Self {
        Self {
            crashed: Some(reason),
            ..Self::stopped(StopCause::Shutdown, report)
        }
    }
}

/// Where a runner publishes its [`Report`]: the node reads the latest at every heartbeat, and
/// keeps the last one when the runner panics. Cheap to clone; clones share the report.
#[derive(Debug, Clone, Default)]
pub struct ReportSink(Arc<Mutex<Report>>);

impl ReportSink {
    /// A sink holding `first` until the runner publishes.
    pub fn new(first: Report) -> Self {
        Self(Arc::new(Mutex::new(first)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Report> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the report.
    pub fn publish(&self, report: Report) {
        *self.lock() = report;
    }

    /// The latest report.
    pub fn latest(&self) -> Report {
        self.lock().clone()
    }

    /// Takes the latest report out, leaving an empty one.
    pub fn take(&self) -> Report {
        std::mem::take(&mut *self.lock())
    }
}

/// What tells a runner to stop: a cause sent by the node, or its lease deadline passing. The
/// deadline passes by itself (see [`crate::lease`]), so a runner is fenced even when no
/// heartbeat fails first.
#[derive(Debug, Clone)]
pub struct StopSignal {
    rx: watch::Receiver<Option<StopCause>>,
    lease: LeaseDeadline,
}

impl StopSignal {
    /// A signal reading causes from `rx` and fencing at `lease`.
    pub fn new(rx: watch::Receiver<Option<StopCause>>, lease: LeaseDeadline) -> Self {
        Self { rx, lease }
    }

    /// A signal and the sender of its causes, fencing at `lease`.
    pub fn channel(lease: LeaseDeadline) -> (watch::Sender<Option<StopCause>>, Self) {
        let (tx, rx) = watch::channel(None);
        (tx, Self::new(rx, lease))
    }

    /// Why the runner must stop now, if it must: a cause sent, or `Fenced` once the lease has
    /// passed. Call it again right before acting: a process that was paused wakes with its
    /// timers overdue.
    pub fn now(&mut self) -> Option<StopCause> {
        if let Some(cause) = *self.rx.borrow_and_update() {
            return Some(cause);
        }
        self.lease.has_passed().then_some(StopCause::Fenced)
    }

    /// Whether the lease deadline has passed (whatever the node sent).
    pub fn fenced(&self) -> bool {
        self.lease.has_passed()
    }

    /// Waits until the runner must stop, and says why; `Shutdown` if the node dropped the
    /// sender. Cancel-safe.
    pub async fn stopped(&mut self) -> StopCause {
        loop {
            if let Some(cause) = self.now() {
                return cause;
            }
            tokio::select! {
                biased;
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return StopCause::Shutdown;
                    }
                }
                () = self.lease.passed() => return StopCause::Fenced,
            }
        }
    }
}

/// What a runner starts from.
#[derive(Debug)]
pub struct RunStart {
    /// The job to run (credentials still sealed).
    pub spec: Arc<JobSpec>,
    /// The state the job's previous run saved ([`Report::state`]), to resume exactly from.
    pub resume: Option<SavedState>,
    /// When to stop.
    pub stop: StopSignal,
    /// Where to publish reports, after every step.
    pub report: ReportSink,
}

/// One kind of runner. See the module documentation.
pub trait RunnerKind: Send + Sync + fmt::Debug + 'static {
    /// The kind's name (`trading`), for logs and docs.
    fn name(&self) -> &'static str;

    /// The `config.type` values a start request may name for this kind, as advertised (test
    /// only ones included only when this kind was built to accept them).
    fn config_types(&self) -> Vec<&'static str>;

    /// Whether a worker node runs a job of this `config.type` with this kind: every type it
    /// has, test-only ones included (the orchestrator decided what to admit).
    fn runs(&self, config_type: &str) -> bool;

    /// The brokers a start request of this kind may name.
    fn brokers(&self) -> &'static [&'static str];

    /// The JSON Schema of `config.parameters`, per `config.type` (an object keyed by type),
    /// for the API's documentation and clients' validation.
    fn parameter_schema(&self) -> Value;

    /// Fills in what a start request of this kind may leave out, so that the stored job says
    /// exactly what runs. Called before [`RunnerKind::validate`].
    fn apply_defaults(&self, config: &mut StrategyConfig);

    /// Checks the kind's part of a start request (its `config`); the fleet has checked the
    /// ids, broker, credentials and display name. The first refused field, named by its JSON
    /// path.
    fn validate(&self, req: &StartRunnerRequest) -> Result<(), FieldError>;

    /// What a runner of `spec` shows before it has published anything.
    fn before_start(&self, spec: &JobSpec) -> Report;

    /// Runs a job until its stop signal says why it must end, publishing its report after
    /// every step; resumes from `start.resume` exactly when given one. Stops as the cause
    /// says: flatten or hold on request, hold when fenced or shut down.
    ///
    /// A runner that cannot start (a spec it cannot run, a saved state it cannot read) returns
    /// `Err` with the reason: a configuration failure, which the node records as the job's
    /// failure at once (restarting it would fail the same way). A panic is caught by the node.
    fn run(&self, start: RunStart) -> BoxFuture<'static, Result<RunOutcome, String>>;
}

/// The runner kinds a binary has, built once in its `main`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Kinds {
    kinds: Vec<Arc<dyn RunnerKind>>,
}

static INSTALLED: OnceLock<Kinds> = OnceLock::new();

impl Kinds {
    /// No kind.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `kind` registered.
    pub fn with(mut self, kind: impl RunnerKind) -> Self {
        self.kinds.push(Arc::new(kind));
        self
    }

    /// Makes these the process' kinds for [`Kinds::installed`] (the first install wins) and
    /// returns them. The stores build a queued job's record from its spec alone, and its
    /// stats currency is the kind's to say ([`crate::job::JobRecord::queued`]).
    pub fn install(self) -> Self {
        let _ = INSTALLED.set(self.clone());
        self
    }

    /// The process' kinds, once a `main` installed them.
    pub fn installed() -> Option<&'static Kinds> {
        INSTALLED.get()
    }

    /// Every registered kind.
    pub fn iter(&self) -> impl Iterator<Item = &dyn RunnerKind> {
        self.kinds.iter().map(|k| k.as_ref())
    }

    /// The kind a start request of `config_type` is admitted for.
    fn admitting(&self, config_type: &str) -> Option<&dyn RunnerKind> {
        self.iter()
            .find(|k| k.config_types().contains(&config_type))
    }

    /// The kind a node runs a job of `config_type` with.
    pub fn running(&self, config_type: &str) -> Option<&dyn RunnerKind> {
        self.iter().find(|k| k.runs(config_type))
    }

    /// Fills in the defaults of a start request, then validates it: the fleet's envelope
    /// (ids, broker, credentials, display name), the `config.type`, then the kind's own
    /// checks. Returns the first refused field; nothing is written before this passes.
    pub fn prepare(&self, req: &mut StartRunnerRequest) -> Result<(), FieldError> {
        if let Some(kind) = self.admitting(&req.config.kind) {
            kind.apply_defaults(&mut req.config);
        }
        self.validate(req)
    }

    /// Validates a start request as [`Kinds::prepare`] does, without filling in defaults.
    pub fn validate(&self, req: &StartRunnerRequest) -> Result<(), FieldError> {
        check_user_id("userId", req.user_id.as_str())?;
        check_id("strategyId", req.strategy_id.as_str(), 128)?;
        let mut brokers: Vec<&str> = Vec::new();
        for b in self.iter().flat_map(|k| k.brokers().iter().copied()) {
            if !brokers.contains(&b) {
                brokers.push(b);
            }
        }
        if !brokers.contains(&req.broker_id.as_str()) {
            return refuse("brokerId", format!("must be one of {}", brokers.join(", ")));
        }
        check_text("credentials.apiKey", &req.credentials.api_key, 512)?;
        check_text("credentials.apiSecret", &req.credentials.api_secret, 512)?;
        check_text("config.name", &req.config.name, 128)?;
        let Some(kind) = self.admitting(&req.config.kind) else {
            let known: Vec<&str> = self.iter().flat_map(|k| k.config_types()).collect();
            return refuse(
                "config.type",
                format!("unknown strategy type; known: {}", known.join(", ")),
            );
        };
        kind.validate(req)
    }

    /// What a runner of `spec` shows before it has published anything (an empty report when
    /// no kind runs it).
    pub fn before_start(&self, spec: &JobSpec) -> Report {
        self.running(&spec.config.kind)
            .map(|k| k.before_start(spec))
            .unwrap_or_default()
    }

    /// Runs `start.spec` with its kind; a type no kind runs is a configuration failure.
    pub fn run(&self, start: RunStart) -> BoxFuture<'static, Result<RunOutcome, String>> {
        let config_type = start.spec.config.kind.clone();
        match self.running(&config_type) {
            Some(kind) => kind.run(start),
            None => {
                Box::pin(
                    async move { Err(format!("strategy type {config_type:?} is not built in")) },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::crypto::CredentialCipher;
    use crate::ids::JobId;

    /// A kind that runs until stopped and checks one parameter.
    #[derive(Debug)]
    struct Echo;

    impl RunnerKind for Echo {
        fn name(&self) -> &'static str {
            "echo"
        }
        fn config_types(&self) -> Vec<&'static str> {
            vec!["echo"]
        }
        fn runs(&self, config_type: &str) -> bool {
            config_type == "echo" || config_type == "echo-test"
        }
        fn brokers(&self) -> &'static [&'static str] {
            &["none"]
        }
        fn parameter_schema(&self) -> Value {
            json!({"echo": {"type": "object"}})
        }
        fn apply_defaults(&self, config: &mut StrategyConfig) {
            config.parameters.entry("times").or_insert(json!(1));
        }
        fn validate(&self, req: &StartRunnerRequest) -> Result<(), FieldError> {
            match req.config.parameters["times"].as_u64() {
                Some(1..=9) => Ok(()),
                _ => refuse("config.parameters.times", "must be 1 to 9"),
            }
        }
        fn before_start(&self, _spec: &JobSpec) -> Report {
            Report {
                stats: Stats {
                    currency: "EUR".into(),
                    ..Stats::default()
                },
                ..Report::default()
            }
        }
        fn run(&self, mut start: RunStart) -> BoxFuture<'static, Result<RunOutcome, String>> {
            Box::pin(async move {
                let cause = start.stop.stopped().await;
                Ok(RunOutcome::stopped(cause, start.report.latest()))
            })
        }
    }

    fn request(f: impl FnOnce(&mut Value)) -> StartRunnerRequest {
        let mut v = json!({
            "userId": "u1", "strategyId": "s1", "brokerId": "none",
            "credentials": {"apiKey": "k", "apiSecret": "s"},
            "config": {"name": "n", "type": "echo"}
        });
        f(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn spec(config_type: &str) -> Arc<JobSpec> {
        let req = request(|v| v["config"]["type"] = config_type.into());
        let cipher = CredentialCipher::ephemeral();
        Arc::new(JobSpec::sealed(JobId::new("job-1"), req, &cipher).unwrap())
    }

    #[test]
    fn the_envelope_then_the_type_then_the_kind_name_the_field() {
        let kinds = Kinds::new().with(Echo);
        let mut ok = request(|_| {});
        kinds.prepare(&mut ok).unwrap();
        assert_eq!(ok.config.parameters["times"], 1, "defaults filled in");
        let field = |f: fn(&mut Value)| {
            let mut req = request(f);
            kinds.prepare(&mut req).unwrap_err().field
        };
        assert_eq!(field(|v| v["userId"] = "system".into()), "userId");
        assert_eq!(field(|v| v["strategyId"] = "a b".into()), "strategyId");
        assert_eq!(field(|v| v["brokerId"] = "deribit".into()), "brokerId");
        assert_eq!(
            field(|v| v["credentials"]["apiKey"] = "".into()),
            "credentials.apiKey"
        );
        assert_eq!(field(|v| v["config"]["name"] = " ".into()), "config.name");
        // Run but not admitted (a test-only type, say): refused as unknown.
        let mut req = request(|v| v["config"]["type"] = "echo-test".into());
        let e = kinds.prepare(&mut req).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("config.type", "unknown strategy type; known: echo")
        );
        assert_eq!(
            field(|v| v["config"]["parameters"] = json!({"times": 10})),
            "config.parameters.times"
        );
        assert_eq!(
            Kinds::new().validate(&ok).unwrap_err().field,
            "brokerId",
            "no kind, no broker"
        );
    }

    #[tokio::test]
    async fn a_job_runs_with_the_kind_that_runs_its_type() {
        let kinds = Kinds::new().with(Echo);
        assert_eq!(kinds.before_start(&spec("echo")).stats.currency, "EUR");
        assert_eq!(kinds.before_start(&spec("other")), Report::default());
        let (tx, stop) = StopSignal::channel(LeaseDeadline::unarmed());
        let run = kinds.run(RunStart {
            spec: spec("echo-test"),
            resume: None,
            stop: stop.clone(),
            report: ReportSink::default(),
        });
        tx.send_replace(Some(StopCause::Requested(StopMode::Hold)));
        let out = run.await.unwrap();
        assert_eq!(out.cause, StopCause::Requested(StopMode::Hold));
        let e = kinds
            .run(RunStart {
                spec: spec("other"),
                resume: None,
                stop,
                report: ReportSink::default(),
            })
            .await
            .unwrap_err();
        assert_eq!(e, "strategy type \"other\" is not built in");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_signal_fences_at_its_deadline_and_shuts_down_without_a_sender() {
        let lease = LeaseDeadline::at(Instant::now() + Duration::from_secs(3));
        let (tx, mut stop) = StopSignal::channel(lease);
        assert_eq!(stop.now(), None);
        let started = Instant::now();
        assert_eq!(stop.stopped().await, StopCause::Fenced);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(stop.fenced());
        // A cause sent wins over the deadline.
        tx.send_replace(Some(StopCause::Shutdown));
        assert_eq!(stop.now(), Some(StopCause::Shutdown));
        let (tx, mut stop) = StopSignal::channel(LeaseDeadline::unarmed());
        drop(tx);
        assert_eq!(stop.stopped().await, StopCause::Shutdown);
    }

    #[test]
    fn a_report_sink_keeps_the_latest_report() {
        let sink = ReportSink::default();
        let report = Report {
            state: Some(SavedState::of(&json!({"n": 1})).unwrap()),
            ..Report::default()
        };
        sink.clone().publish(report.clone());
        assert_eq!(sink.latest(), report);
        assert_eq!(sink.take(), report);
        assert_eq!(sink.latest(), Report::default());
    }

    #[test]
    fn a_saved_state_is_its_json_text_and_parses_back() {
        let value = json!({"version": 1, "ledger": {"trades": [1, 2]}});
        let state = SavedState::of(&value).unwrap();
        assert_eq!(state.as_str(), r#"{"ledger":{"trades":[1,2]},"version":1}"#);
        assert_eq!(state.parse().unwrap(), value);
        assert_eq!(SavedState::from_text(state.as_str()), state);
        assert_eq!(format!("{state:?}"), "SavedState(39 bytes)");
        // A text the store gave back is kept as is; reading it is the kind's to refuse.
        assert!(SavedState::from_text("{not json").parse().is_err());
    }
}
