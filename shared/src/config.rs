//! Configuration: one [`Settings`] struct for every runfleet process, loaded in layers.
//!
//! 1. built-in defaults ([`Settings::default`]),
//! 2. an optional TOML file (`--config FILE`),
//! 3. environment variables `RUNFLEET__SECTION__KEY` (for example `RUNFLEET__REDIS__URL`,
//!    `RUNFLEET__NODE__CAPACITY`).
//!
//! The result is validated once after loading; a bad value stops the process at start-up with
//! a message naming the setting. docs/configuration.md lists every key.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tier::TierLimits;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed.
    #[error("configuration could not be loaded: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("invalid setting {key}: {reason}")]
    Invalid {
        /// The setting, as `section.key`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Every setting of a runfleet process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The Redis that holds all shared state.
    pub redis: RedisSettings,
    /// Which queue backend hands jobs to worker nodes.
    pub queue: QueueSettings,
    /// RabbitMQ, when `queue.backend = "rabbitmq"`.
    pub rabbitmq: RabbitMqSettings,
    /// The orchestrator's HTTP listener.
    pub http: HttpSettings,
    /// Worker-node behaviour.
    pub node: NodeSettings,
    /// Heartbeats and leases.
    pub heartbeat: HeartbeatSettings,
    /// Concurrent-runner limit per tier.
    pub tiers: TierLimits,
    /// Keys and secrets.
    pub security: SecuritySettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// The market the trading runner kind trades on (read by `runfleet-trading` only).
    pub market: MarketSettings,
    /// Restarts of crashed runners.
    pub restart: RestartSettings,
    /// Circuit breaker per user strategy.
    pub breaker: BreakerSettings,
    /// The crash sweep the orchestrators run.
    pub sweep: SweepSettings,
    /// Switches meant for tests and diagnosis.
    pub testing: TestingSettings,
    /// Fleet-wide backpressure.
    pub limits: LimitSettings,
    /// The orchestrators' `/metrics` endpoint.
    pub metrics: MetricsSettings,
    /// The runner lifecycle event stream.
    pub events: EventSettings,
    /// The admin audit trail.
    pub admin_audit: AdminAuditSettings,
    /// Per-key request rate limits.
    pub rate_limits: RateLimitSettings,
    /// Strategies the operator registers as programs run by the trading kind, one child
    /// process per runner (docs/strategy-protocol.md). Orchestrators and worker nodes must
    /// read the same list.
    pub external_strategies: Vec<ExternalStrategySettings>,
}

/// One external strategy: a program the operator registers, which users start by its `type`
/// exactly like a built-in strategy. Users never send commands or code: only this entry says
/// what runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalStrategySettings {
    /// The `config.type` that selects it: 1 to 64 of `a-z`, `0-9`, `-`, `_`, not a built-in
    /// strategy's.
    #[serde(rename = "type")]
    pub kind: String,
    /// The program, run directly (no shell): an absolute path or a name looked up in `PATH`
    /// of the worker node.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// A JSON Schema of `config.parameters` (an object schema). Start requests are validated
    /// against it before anything is written.
    #[serde(default = "ExternalStrategySettings::any_object")]
    pub parameters: serde_json::Value,
    /// What it trades when a start request names no instrument.
    #[serde(default)]
    pub default_instruments: Vec<String>,
    /// Candle length when `config.parameters.timeframe` is not given (`1m`).
    #[serde(default = "ExternalStrategySettings::default_timeframe")]
    pub timeframe: String,
    /// Address-space limit of the child (RLIMIT_AS), MiB.
    #[serde(default = "ExternalStrategySettings::default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// CPU time limit of the child (RLIMIT_CPU), seconds over its whole life.
    #[serde(default = "ExternalStrategySettings::default_cpu_seconds")]
    pub cpu_seconds: u64,
    /// How long the child has to answer `hello` with `ready`, ms (interpreters start slowly).
    #[serde(default = "ExternalStrategySettings::default_start_deadline_ms")]
    pub start_deadline_ms: u64,
    /// How long the child has to answer each candle with its orders, ms.
    #[serde(default = "ExternalStrategySettings::default_answer_deadline_ms")]
    pub answer_deadline_ms: u64,
    /// Longest line the child may write to stdout, bytes.
    #[serde(default = "ExternalStrategySettings::default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Most messages the child may send in answer to one candle (its orders included).
    #[serde(default = "ExternalStrategySettings::default_max_messages_per_candle")]
    pub max_messages_per_candle: u32,
    /// Bytes of the child's stderr copied into the runner's logs; the rest is read and
    /// dropped.
    #[serde(default = "ExternalStrategySettings::default_stderr_bytes")]
    pub stderr_bytes: usize,
    /// Working directory of the child (the node's own when absent).
    #[serde(default)]
    pub workdir: Option<String>,
    /// User id the child runs as (the node's when absent; setting it needs the node to run as
    /// root).
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group id the child runs as.
    #[serde(default)]
    pub gid: Option<u32>,
}

