//! The fleet's shared state: job records, tier limits, leases with fencing epochs, heartbeats,
//! and the commands orchestrators send to worker nodes.
//!
//! Split into small capability traits ([`JobStore`], [`LeaseStore`], [`CommandBus`],
//! [`Subscriptions`]); [`FleetStore`] is all of them. [`RedisStore`] is the real one (all shared
//! state lives in Redis, see docs/redis-schema.md); [`MemoryStore`] backs the embedded mode.
//! Every transition that must not interleave with another process (admission against a tier
//! limit, a claim that bumps the epoch, a fenced heartbeat, a stop) is one atomic step: one Lua
//! script in Redis, one critical section in memory.

mod coalesce;
mod memory;
mod redis;
mod scripts;
mod sharded;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, ScriptContext};
pub use self::scripts::{eval_source, library_source};
pub use self::sharded::{ShardedStore, shard_policy};
use crate::config::{BreakerSettings, EventSettings, LimitSettings, RestartSettings, Settings};
use crate::ids::{JobId, NodeId, UserId};
use crate::job::{JobRecord, JobSpec, JobStatus, Lease, Position, Stats, StopMode};
use crate::redis_pool::RedisError;
use crate::shard::Placement;
use crate::tier::{Subscription, Tier, TierLimits};

/// The rules a store applies on its own: tier limits, restarts, breakers, auditing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetPolicy {
    /// Concurrent runners per tier.
    pub tiers: TierLimits,
    /// Restarts of failed runs.
    pub restart: RestartSettings,
    /// Circuit breakers per user strategy.
    pub breaker: BreakerSettings,
    /// Record accepted writes in the audit stream.
    pub audit: bool,
    /// Fleet-wide backpressure.
    pub limits: LimitSettings,
    /// Caps of the event stream.
    pub events: EventSettings,
    /// Entries the admin audit trail keeps.
    pub admin_audit_max: u64,
    /// How long an ended job's record is kept: [`FINISHED_RETENTION`] (not a setting; a field
    /// so that tests can shorten it). Redis counts it in whole seconds.
    pub retention: Duration,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        Self::from_settings(&Settings::default())
    }
}

impl FleetPolicy {
    /// The policy configured in `settings`.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            tiers: settings.tiers,
            restart: settings.restart,
            breaker: settings.breaker,
            audit: settings.testing.audit,
            limits: settings.limits,
            events: settings.events,
            admin_audit_max: settings.admin_audit.max_entries,
            retention: FINISHED_RETENTION,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend (Redis) failed or cannot be reached: worth retrying later.
    #[error("store unavailable: {0}")]
    Unavailable(RedisError),
    /// The node's lease lapsed (or a sweep took its runners): under this id it may claim and
    /// renew nothing again. The node stops every runner and comes back under a new id.
    #[error("the node's lease lapsed; it is fenced")]
    Fenced,
    /// An id that must be new is taken already (a job id, an API key id); nothing was written.
    #[error("{what} {id} already exists")]
    Conflict {
        /// What kind of id (`job id`, `api key id`).
        what: &'static str,
        /// The id.
        id: String,
    },
    /// The store holds or answered something runfleet did not write (a bug or a foreign
    /// writer): retrying will not help.
    #[error("unexpected data in the store: {0}")]
    Data(String),
    /// What a decision was made on kept changing before it could be applied (many failures of
    /// one strategy at once): worth retrying.
    #[error("{0} kept changing; try again")]
    Contended(&'static str),
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        match e {
            RedisError::Data(what) => StoreError::Data(what),
            e => StoreError::Unavailable(e),
        }
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        RedisError::from(e).into()
    }
}

impl From<deadpool_redis::PoolError> for StoreError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        RedisError::from(e).into()
    }
}

impl StoreError {
    pub(crate) fn data(what: impl Into<String>) -> Self {
        StoreError::Data(what.into())
    }

    pub(crate) fn conflict(what: &'static str, id: impl std::fmt::Display) -> Self {
        StoreError::Conflict {
            what,
            id: id.to_string(),
        }
    }
}