impl ExternalStrategySettings {
    /// An entry running `command` with the defaults.
    pub fn new(kind: impl Into<String>, command: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            command: command.into(),
            args: Vec::new(),
            parameters: Self::any_object(),
            default_instruments: Vec::new(),
            timeframe: Self::default_timeframe(),
            memory_limit_mb: Self::default_memory_limit_mb(),
            cpu_seconds: Self::default_cpu_seconds(),
            start_deadline_ms: Self::default_start_deadline_ms(),
            answer_deadline_ms: Self::default_answer_deadline_ms(),
            max_line_bytes: Self::default_max_line_bytes(),
            max_messages_per_candle: Self::default_max_messages_per_candle(),
            stderr_bytes: Self::default_stderr_bytes(),
            workdir: None,
            uid: None,
            gid: None,
        }
    }

    fn any_object() -> serde_json::Value {
        serde_json::json!({"type": "object"})
    }
    fn default_timeframe() -> String {
        "1m".into()
    }
    fn default_memory_limit_mb() -> u64 {
        512
    }
    fn default_cpu_seconds() -> u64 {
        3_600
    }
    fn default_start_deadline_ms() -> u64 {
        10_000
    }
    fn default_answer_deadline_ms() -> u64 {
        2_000
    }
    fn default_max_line_bytes() -> usize {
        65_536
    }
    fn default_max_messages_per_candle() -> u32 {
        64
    }
    fn default_stderr_bytes() -> usize {
        65_536
    }

    /// Checks the entry's own values (whether its type clashes with a built-in strategy is
    /// the trading kind's to say): the name, the command, the limits, and that `parameters`
    /// is a valid JSON Schema of an object.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = (1..=64).contains(&self.kind.len())
            && self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err("type must be 1 to 64 of a-z, 0-9, '-', '_'".into());
        }
        if self.command.trim().is_empty() {
            return Err("command must be set".into());
        }
        if self.memory_limit_mb < 16 || self.cpu_seconds == 0 {
            return Err("memory_limit_mb must be at least 16 and cpu_seconds at least 1".into());
        }
        if self.answer_deadline_ms == 0 || self.start_deadline_ms == 0 {
            return Err("answer_deadline_ms and start_deadline_ms must be at least 1".into());
        }
        if self.max_line_bytes < 256 || self.max_messages_per_candle == 0 {
            return Err(
                "max_line_bytes must be at least 256 and max_messages_per_candle at least 1".into(),
            );
        }
        if self.parameters.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err("parameters must be a JSON Schema with \"type\": \"object\"".into());
        }
        jsonschema::meta::validate(&self.parameters)
            .map_err(|e| format!("parameters is not a valid JSON Schema: {e}"))?;
        jsonschema::validator_for(&self.parameters)
            .map_err(|e| format!("parameters cannot be used as a JSON Schema: {e}"))?;
        Ok(())
    }
}

/// The fleet's runner lifecycle event stream (`<prefix>:events`) and each job's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// Events the stream keeps (approximately: trimmed with `MAXLEN ~`).
    pub max_len: u64,
    /// Events older than this are trimmed from the stream, and a job's history expires this
    /// long after its last event.
    pub max_age_ms: u64,
    /// Events a live client (`GET /v1/events`) may fall behind before it is dropped; it then
    /// resumes with `Last-Event-ID`. Bounds each orchestrator's buffer.
    pub live_buffer: usize,
    /// Event streams one user key may hold open on one orchestrator at once; one more is
    /// refused with 429 until one closes (the admin key is not limited). Bounds what a leaked or
    /// buggy client can hold of an orchestrator's connections and buffers.
    pub max_streams_per_key: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_len: 100_000,
            max_age_ms: 7 * 24 * 3_600_000,
            live_buffer: 1024,
            max_streams_per_key: 16,
        }
    }
}

/// Per-key request rate limits, each orchestrator on its own (see docs/api.md). A user key
/// over a limit is answered 429 `rate_limited` with a Retry-After, before anything is written.
/// The admin key is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Off: no limits at all.
    pub enabled: bool,
    /// Starts per key per minute, sustained.
    pub starts_per_minute: u32,
    /// Starts a key may make at once before the per-minute rate applies.
    pub starts_burst: u32,
    /// Stops per key per minute, sustained.
    pub stops_per_minute: u32,
    /// Stops a key may make at once.
    pub stops_burst: u32,
    /// Every other call (status, runner, entitlement reads) per key per minute, sustained.
    pub reads_per_minute: u32,
    /// Reads a key may make at once.
    pub reads_burst: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            starts_per_minute: 30,
            starts_burst: 10,
            stops_per_minute: 60,
            stops_burst: 20,
            reads_per_minute: 600,
            reads_burst: 60,
        }
    }
}

/// The orchestrators' Prometheus endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` without a key (scrapers on a private network); otherwise it needs
    /// the admin key.
    pub public: bool,
}

/// The admin audit trail: every admin action, kept in a capped Redis stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminAuditSettings {
    /// Entries kept; the oldest are trimmed as new ones are appended.
    pub max_entries: u64,
}

impl Default for AdminAuditSettings {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
        }
    }
}

/// Fleet-wide backpressure: past these, starts are refused with a Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Runners holding a slot (queued, running or waiting for a restart) fleet-wide (503).
    pub max_runners: u32,
    /// Jobs waiting in the queue (429): the queue never grows past this.
    pub max_queued: u32,
    /// The Retry-After given with those refusals.
    pub retry_after_ms: u64,
    /// Runners one `POST /v1/runners/batch` may start.
    pub batch_max: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_runners: 10_000,
            max_queued: 10_000,
            retry_after_ms: 5_000,
            batch_max: 1_000,
        }
    }
}

/// When and how often a crashed runner is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartSettings {
    /// Restarts allowed within `window_ms`; one more failure fails the job.
    pub max_restarts: u32,
    /// The window the restarts are counted in.
    pub window_ms: u64,
    /// Delay before the first restart; doubles with each further one.
    pub base_delay_ms: u64,
    /// The longest delay.
    pub max_delay_ms: u64,
    /// A run this long resets the restart count.
    pub stable_ms: u64,
    /// Restarts allowed within `window_ms` after the job's node died (its lease expired);
    /// counted apart from `max_restarts` and never against the strategy's breaker.
    pub max_node_losses: u32,
}

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            max_restarts: 3,
            window_ms: 600_000,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            stable_ms: 600_000,
            max_node_losses: 10,
        }
    }
}

/// The circuit breaker of a user's strategy (`userId` + `strategyId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Failures within `window_ms` that open the breaker.
    pub failures: u32,
    /// The window failures are counted in.
    pub window_ms: u64,
    /// How long an open breaker refuses starts before it allows one trial run.
    pub cooldown_ms: u64,
    /// How long the trial run must run (or be stopped without failing) to close the breaker.
    pub trial_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 3,
            window_ms: 300_000,
            cooldown_ms: 60_000,
            trial_ms: 30_000,
        }
    }
}