/// Result of an admission attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The job was recorded as queued and holds one of the user's slots.
    Admitted {
        /// The tier in force.
        tier: Tier,
        /// Its limit.
        limit: u32,
        /// Slots held now, this job included.
        current: u32,
    },
    /// The user already holds every slot of their tier; nothing was written.
    LimitReached {
        /// The tier in force.
        tier: Tier,
        /// Its limit.
        limit: u32,
        /// Slots held.
        current: u32,
    },
    /// The user strategy's circuit breaker is open (or its trial run is still deciding);
    /// nothing was written.
    BreakerOpen {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The fleet holds `limits.max_runners` runners already; nothing was written.
    FleetFull {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// `limits.max_queued` jobs wait in the queue already; nothing was written.
    QueueFull {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The spec is not a job spec of the documented shape (a Redis client other than the API
    /// sent it); nothing was written.
    Invalid {
        /// What is wrong, starting with the field (`spec.config: ...`).
        reason: String,
    },
}

/// What a claim found for one job.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The job is now leased to the claiming node.
    Claimed(Box<Lease>),
    /// The job must not run (stopped while queued, already running under a live lease,
    /// unknown): the node acknowledges the delivery and drops it.
    Dropped {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// The job is leased to the claiming node but its stored spec cannot be read: it cannot
    /// run, ever. The node fails it at once under this epoch (no restart, no breaker count);
    /// the rest of its batch is not affected.
    Unrunnable {
        /// The job.
        job_id: JobId,
        /// The claim's fencing token.
        epoch: u64,
        /// Why it cannot run.
        reason: String,
    },
}

/// What [`LeaseStore::claim_queued`] took.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedClaims {
    /// One per job taken from the queue, oldest first.
    pub outcomes: Vec<ClaimOutcome>,
    /// Whether the node's fair share, not `max`, limited the claim and left jobs waiting for
    /// the other nodes: the node should pause before it claims again.
    pub capped: bool,
}

/// Fleet-wide counts, the same whichever orchestrator reads them (the status of `system`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetCounts {
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Runners holding a live lease.
    pub running: u64,
    /// Jobs holding a slot (queued, running, or crashed and waiting for a restart).
    pub active: u64,
    /// Crashed jobs waiting for their restart.
    pub restarting: u64,
}

/// How far back `runfleet_runners{status="failed_last_hour"}` counts (`HOUR_MS` in lib.lua).
pub const FAILED_WINDOW_MS: u64 = 3_600_000;

/// Fleet-wide gauges for `/metrics`: read in one round trip, the same whichever orchestrator
/// reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetGauges {
    /// Jobs waiting in the queue, runners holding a lease, jobs holding a slot, crashed jobs
    /// awaiting a restart.
    pub counts: FleetCounts,
    /// Jobs that failed for good within the last hour.
    pub failed_last_hour: u64,
    /// Nodes whose liveness key is live.
    pub nodes_alive: u64,
    /// The runner slots of those nodes.
    pub node_capacity: u64,
    /// The runners those nodes report holding.
    pub node_runners: u64,
    /// Job ids in the ready list, when the store sees the queue (the Redis-list queue).
    pub ready: Option<u64>,
    /// Job ids claimed by nodes and not yet acknowledged, when the store sees the queue.
    pub processing: Option<u64>,
    /// Circuit breakers opened since the fleet's state began.
    pub breaker_openings: u64,
}

impl FleetGauges {
    /// The worker nodes the current load needs: `ceil((queued + running) / average node
    /// capacity)`, at least 1 while anything is queued or running, 0 when nothing is. With no
    /// node alive the average is `default_capacity` (what a new node would bring).
    pub fn nodes_needed(&self, default_capacity: u64) -> u64 {
        let load = self.counts.queued + self.counts.running;
        if load == 0 {
            return 0;
        }
        let average = match self.nodes_alive {
            0 => default_capacity,
            n => self.node_capacity / n,
        }
        .max(1);
        load.div_ceil(average).max(1)
    }
}

/// One sample of the fleet's load, taken every `sweep.history_every_ms` by whichever
/// orchestrator sweeps first and kept `sweep.history_keep` samples long: the dashboard's
/// fleet overview over the last hour (`GET /v1/fleet/history`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FleetSample {
    /// When (ms, store clock).
    pub at: u64,
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Runners holding a live lease.
    pub running: u64,
    /// Jobs holding a slot.
    pub active: u64,
    /// Crashed jobs waiting for their restart.
    pub restarting: u64,
    /// Live worker nodes.
    pub nodes_alive: u64,
    /// Their runner slots.
    pub node_capacity: u64,
}

impl FleetSample {
    /// The sample of `gauges` taken at `at`.
    pub fn of(at: u64, gauges: &FleetGauges) -> Self {
        let c = gauges.counts;
        FleetSample {
            at,
            queued: c.queued,
            running: c.running,
            active: c.active,
            restarting: c.restarting,
            nodes_alive: gauges.nodes_alive,
            node_capacity: gauges.node_capacity,
        }
    }
}