/// The crash sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SweepSettings {
    /// How often an orchestrator tries to take the sweep (one of them runs it per interval).
    pub interval_ms: u64,
    /// Expired leases handled per sweep at most (the rest wait for the next one).
    pub batch: u32,
    /// A queued job whose enqueue a queue outside Redis (RabbitMQ) has not confirmed for this
    /// long is published again by the sweep: its orchestrator died between admission and
    /// publish, or the publish failed. Duplicates are dropped at claim.
    pub requeue_after_ms: u64,
    /// How often the fleet's load is sampled for `GET /v1/fleet/history` (the dashboard's
    /// overview): at the first sweep tick of any orchestrator after this long.
    pub history_every_ms: u64,
    /// How many samples are kept (360 every 10 s: the last hour).
    pub history_keep: u32,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            batch: 1_000,
            requeue_after_ms: 10_000,
            history_every_ms: 10_000,
            history_keep: 360,
        }
    }
}

/// Switches meant for tests and diagnosis; all off by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingSettings {
    /// Accept the test-only strategy kinds (such as `panic-test`) in start requests.
    pub test_strategies: bool,
    /// Append every accepted claim, heartbeat and end of run to the `audit` stream in Redis.
    pub audit: bool,
}

/// Redis connection and key settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Connection URL: `redis://` or, over TLS, `rediss://`; an ACL user and password go in it
    /// (`rediss://user:password@host:port`). With `cluster`, one or more of the cluster's nodes,
    /// comma-separated (the client learns the others from them).
    pub url: String,
    /// The Redis is a Redis Cluster (or a compatible service): every key of the fleet carries
    /// one hash tag, so that each atomic step touches one slot (docs/architecture.md).
    pub cluster: bool,
    /// Shards the fleet's state is split into, each under its own hash tag (users are spread
    /// over them by a hash of their id), so that a Redis Cluster spreads the fleet over its
    /// masters (docs/architecture.md, "Sharding"). Fixed when the fleet's state is created:
    /// the first process records it in Redis, and a process configured otherwise refuses to
    /// start. 1 (the default): one hash tag on a cluster, the plain key names on one Redis.
    pub shards: u32,
    /// `rediss://` only: a PEM file of the CA certificates that sign the server's certificate.
    /// Unset: the system's trusted roots. The server's name is always verified against the
    /// URL's host, unless the URL ends in `#insecure`.
    pub tls_ca_file: Option<String>,
    /// `rediss://` only: a PEM client certificate, for servers that require one (mutual TLS,
    /// `tls-auth-clients yes`). Needs `tls_key_file`.
    pub tls_cert_file: Option<String>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<String>,
    /// Prefix of every key runfleet writes.
    pub key_prefix: String,
    /// Multiplexed connections shared by every short command and script (round-robin).
    pub pool_size: usize,
    /// Connections kept for blocking pops (claims, command listeners).
    pub blocking_pool_size: usize,
    /// How long a blocking pop waits for a pooled connection before failing.
    pub wait_timeout_ms: u64,
    /// How long a short command may take before it fails.
    pub response_timeout_ms: u64,
    /// How long opening a connection may take.
    pub connect_timeout_ms: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            shards: 1,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            key_prefix: "runfleet".into(),
            pool_size: 4,
            blocking_pool_size: 8,
            wait_timeout_ms: 2_000,
            response_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
        }
    }
}

/// Which queue backend is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// In-process queue and state: the embedded mode (orchestrator and worker pool in one
    /// process; `runfleet-orchestrator --embedded` selects it).
    Memory,
    /// Redis lists with reliable claims.
    #[default]
    Redis,
    /// RabbitMQ (state stays in Redis).
    Rabbitmq,
}