/// One point of a runner's PnL history: its total closed-trade PnL (net of fees) when a report
/// with changed stats was accepted, and at the end of its run (`GET /v1/runners/{jobId}/pnl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PnlPoint {
    /// When (ms, store clock).
    pub at: u64,
    /// The run's `stats.totalPnL` then, in `stats.currency`.
    #[serde(rename = "totalPnL", with = "crate::job::decimal")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub total_pnl: rust_decimal::Decimal,
}

/// A runner's PnL history keeps at most this many points, its newest (`PNL_MAX` in lib.lua).
pub const PNL_POINTS_MAX: usize = 2000;

/// One step of a runner's life, as recorded in the event stream by the same atomic step that
/// made the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
// Nothing reads an event with other fields; the schema says so (`additionalProperties: false`).
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerEvent {
    /// The event's stream id (`<ms>-<seq>`), increasing: an SSE `Last-Event-ID`.
    pub id: String,
    /// The job.
    pub job: JobId,
    /// Its owner.
    pub user: UserId,
    /// What happened: `admitted`, `claimed`, `crashed`, `restart_scheduled`, `restarted`,
    /// `fenced`, `stop_requested`, `stopped`, `failed`, `breaker_opened`, `breaker_closed`,
    /// `handed_back`.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::event_kind))]
    pub kind: String,
    /// The job's epoch at the event (the claim's epoch for `claimed`, the refused one for
    /// `fenced`).
    pub epoch: u64,
    /// The node concerned ('' when none).
    pub node: String,
    /// Why, or the detail (restart time, flattened count, stop mode); '' when none.
    pub reason: String,
    /// When (ms, store clock).
    pub at: u64,
}

impl RunnerEvent {
    /// Every `type` an event may have (the store's scripts and the memory store write them).
    pub const KINDS: [&str; 12] = [
        "admitted",
        "claimed",
        "crashed",
        "restart_scheduled",
        "restarted",
        "fenced",
        "stop_requested",
        "stopped",
        "failed",
        "breaker_opened",
        "breaker_closed",
        "handed_back",
    ];
}

/// A position in the event stream: a Redis stream id `<ms>-<seq>`, ordered as Redis orders
/// them (numerically, ms first). Parsed from what a client sends (`Last-Event-ID`), so it is
/// checked: anything else is refused rather than passed to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// Before every event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };
}

impl std::str::FromStr for EventId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an event id (<ms>-<seq>, as the events carry)");
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        let num = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u64>().map_err(|_| bad())
        };
        Ok(EventId {
            ms: num(ms)?,
            seq: num(seq)?,
        })
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// One runner's report in a node's heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerBeat {
    /// The job.
    pub job_id: JobId,
    /// The epoch of the node's lease on it.
    pub epoch: u64,
    /// Open positions now, if they changed since the last accepted beat.
    pub positions: Option<Vec<Position>>,
    /// Stats now, if they changed since the last accepted beat.
    pub stats: Option<Stats>,
    /// The runner's saved state, stored so that a later run resumes from it, if it is to be
    /// saved with this beat.
    pub account: Option<crate::kind::SavedState>,
}

/// A node's own liveness report, sent with its runners' heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Node))]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// The node.
    pub node_id: NodeId,
    /// Runners it can hold.
    pub capacity: u32,
    /// Runners it holds.
    pub runners: u32,
    /// When the node process started (ms, node clock; informational only).
    pub started_at: u64,
    /// When the store last accepted its heartbeat (ms, store clock); filled in by
    /// [`LeaseStore::nodes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<u64>,
}

/// How a run ended, as its node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// `Stopped`, `Failed` or `Crashed`.
    pub status: JobStatus,
    /// Why, for failures.
    pub error: Option<String>,
    /// Positions the stop closed.
    pub flattened_positions: Option<u32>,
    /// Positions left open.
    pub positions: Vec<Position>,
    /// Final stats.
    pub stats: Stats,
    /// The final paper account.
    pub account: Option<crate::kind::SavedState>,
}

/// A command addressed to one worker node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum NodeCommand {
    /// Stop a runner.
    #[serde(rename_all = "camelCase")]
    Stop {
        /// The job.
        job_id: JobId,
        /// The epoch the stop applies to.
        epoch: u64,
        /// Flatten or hold.
        mode: StopMode,
    },
}