/// Queue settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// `memory`, `redis` or `rabbitmq`.
    pub backend: QueueBackend,
    /// The queue's name (Redis list name part, RabbitMQ queue name).
    pub name: String,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: QueueBackend::default(),
            name: "jobs".into(),
        }
    }
}

/// RabbitMQ settings (used when `queue.backend = "rabbitmq"`). A consumer's prefetch is not a
/// setting: it is the claiming node's free capacity at each claim.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RabbitMqSettings {
    /// AMQP URL (`amqp://` or `amqps://`; the vhost `/` is written `%2f`).
    pub url: String,
    /// AMQP heartbeat in seconds, to notice a dead connection (0: the broker's choice).
    pub heartbeat_s: u16,
    /// How long opening a connection may take.
    pub connect_timeout_ms: u64,
    /// How long an enqueue waits for the broker's confirms, reconnecting if need be, before it
    /// fails (and the start is refused with 503).
    pub confirm_timeout_ms: u64,
    /// First delay between reconnection attempts; doubles with each failed attempt.
    pub reconnect_min_ms: u64,
    /// Longest delay between reconnection attempts.
    pub reconnect_max_ms: u64,
}

impl Default for RabbitMqSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            heartbeat_s: 10,
            connect_timeout_ms: 5_000,
            confirm_timeout_ms: 5_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

impl RabbitMqSettings {
    /// Checks ranges. Called when the RabbitMQ backend is opened, so a fleet on another
    /// backend is not refused for settings it does not use.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.connect_timeout_ms == 0 {
            return invalid("rabbitmq.connect_timeout_ms", "must be at least 1");
        }
        if self.confirm_timeout_ms == 0 {
            return invalid("rabbitmq.confirm_timeout_ms", "must be at least 1");
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return invalid(
                "rabbitmq.reconnect_min_ms",
                "must be at least 1 and at most rabbitmq.reconnect_max_ms",
            );
        }
        Ok(())
    }
}

/// A URL (or a comma-separated list of them, as `redis.url` of a cluster) as it may be
/// printed: any password replaced by `<set>`.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:<set>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry an ACL user's password.
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("cluster", &self.cluster)
            .field("shards", &self.shards)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("blocking_pool_size", &self.blocking_pool_size)
            .field("wait_timeout_ms", &self.wait_timeout_ms)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl std::fmt::Debug for RabbitMqSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: print it without one.
        f.debug_struct("RabbitMqSettings")
            .field("url", &redact_url(&self.url))
            .field("heartbeat_s", &self.heartbeat_s)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("confirm_timeout_ms", &self.confirm_timeout_ms)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .finish()
    }
}

/// HTTP listener settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address to listen on.
    pub bind: String,
    /// Longest a request may take before it is answered 408/503.
    pub request_timeout_ms: u64,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    /// Largest body `POST /v1/runners/batch` accepts.
    pub batch_body_limit_bytes: usize,
    /// How long a stop request waits for the node to confirm before answering 202.
    pub stop_wait_ms: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            request_timeout_ms: 15_000,
            body_limit_bytes: 64 * 1024,
            batch_body_limit_bytes: 4 * 1024 * 1024,
            stop_wait_ms: 10_000,
        }
    }
}

/// Worker-node settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Runners this node runs at most at once.
    pub capacity: usize,
    /// How long one claim call blocks waiting for a job.
    pub claim_wait_ms: u64,
    /// Worker slots the embedded mode runs in-process.
    pub embedded_capacity: usize,
    /// Address of the node's own HTTP listener (`GET /metrics`, `GET /healthz`), such as
    /// `0.0.0.0:9100`; unset, the node listens nowhere.
    pub http_bind: Option<String>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            capacity: 100,
            claim_wait_ms: 1_000,
            embedded_capacity: 100,
            http_bind: None,
        }
    }
}