/// What a stop request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopRequest {
    /// No such job.
    NotFound,
    /// The job had already ended with this status; nothing changed.
    AlreadyEnded(JobStatus),
    /// The job was not running (queued or crashed): it is stopped now, nothing to flatten.
    Stopped,
    /// The job runs on `node`; the stop command was sent there.
    Sent {
        /// The node running it.
        node: NodeId,
    },
}

/// Job records: admission, reads.
pub trait JobStore: Send + Sync {
    /// Records `spec` as queued if the user strategy's breaker allows it and the user's tier
    /// (resolved against the store's clock) has a free slot; takes the slot in the same atomic
    /// step.
    fn admit(&self, spec: &JobSpec) -> impl Future<Output = Result<Admission, StoreError>> + Send;

    /// Where `user`'s new job ids and API key ids must land: anywhere ([`Placement::ANY`])
    /// but in a sharded fleet, whose ids must hash to their user's shard (`crate::shard`).
    /// Ids are made with [`Placement::make`].
    fn placement(&self, user: &UserId) -> Placement {
        let _ = user;
        Placement::ANY
    }

    /// Admits each of `specs` on its own, in order, as [`JobStore::admit`] one by one would
    /// (each atomic; one refused does not stop the next), in as few round trips as the store
    /// can: one for the Redis store.
    fn admit_many(
        &self,
        specs: &[JobSpec],
    ) -> impl Future<Output = Result<Vec<Admission>, StoreError>> + Send {
        async move {
            let mut out = Vec::with_capacity(specs.len());
            for spec in specs {
                out.push(self.admit(spec).await?);
            }
            Ok(out)
        }
    }

    /// Whether the store queues jobs itself, in the same atomic step that makes them queued
    /// (admission, restart, hand-back): the Redis store over the Redis-list queue. Otherwise the
    /// caller publishes them ([`crate::dispatch`]) and confirms with
    /// [`JobStore::confirm_enqueued`].
    fn queues_inline(&self) -> bool {
        false
    }