/// Heartbeat and lease timing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatSettings {
    /// How often a node renews its runners' leases and reports their positions and stats.
    pub interval_ms: u64,
    /// Silence after which a runner counts as crashed (its lease expires).
    pub lease_ms: u64,
    /// Longest a runner's saved state goes unsaved while its holdings do not change (it is
    /// saved with every fill, at hand-back and at the end). 0: with every heartbeat. It bounds
    /// how far back a run resumed after a crash starts (it replays the feed from there), never
    /// what it held: 5 min, since an idle runner's checkpoints were most of an idle fleet's
    /// Redis work (docs/benchmarks.md).
    pub checkpoint_ms: u64,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            interval_ms: 5_000,
            lease_ms: 30_000,
            checkpoint_ms: 300_000,
        }
    }
}

/// Keys and secrets. Never logged.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// Key for the admin endpoints (entitlements). When unset, those endpoints are refused.
    pub admin_key: Option<String>,
    /// 32 bytes, base64: seals users' exchange credentials. Required in distributed mode;
    /// the embedded mode makes a random one per process when unset.
    pub credentials_key: Option<String>,
}

impl std::fmt::Debug for SecuritySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field(
                "credentials_key",
                &self.credentials_key.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long SIGTERM/Ctrl-C waits for everything to stop before the process exits anyway.
    pub deadline_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            deadline_ms: 10_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// Default filter (tracing's EnvFilter syntax) when `RUST_LOG` is unset.
    pub filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

/// Where the trading runner kind's prices come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// A seeded random walk per instrument, one step every `tick_ms`.
    #[default]
    Simulated,
    /// Candles played from a CSV file (`replay_file`) at `replay_speed`.
    Replay,
}

/// The market the trading runner kind trades on, and its paper broker's fill model. Only the
/// settings' shape and ranges live here, with the rest of the one config struct: what they mean
/// is `runfleet-trading`'s (its `feed` and `paper` modules; docs/trading.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketSettings {
    /// `simulated` or `replay`.
    pub feed: FeedKind,
    /// Time between simulated price ticks (each tick is one candle of the strategy's timeframe).
    pub tick_ms: u64,
    /// Mixed with the job id into the simulated walk's seed.
    pub seed: u64,
    /// The replay CSV (`,Open,High,Low,Close,Volume` rows). `{index}` in it is replaced by the
    /// instrument's price index (`EURUSD` for EUR-USD); without it every instrument plays the
    /// same file.
    pub replay_file: String,
    /// Replay pace: data time per wall time (3600 plays an hour of candles per second); 0 plays
    /// as fast as the runner can.
    pub replay_speed: u64,
    /// Fee of every fill, in basis points of its notional.
    pub fee_bps: rust_decimal::Decimal,
    /// Adverse slippage of every market order, in basis points of the price.
    pub slippage_bps: rust_decimal::Decimal,
}

impl Default for MarketSettings {
    fn default() -> Self {
        Self {
            feed: FeedKind::Simulated,
            tick_ms: 100,
            seed: 0,
            replay_file: String::new(),
            replay_speed: 3_600,
            fee_bps: rust_decimal::Decimal::from(5),
            slippage_bps: rust_decimal::Decimal::from(1),
        }
    }
}

impl Settings {
    /// Loads defaults, then `file` if given, then `RUNFLEET__*` environment variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("RUNFLEET")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.node.capacity == 0 {
            return invalid("node.capacity", "must be at least 1");
        }
        if self.heartbeat.interval_ms == 0 {
            return invalid("heartbeat.interval_ms", "must be at least 1");
        }
        if !cfg!(feature = "rabbitmq") && self.queue.backend == QueueBackend::Rabbitmq {
            return invalid(
                "queue.backend",
                "rabbitmq is not in this build (built without the `rabbitmq` cargo feature): \
                 use redis or memory, or rebuild with `--features rabbitmq`",
            );
        }
        if self.heartbeat.lease_ms <= self.heartbeat.interval_ms {
            return invalid(
                "heartbeat.lease_ms",
                "must be longer than heartbeat.interval_ms",
            );
        }
        let tls = self.redis.url.starts_with("rediss://");
        let r = &self.redis;
        if !tls
            && (r.tls_ca_file.is_some() || r.tls_cert_file.is_some() || r.tls_key_file.is_some())
        {
            return invalid(
                "redis.tls_ca_file",
                "TLS files are set but redis.url is not rediss://",
            );
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            return invalid(
                "redis.tls_cert_file",
                "a client certificate needs its key (redis.tls_key_file), and a key its certificate",
            );
        }
        if self.redis.pool_size == 0 || self.redis.blocking_pool_size == 0 {
            return invalid("redis.pool_size", "pools need at least one connection");
        }
        if self.redis.key_prefix.is_empty()
            || self
                .redis
                .key_prefix
                .contains(|c: char| c.is_whitespace() || c == '{' || c == '}')
        {
            return invalid(
                "redis.key_prefix",
                "must be non-empty, without spaces, '{' or '}' (hash tags are runfleet's)",
            );
        }
        if !(1..=crate::shard::SHARDS_MAX).contains(&self.redis.shards) {
            return invalid(
                "redis.shards",
                &format!("must be from 1 to {}", crate::shard::SHARDS_MAX),
            );
        }
        if !self.redis.cluster && self.redis.url.contains(',') {
            return invalid(
                "redis.url",
                "several URLs are the seed nodes of a Redis Cluster: set redis.cluster = true",
            );
        }
        if self.queue.name.is_empty() {
            return invalid("queue.name", "must be non-empty");
        }
        if self.sweep.interval_ms == 0 || self.sweep.batch == 0 {
            return invalid("sweep.interval_ms", "interval and batch must be at least 1");
        }
        if self.sweep.history_every_ms == 0 || self.sweep.history_keep == 0 {
            return invalid(
                "sweep.history_every_ms",
                "interval and kept samples must be at least 1",
            );
        }
        if self.restart.base_delay_ms > self.restart.max_delay_ms {
            return invalid(
                "restart.base_delay_ms",
                "must not exceed restart.max_delay_ms",
            );
        }
        if self.limits.max_runners == 0 || self.limits.max_queued == 0 {
            return invalid("limits.max_runners", "limits must be at least 1");
        }
        let r = &self.rate_limits;
        if [
            r.starts_per_minute,
            r.starts_burst,
            r.stops_per_minute,
            r.stops_burst,
            r.reads_per_minute,
            r.reads_burst,
        ]
        .contains(&0)
        {
            return invalid(
                "rate_limits",
                "every rate and burst must be at least 1 (set rate_limits.enabled = false for none)",
            );
        }
        if self.admin_audit.max_entries == 0 {
            return invalid("admin_audit.max_entries", "must be at least 1");
        }
        if !(1..=1_000_000).contains(&self.events.live_buffer) {
            return invalid("events.live_buffer", "must be from 1 to 1000000");
        }
        if !(1..=10_000).contains(&self.events.max_streams_per_key) {
            return invalid("events.max_streams_per_key", "must be from 1 to 10000");
        }
        if self.breaker.failures == 0 {
            return invalid("breaker.failures", "must be at least 1");
        }
        if self.market.tick_ms == 0 {
            return invalid("market.tick_ms", "must be at least 1");
        }
        if self.market.feed == FeedKind::Replay && self.market.replay_file.trim().is_empty() {
            return invalid(
                "market.replay_file",
                "must name a CSV file when market.feed = replay",
            );
        }
        let bps = rust_decimal::Decimal::from(1_000);
        if self.market.fee_bps.is_sign_negative() || self.market.fee_bps > bps {
            return invalid("market.fee_bps", "must be from 0 to 1000");
        }
        if self.market.slippage_bps.is_sign_negative() || self.market.slippage_bps > bps {
            return invalid("market.slippage_bps", "must be from 0 to 1000");
        }
        for (i, e) in self.external_strategies.iter().enumerate() {
            if let Err(reason) = e.validate() {
                return invalid(
                    "external_strategies",
                    &format!("[{i}] {:?}: {reason}", e.kind),
                );
            }
            if self.external_strategies[..i]
                .iter()
                .any(|o| o.kind == e.kind)
            {
                return invalid(
                    "external_strategies",
                    &format!("[{i}] {:?}: type registered twice", e.kind),
                );
            }
        }
        Ok(())
    }

    /// Heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat.interval_ms)
    }

    /// The cipher for users' credentials: from `security.credentials_key`; in the embedded
    /// mode a random per-process key when none is set.
    pub fn credential_cipher(&self) -> Result<crate::crypto::CredentialCipher, ConfigError> {
        match (&self.security.credentials_key, self.queue.backend) {
            (Some(key), _) => crate::crypto::CredentialCipher::from_base64(key).map_err(|e| {
                ConfigError::Invalid {
                    key: "security.credentials_key",
                    reason: e.to_string(),
                }
            }),
            (None, QueueBackend::Memory) => Ok(crate::crypto::CredentialCipher::ephemeral()),
            (None, _) => Err(ConfigError::Invalid {
                key: "security.credentials_key",
                reason: format!(
                    "required in distributed mode: every orchestrator and worker node needs the \
                     same key, 32 random bytes in base64 (for example \
                     RUNFLEET__SECURITY__CREDENTIALS_KEY={})",
                    crate::crypto::CredentialCipher::generate_key_base64()
                ),
            }),
        }
    }

    /// Lease length as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.heartbeat.lease_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without the `rabbitmq` feature names the setting and the way out at start-up.
    #[cfg(not(feature = "rabbitmq"))]
    #[test]
    fn rabbitmq_is_refused_without_the_feature() {
        let mut s = Settings::default();
        s.queue.backend = QueueBackend::Rabbitmq;
        match s.validate() {
            Err(ConfigError::Invalid { key, reason }) => {
                assert_eq!(key, "queue.backend");
                assert!(reason.contains("`rabbitmq` cargo feature"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(
            s.queue.backend,
            QueueBackend::Redis,
            "distributed by default; --embedded picks memory"
        );
        assert_eq!(s.heartbeat.interval_ms, 5_000);
        assert_eq!(s.heartbeat.lease_ms, 30_000);
        assert_eq!(s.tiers, TierLimits::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("runfleet-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runfleet.toml");
        std::fs::write(
            &path,
            "[node]\ncapacity = 7\n[tiers]\nfree = 2\nbasic = 3\npro = 10\nenterprise = 50\n",
        )
        .unwrap();
        let s = Settings::load(Some(&path)).unwrap();
        assert_eq!(s.node.capacity, 7);
        assert_eq!(s.tiers.free, 2);
        assert_eq!(s.redis.url, RedisSettings::default().url);
    }

    #[test]
    fn a_shard_count_out_of_range_is_refused_naming_the_setting() {
        for bad in [0, crate::shard::SHARDS_MAX + 1] {
            let mut s = Settings::default();
            s.redis.shards = bad;
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("redis.shards"), "{err}");
        }
        let mut s = Settings::default();
        s.redis.shards = 64;
        s.validate().expect("64 shards");
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let mut s = Settings::default();
        s.heartbeat.lease_ms = s.heartbeat.interval_ms;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("heartbeat.lease_ms"), "{err}");
    }

    #[test]
    fn unknown_keys_in_a_file_are_refused() {
        let dir = std::env::temp_dir().join(format!("runfleet-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("runfleet.toml");
        std::fs::write(&path, "[node]\ncapacty = 7\n").unwrap();
        assert!(Settings::load(Some(&path)).is_err());
    }

    #[test]
    fn debug_never_prints_secrets() {
        let mut s = Settings::default();
        s.security.admin_key = Some("hunter2".into());
        s.redis.url = "rediss://worker:hunter2@redis:6380".into();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