    /// The queue confirmed it holds `jobs`: they no longer wait to be published again by the
    /// sweep ([`Sweeper::unconfirmed`]).
    fn confirm_enqueued(
        &self,
        jobs: &[JobId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Fleet-wide gauges (`/metrics`, the status of `system`), in one round trip.
    fn fleet_gauges(&self) -> impl Future<Output = Result<FleetGauges, StoreError>> + Send;

    /// Takes a [`FleetSample`] unless one was taken within `every` (fleet-wide: whichever
    /// orchestrator comes first), keeping the newest `keep`; true when this call took it.
    fn sample_history(
        &self,
        every: Duration,
        keep: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The kept [`FleetSample`]s, oldest first.
    fn history(&self) -> impl Future<Output = Result<Vec<FleetSample>, StoreError>> + Send;

    /// Up to `limit` of the jobs holding a slot fleet-wide (queued, running, restarting),
    /// newest first: the admin's fleet-wide runner list (ended runners are listed per user).
    fn active_jobs(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Fleet-wide counts: the counts of [`JobStore::fleet_gauges`].
    fn fleet_counts(&self) -> impl Future<Output = Result<FleetCounts, StoreError>> + Send {
        async { Ok(self.fleet_gauges().await?.counts) }
    }

    /// One job's record.
    fn job(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send;

    /// The spec of a job (with sealed credentials), for whoever runs it.
    fn spec(&self, job: &JobId)
    -> impl Future<Output = Result<Option<JobSpec>, StoreError>> + Send;

    /// A job's lifecycle events, oldest first (the newest 1000; empty once they expired).
    fn job_events(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<Vec<RunnerEvent>, StoreError>> + Send;

    /// The fleet's lifecycle events after `after` (a stream id, `0-0` for the oldest kept),
    /// oldest first, at most `count`. With `wait`, waits up to that long for the first one
    /// when there is none yet (a blocking read); without, answers at once.
    fn events_after(
        &self,
        after: &EventId,
        count: usize,
        wait: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<RunnerEvent>, StoreError>> + Send;

    /// The id of the newest event appended so far ([`EventId::ZERO`] when none).
    fn last_event_id(&self) -> impl Future<Output = Result<EventId, StoreError>> + Send;

    /// Whether a reader resuming after `after` may have missed events that the stream's caps
    /// trimmed: some were trimmed, and `after` is older than the oldest event still kept (or
    /// none is kept and `after` is older than the newest ever appended).
    fn events_lost_after(
        &self,
        after: &EventId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A job's PnL history, oldest first ([`PnlPoint`]); it expires like its event history.
    fn pnl_history(
        &self,
        job: &JobId,
    ) -> impl Future<Output = Result<Vec<PnlPoint>, StoreError>> + Send;

    /// A user's jobs, oldest first (finished ones until their retention passes).
    fn user_jobs(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;
}

/// Leases: claims with fencing epochs, heartbeats, ends of runs.
pub trait LeaseStore: Send + Sync {
    /// Records `node`'s claim of each job: bumps its epoch, marks it running, and starts or
    /// extends the node's lease to `lease` (a runner's lease is its node's). Jobs that must not
    /// run are reported as dropped. [`StoreError::Fenced`] when the node's lease lapsed or a
    /// sweep took its runners: it claims nothing (the deliveries go back to the queue).
    fn claim(
        &self,
        node: &NodeId,
        jobs: &[JobId],
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<ClaimOutcome>, StoreError>> + Send;

    /// Takes up to `max` jobs from the queue this store fills itself (the Redis list its
    /// scripts push admitted jobs onto) and records `node`'s claim of each, in one atomic step
    /// and one round trip: no job is ever between the queue and the store, so nothing needs
    /// acknowledging. The node takes at most its fair share of what waits (see
    /// [`crate::queue::RedisQueue`]). `None` when this store does not fill a queue itself: the
    /// node claims from its [`JobQueue`](crate::queue::JobQueue) and then calls
    /// [`claim`](Self::claim). [`StoreError::Fenced`] as for `claim`, taking nothing.
    fn claim_queued(
        &self,
        node: &NodeId,
        max: usize,
        lease: Duration,
    ) -> impl Future<Output = Result<Option<QueuedClaims>, StoreError>> + Send {
        let _ = (node, max, lease);
        async { Ok(None) }
    }

    /// Renews the node's lease, which is every one of its runners' lease, in one round trip,
    /// storing the reports in `beats`: only the runners whose report changed (`node.runners`
    /// says how many it holds in all). Returns the jobs whose beat was refused (stale epoch, or
    /// no longer the node's): their runners must stop without trading further.
    /// [`StoreError::Fenced`] when the node's lease lapsed or a sweep took its runners: every
    /// runner must stop.
    fn renew(
        &self,
        node: &NodeInfo,
        beats: &[RunnerBeat],
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<JobId>, StoreError>> + Send;

    /// Records the end of a run, if `epoch` is still current. `Stopped` and `Failed` end the
    /// job and free the user's slot; `Crashed` (the runner panicked or erred) goes through the
    /// restart policy at once. Returns whether the write was accepted.
    fn finish(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: RunEnd,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks a running job queued again (a node handing it back at shutdown), if `epoch` is
    /// current, storing its final paper account. The caller then enqueues it. Returns whether
    /// it was accepted.
    fn hand_back(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        account: Option<crate::kind::SavedState>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Live nodes, newest heartbeat first.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeInfo>, StoreError>> + Send;
}

/// Commands from orchestrators to nodes.
pub trait CommandBus: Send + Sync {
    /// Stops a job: at once when it is not running, else by sending its node a stop command.
    fn request_stop(
        &self,
        job: &JobId,
        mode: StopMode,
    ) -> impl Future<Output = Result<StopRequest, StoreError>> + Send;

    /// The next command for `node`, waiting up to `wait`.
    fn next_command(
        &self,
        node: &NodeId,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<NodeCommand>, StoreError>> + Send;
}

/// What one crash sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired leases turned into crashed jobs.
    pub crashed: u32,
    /// Of those, restarts scheduled.
    pub restarting: u32,
    /// Of those, jobs failed by the restart policy.
    pub failed: u32,
}

/// Crash detection and restarts, run by the orchestrators.
pub trait Sweeper: Send + Sync {
    /// One crash sweep, if this caller takes the guard for `interval` (one process sweeps per
    /// interval; `None` when another has it): runs whose lease expired become crashed jobs, and
    /// the restart policy decides each. At most `batch` leases per sweep.
    fn sweep(
        &self,
        interval: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<Option<SweepReport>, StoreError>> + Send;

    /// Crashed jobs whose restart delay has passed (at most `batch`), now queued again (and
    /// queued, when [`JobStore::queues_inline`]). The caller dispatches them.
    fn due_restarts(
        &self,
        batch: u32,
    ) -> impl Future<Output = Result<Vec<JobId>, StoreError>> + Send;

    /// Queued jobs whose enqueue was not confirmed within `older_than` (at most `batch`): their
    /// orchestrator died between admission and publish, or the publish failed. They wait
    /// another `older_than` for the confirmation of the publish the caller now makes. Always
    /// empty when the store queues inline.
    fn unconfirmed(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> impl Future<Output = Result<Vec<JobId>, StoreError>> + Send;
}

/// A user API key as listed (never its secret or hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    /// The key's public id (part of the key).
    pub key_id: String,
    /// When it was issued (ms, store clock).
    pub created_at: u64,
}

/// Per-user API keys. Only a SHA-256 hash of each key is stored; keys are 256-bit random
/// secrets, so a fast hash suffices (no password stretching is needed).
pub trait ApiKeys: Send + Sync {
    /// Stores a new key's hash for `user`.
    fn add_key(
        &self,
        user: &UserId,
        key_id: &str,
        hash: &str,
    ) -> impl Future<Output = Result<ApiKeyInfo, StoreError>> + Send;

    /// The owner and stored hash of a key id.
    fn key(
        &self,
        key_id: &str,
    ) -> impl Future<Output = Result<Option<(UserId, String)>, StoreError>> + Send;

    /// A user's keys.
    fn keys(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<ApiKeyInfo>, StoreError>> + Send;

    /// Revokes one of a user's keys. Returns whether it existed.
    fn revoke_key(
        &self,
        user: &UserId,
        key_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// One admin action, as the orchestrator records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AdminAction {
    /// Who: the public id of the key used (`admin` for the admin key), never the key.
    pub actor: String,
    /// What: `tier.changed`, `key.issued`, `key.revoked` or `runner.stopped`.
    pub action: String,
    /// The user acted upon.
    pub user: String,
    /// The action's particulars (tier and days, key id, runner and stop mode).
    pub detail: serde_json::Value,
    /// The request's `x-request-id`.
    pub request_id: String,
}

/// An [`AdminAction`] as the trail holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = AuditEntry))]
#[serde(rename_all = "camelCase")]
pub struct AdminEntry {
    /// The entry's id in the trail (the stream id for Redis), increasing.
    pub id: String,
    /// When it was recorded (ms, store clock).
    pub at: u64,
    /// The action.
    #[serde(flatten)]
    pub action: AdminAction,
}

/// The admin audit trail: append-only, capped at [`FleetPolicy::admin_audit_max`] entries.
pub trait AdminAudit: Send + Sync {
    /// Appends one action.
    fn record_admin(
        &self,
        action: &AdminAction,
    ) -> impl Future<Output = Result<AdminEntry, StoreError>> + Send;

    /// The newest `count` entries, newest first.
    fn admin_trail(
        &self,
        count: usize,
    ) -> impl Future<Output = Result<Vec<AdminEntry>, StoreError>> + Send;
}

/// Subscriptions (tiers) and the store's clock.
pub trait Subscriptions: Send + Sync {
    /// The store's clock, ms since the Unix epoch (Redis `TIME` for Redis).
    fn now_ms(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// A user's stored subscription, expired or not.
    fn subscription(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Option<Subscription>, StoreError>> + Send;

    /// Gives a user `tier` for `days` from now (store clock).
    fn subscribe(
        &self,
        user: &UserId,
        tier: Tier,
        days: u32,
    ) -> impl Future<Output = Result<Subscription, StoreError>> + Send;

    /// Slots a user holds against their limit.
    fn active_count(&self, user: &UserId) -> impl Future<Output = Result<u32, StoreError>> + Send;
}

/// Everything a fleet process needs from shared state.
pub trait FleetStore:
    JobStore
    + LeaseStore
    + CommandBus
    + Subscriptions
    + Sweeper
    + ApiKeys
    + AdminAudit
    + Clone
    + 'static
{
}

impl<T> FleetStore for T where
    T: JobStore
        + LeaseStore
        + CommandBus
        + Subscriptions
        + Sweeper
        + ApiKeys
        + AdminAudit
        + Clone
        + 'static
{
}

/// The prelude every Redis store script starts with (`scripts/lib.lua`): key names, context,
/// clock, restart and breaker policy. Public so that tests can check its key names against
/// [`crate::keys::Keys`].
#[doc(hidden)]
pub const SCRIPT_PRELUDE: &str = include_str!("../scripts/lib.lua");

/// How long a finished job's record is kept for the status call (both stores).
pub const FINISHED_RETENTION: Duration = Duration::from_secs(24 * 3600);
