//! The Redis store. Key names come from [`Keys`]; every multi-key transition is one script
//! from `src/scripts/` (see docs/redis-schema.md for the layout).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Value;

use super::{
    AdminAction, AdminAudit, AdminEntry, Admission, ApiKeyInfo, ApiKeys, ClaimOutcome, CommandBus,
    EventId, FleetCounts, FleetGauges, FleetPolicy, FleetSample, JobStore, LeaseStore, NodeCommand,
    NodeInfo, PnlPoint, QueuedClaims, RunEnd, RunnerBeat, RunnerEvent, StopRequest, StoreError,
    Subscriptions, SweepReport, Sweeper,
};
use crate::ids::{JobId, NodeId, UserId};
use crate::job::{JobRecord, JobSpec, JobStatus, Lease, StopMode};
use crate::keys::Keys;
use crate::policy::{
    Breaker, BreakerAdmission, BreakerState, FailureKind, FailureSnapshot, TrialProgress,
    decide_failure,
};
use crate::redis_pool::{RedisPools, block_seconds};
use crate::tier::{Subscription, Tier};

use super::coalesce::Admissions;
use super::scripts::{
    ADD_KEY, ADMIT, ADMIT_MANY, CLAIM, Call, EVENTS, FAIL_LOST, FINISH, GAUGES, HAND_BACK, PROMOTE,
    RECONCILE, RENEW, REVOKE_KEY, STOP, SWEEP, ScriptMode, StoreScript, invoke_all,
};

/// Fleet state in Redis. Cloning shares the pools.
#[derive(Debug, Clone)]
pub struct RedisStore {
    pools: RedisPools,
    keys: Keys,
    policy: FleetPolicy,
    /// The name of the Redis-list queue the scripts queue jobs onto themselves, if they do.
    queue: Option<String>,
    /// The prelude's context and its arguments, made once: every script call sends them.
    context: Arc<(ScriptContext, [String; ScriptContext::LEN])>,
    /// Functions or EVAL, as the server allows (shared by clones).
    mode: Arc<ScriptMode>,
    /// The keys every script call declares ([`Keys::route`]: none on one Redis).
    route: Arc<[String]>,
    /// The wake-up channel its scripts announce on ('' for none).
    wake: String,
    /// Where single admissions gather into batch calls ([`super::coalesce`]).
    admissions: Arc<Admissions>,
}

fn context(
    keys: &Keys,
    policy: &FleetPolicy,
    ready: Option<&str>,
    wake: &str,
) -> Arc<(ScriptContext, [String; ScriptContext::LEN])> {
    let mut context = ScriptContext::new(keys, policy, ready);
    context.wake_channel = wake.to_owned();
    let args = context.args();
    Arc::new((context, args))
}

impl RedisStore {
    /// [`LeaseStore::renew`] with the reports by reference (a sharded store's heartbeat passes
    /// each shard its own, without copying them).
    pub(super) async fn renew_beats(
        &self,
        node: &NodeInfo,
        beats: &[&RunnerBeat],
        lease: Duration,
    ) -> Result<Vec<JobId>, StoreError> {
        let node_json = json(node);
        let mut bytes = 0;
        let mut refused = Vec::new();
        let mut conn = self.conn().await?;
        // In chunks, one script call each, one after the other: one script over thousands of
        // changed reports would hold Redis (every other client) for its whole run. A chunk
        // ends at RENEW_CHUNK runners or RENEW_CHUNK_BYTES of reports, whichever comes first:
        // a script's time grows with both.
        let mut beats = beats.iter().peekable();
        loop {
            let mut inv = self.invoke(&RENEW);
            bytes += node_json.len();
            inv.arg(node.node_id.as_str())
                .arg(lease.as_millis() as u64)
                .arg(&node_json)
                .arg(node.runners);
            let (mut runners, mut chunk_bytes) = (0, 0);
            while runners < RENEW_CHUNK && chunk_bytes < RENEW_CHUNK_BYTES {
                let Some(b) = beats.next() else { break };
                let changed = |v: Option<String>| v.unwrap_or_default();
                let positions = changed(b.positions.as_ref().map(json));
                let stats = changed(b.stats.as_ref().map(json));
                let account = account_arg(&b.account);
                let size = b.job_id.as_str().len() + positions.len() + stats.len() + account.len();
                (runners, chunk_bytes) = (runners + 1, chunk_bytes + size);
                inv.arg(b.job_id.as_str())
                    .arg(b.epoch)
                    .arg(positions)
                    .arg(stats)
                    .arg(account);
            }
            bytes += chunk_bytes;
            let some: Option<Vec<String>> = inv.invoke_async(&mut *conn).await?;
            let some = some.ok_or(StoreError::Fenced)?;
            refused.extend(some.into_iter().map(JobId::new));
            if beats.peek().is_none() {
                break;
            }
        }
        // The size of what a heartbeat sends is known only here, where it is encoded.
        metrics::histogram!(crate::observability::HEARTBEAT_BYTES).record(bytes as f64);
        Ok(refused)
    }

    /// A store under the key prefix of `keys`, applying `policy`. Queued jobs are left for the
    /// caller to publish (see [`crate::dispatch`]) until [`RedisStore::queuing_into`] is set.
    pub fn new(pools: RedisPools, keys: Keys, policy: FleetPolicy) -> Self {
        let context = context(&keys, &policy, None, "");
        Self {
            pools,
            route: keys.route().into(),
            keys,
            policy,
            queue: None,
            context,
            mode: Arc::default(),
            wake: String::new(),
            admissions: Arc::default(),
        }
    }

    /// The same store, pushing every job it makes queued onto the ready list of the Redis-list
    /// queue named `queue` in the same script (the [`RedisQueue`](crate::queue::RedisQueue) on the same Redis): admission
    /// and enqueue become one atomic step.
    pub fn queuing_into(mut self, queue: &str) -> Self {
        self.queue = Some(queue.to_owned());
        self.with_context()
    }

    /// The same store, announcing on `channel` when a ready list that was empty gets a job and
    /// when a node gets a command (a sharded fleet's wake-ups, [`crate::wake`]).
    pub fn announcing_on(mut self, channel: &str) -> Self {
        self.wake = channel.to_owned();
        self.with_context()
    }

    fn with_context(mut self) -> Self {
        let ready = self.queue.as_deref().map(|q| self.keys.ready(q));
        self.context = context(&self.keys, &self.policy, ready.as_deref(), &self.wake);
        // Its admissions gather on their own: calls carry this store's context.
        self.admissions = Arc::default();
        self
    }

    /// This store for the admissions' gathering task: its own (empty) gatherer, so that the
    /// task does not keep its own inbox open.
    pub(super) fn for_gathering(&self) -> Self {
        Self {
            admissions: Arc::default(),
            ..self.clone()
        }
    }

    /// Admits the jobs of `args` (each the batch function's six arguments) in one call, now.
    pub(super) async fn admit_args_now(
        &self,
        args: &[[String; 6]],
    ) -> Result<Vec<AdmitReply>, StoreError> {
        let mut call = self.invoke(&ADMIT_MANY);
        for a in args {
            for arg in a {
                call.arg(arg);
            }
        }
        self.admission_calls(&[call], args.len()).await
    }

    /// Runs `calls` of the batch admission function (of `sent` admissions in all) in one round
    /// trip: each admission's reply, in order.
    async fn admission_calls(
        &self,
        calls: &[Call<'_>],
        sent: usize,
    ) -> Result<Vec<AdmitReply>, StoreError> {
        let replies: Vec<Vec<AdmitReply>> =
            invoke_all(&self.mode, calls, &mut *self.conn().await?).await?;
        let replies: Vec<AdmitReply> = replies.into_iter().flatten().collect();
        if replies.len() != sent {
            return Err(StoreError::data(format!(
                "{} admissions answered for {sent} sent",
                replies.len()
            )));
        }
        Ok(replies)
    }

    /// The events after `after` (at most `count`) with the server's clock when they were read:
    /// every event appended later has an id of at least that clock (`store_events.lua`).
    pub(super) async fn events_with_clock(
        &self,
        after: &EventId,
        count: usize,
    ) -> Result<(u64, Vec<RunnerEvent>), StoreError> {
        let (now, range): (u64, ::redis::streams::StreamRangeReply) = self
            .invoke(&EVENTS)
            .arg(after.to_string())
            .arg(count.max(1))
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok((now, range.ids.iter().map(event_of).collect()))
    }

    /// The next command for `node`, without waiting.
    pub(super) async fn try_next_command(
        &self,
        node: &NodeId,
    ) -> Result<Option<NodeCommand>, StoreError> {
        let popped: Option<String> = ::redis::cmd("LPOP")
            .arg(self.keys.commands(node))
            .query_async(&mut *self.conn().await?)
            .await?;
        popped.map(|raw| command_of(&raw)).transpose()
    }

    /// The key schema in use.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) async fn conn(&self) -> Result<crate::redis_pool::CommandConnection, StoreError> {
        Ok(self.pools.commands.get().await?)
    }

    /// The prelude's context (`lib.lua`, ARGV[1..15]) for this store's prefix, policy and
    /// queue: what any Redis client calling a store script must send first
    /// (docs/redis-schema.md lists it).
    pub fn script_context(&self) -> &ScriptContext {
        &self.context.0
    }

    /// [`script_context`](Self::script_context) as arguments, in wire order.
    pub fn context_args(&self) -> [String; ScriptContext::LEN] {
        self.context.1.clone()
    }

    /// A call of `script` with the prelude's context arguments.
    fn invoke(&self, script: &'static StoreScript) -> Call<'_> {
        let mut call = Call::new(script, &self.mode, &self.route[..]);
        for arg in self.context.1.iter() {
            call.arg(arg);
        }
        call
    }

    /// The admission script's call for `spec`, with the breaker decision made on its last
    /// answer, if any.
    fn admit_invocation(&self, spec: &JobSpec, breaker: Option<&BreakerChange>) -> Call<'_> {
        let mut inv = self.invoke(&ADMIT);
        admit_args(&mut inv, spec, breaker);
        inv
    }

    /// The admission the script's `reply` for `spec` means. An answer that the breaker needs a
    /// decision is decided here (the policy lives in Rust alone) and the script called again
    /// with it, until the breaker holds still.
    async fn admission_after(
        &self,
        mut reply: AdmitReply,
        spec: &JobSpec,
    ) -> Result<Admission, StoreError> {
        for _ in 0..DECISION_ATTEMPTS {
            if reply.0 != ADMIT_NEEDS_BREAKER_DECISION {
                return admission_of(reply, spec);
            }
            let snap: BreakerSnapshot = decode(&text(&reply.4).unwrap_or_default(), "breaker")?;
            let settings = &self.policy.breaker;
            let trial = match &snap.breaker.state {
                BreakerState::HalfOpen { .. } => Some(TrialProgress::of(
                    snap.trial_status,
                    snap.trial_started,
                    snap.now,
                    settings.trial_ms,
                )),
                _ => None,
            };
            let change = match snap.breaker.admission(settings, snap.now, &spec.id, trial) {
                BreakerAdmission::Refused(retry_after_ms) => {
                    return Ok(Admission::BreakerOpen { retry_after_ms });
                }
                BreakerAdmission::Allowed { after, closed } => BreakerChange {
                    expect: snap.breaker,
                    after,
                    closed,
                },
            };
            reply = self
                .admit_invocation(spec, Some(&change))
                .invoke_async(&mut *self.conn().await?)
                .await?;
        }
        Err(StoreError::Contended("the strategy's breaker"))
    }

    /// Decides and applies the failure of the run `job` (epoch `epoch` on `node`) that the
    /// finish script answered with a snapshot: calls it again with the decision until one is
    /// applied. Returns the script's last answer.
    async fn finish_crashed(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: &RunEnd,
    ) -> Result<bool, StoreError> {
        let reason = end
            .error
            .clone()
            .unwrap_or_else(|| "runner failed".to_owned());
        let mut decision = String::new();
        for _ in 0..DECISION_ATTEMPTS {
            let reply: Value = self
                .finish_invocation(node, job, epoch, end, &decision)
                .invoke_async(&mut *self.conn().await?)
                .await?;
            let snap: FailureSnapshot = match &reply {
                Value::Int(code) => return Ok(*code != 0),
                other => decode(&text(other).unwrap_or_default(), "failure")?,
            };
            let policy = &self.policy;
            let kind = FailureKind::Crash;
            let d = decide_failure(
                &policy.restart,
                &policy.breaker,
                &snap,
                kind,
                reason.clone(),
            );
            decision = json(&d);
        }
        Err(StoreError::Contended("a crashed run's record"))
    }

    /// Every entry of the list at `key`, head first.
    async fn whole_list(&self, key: String) -> Result<Vec<String>, StoreError> {
        Ok(::redis::cmd("LRANGE")
            .arg(key)
            .arg(0)
            .arg(-1)
            .query_async(&mut *self.conn().await?)
            .await?)
    }

    /// The gauges script's answer read into [`FleetGauges`].
    fn gauges(v: &[i64]) -> Result<FleetGauges, StoreError> {
        let [
            queued,
            running,
            active,
            restarting,
            failed,
            alive,
            capacity,
            runners,
            ready,
            processing,
            breaker_openings,
        ] = v[..]
        else {
            return Err(StoreError::data("the gauges script answered an odd shape"));
        };
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let queue_side = |n: i64| u64::try_from(n).ok();
        Ok(FleetGauges {
            counts: FleetCounts {
                queued: count(queued),
                running: count(running),
                active: count(active),
                restarting: count(restarting),
            },
            failed_last_hour: count(failed),
            nodes_alive: count(alive),
            node_capacity: count(capacity),
            node_runners: count(runners),
            ready: queue_side(ready),
            processing: queue_side(processing),
            breaker_openings: count(breaker_openings),
        })
    }

    /// The records of `ids` in one round trip (plus one for their nodes' last heartbeats), in
    /// that order, and the ids whose record is gone (expired past its retention).
    async fn records<'a>(
        &self,
        conn: &mut crate::redis_pool::CommandConnection,
        ids: &'a [String],
    ) -> Result<(Vec<JobRecord>, Vec<&'a str>), StoreError> {
        if ids.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut pipe = ::redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.job(&JobId::new(id.as_str())));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut **conn).await?;
        let mut records = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, h) in ids.iter().zip(&hashes) {
            match record_from_hash(id, h) {
                Some(r) => records.push(r),
                None => gone.push(id.as_str()),
            }
        }
        self.with_node_beats(conn, &mut records).await?;
        Ok((records, gone))
    }

    /// Sets the last heartbeat of each running record to its node's last heartbeat (a runner's
    /// lease is its node's, and heartbeats write only the reports that changed), in one
    /// round trip.
    async fn with_node_beats(
        &self,
        conn: &mut crate::redis_pool::CommandConnection,
        records: &mut [JobRecord],
    ) -> Result<(), StoreError> {
        let running: Vec<&mut JobRecord> = records
            .iter_mut()
            .filter(|r| r.status == JobStatus::Running && r.node_id.is_some())
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let nodes: Vec<&str> = running
            .iter()
            .filter_map(|r| r.node_id.as_ref().map(NodeId::as_str))
            .collect();
        let beats: Vec<Option<u64>> = ::redis::cmd("ZMSCORE")
            .arg(self.keys.nodes())
            .arg(&nodes)
            .query_async(&mut **conn)
            .await?;
        for (r, beat) in running.into_iter().zip(beats) {
            r.last_heartbeat_at = r.last_heartbeat_at.max(beat);
        }
        Ok(())
    }

    /// The finish script's call.
    fn finish_invocation(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: &RunEnd,
        decision: &str,
    ) -> Call<'_> {
        let mut inv = self.invoke(&FINISH);
        inv.arg(job.as_str())
            .arg(epoch)
            .arg(node.as_str())
            .arg(end.status.as_str())
            .arg(end.error.clone().unwrap_or_default())
            .arg(
                end.flattened_positions
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
            )
            .arg(json(&end.positions))
            .arg(json(&end.stats))
            .arg(account_arg(&end.account))
            .arg(decision);
        inv
    }
}

/// How many times a store decides again when what a decision was made on changed before it
/// could be applied (another failure of the same strategy, a stop request, a trial admitted).
/// A stale decision is answered with the fresh snapshot in the same call, and only an applied
/// decision changes what others decided on, so each round one contender wins: N runners of one
/// strategy crashing at once need at most N rounds.
const DECISION_ATTEMPTS: usize = 64;

/// The admission script's code for "the breaker is not closed: decide on this snapshot".
const ADMIT_NEEDS_BREAKER_DECISION: i64 = 5;

/// What the admission script reads for a breaker decision.
#[derive(Debug, serde::Deserialize)]
struct BreakerSnapshot {
    now: u64,
    breaker: Breaker,
    #[serde(default)]
    trial_status: Option<JobStatus>,
    #[serde(default)]
    trial_started: Option<u64>,
}

/// A breaker decision the admission script applies if the breaker is still `expect`.
#[derive(Debug, serde::Serialize)]
struct BreakerChange {
    expect: Breaker,
    after: Breaker,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed: Option<JobId>,
}

/// The context every store script receives first: ARGV[1..15], which the prelude (`lib.lua`)
/// reads into `P` and `C`. One named field per argument, in wire order; [`args`](Self::args) is
/// the only place that knows the positions (docs/redis-schema.md lists them with these names).
/// It holds no restart or breaker setting: the scripts apply decisions made by
/// [`crate::policy`], they make none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptContext {
    /// ARGV[1]: the key prefix (`P` in lib.lua).
    pub prefix: String,
    /// ARGV[2]: runners of the free tier.
    pub tier_free: u32,
    /// ARGV[3]: runners of the basic tier.
    pub tier_basic: u32,
    /// ARGV[4]: runners of the pro tier.
    pub tier_pro: u32,
    /// ARGV[5]: runners of the enterprise tier.
    pub tier_enterprise: u32,
    /// ARGV[6]: the breaker's window, ms: a closed breaker's hash of counted failures expires
    /// after it.
    pub breaker_window_ms: u64,
    /// ARGV[7]: retention of an ended job's record, **seconds** ([`FleetPolicy::retention`],
    /// [`FINISHED_RETENTION`](super::FINISHED_RETENTION)).
    pub retention_s: u64,
    /// ARGV[8]: record accepted writes in the audit stream (sent as `1` / `0`).
    pub audit: bool,
    /// ARGV[9]: runners holding slots fleet-wide.
    pub max_runners: u32,
    /// ARGV[10]: jobs waiting in the queue fleet-wide.
    pub max_queued: u32,
    /// ARGV[11]: the Retry-After of those two refusals, ms.
    pub retry_after_ms: u64,
    /// ARGV[12]: the ready list the scripts push queued jobs onto; empty when the queue lives
    /// outside Redis.
    pub ready_list: String,
    /// ARGV[13]: events the lifecycle stream keeps (approximately).
    pub events_max_len: u64,
    /// ARGV[14]: age past which events are trimmed, ms.
    pub events_max_age_ms: u64,
    /// ARGV[15]: the Pub/Sub channel on which a sharded fleet announces work to idle nodes
    /// ([`crate::wake`]); empty when nothing is announced (one shard).
    pub wake_channel: String,
}

impl ScriptContext {
    /// How many arguments the context takes: a script's own arguments start after them.
    pub const LEN: usize = 15;

    /// The context for `keys`, `policy` and the ready list the scripts push onto (none: an
    /// outside queue).
    pub fn new(keys: &Keys, p: &FleetPolicy, ready: Option<&str>) -> Self {
        let t = &p.tiers;
        Self {
            prefix: keys.prefix().to_owned(),
            tier_free: t.free,
            tier_basic: t.basic,
            tier_pro: t.pro,
            tier_enterprise: t.enterprise,
            breaker_window_ms: p.breaker.window_ms,
            retention_s: p.retention.as_secs().max(1),
            audit: p.audit,
            max_runners: p.limits.max_runners,
            max_queued: p.limits.max_queued,
            retry_after_ms: p.limits.retry_after_ms,
            ready_list: ready.unwrap_or_default().to_owned(),
            events_max_len: p.events.max_len,
            events_max_age_ms: p.events.max_age_ms,
            wake_channel: String::new(),
        }
    }

    /// The arguments in wire order, ARGV[1..15].
    pub fn args(&self) -> [String; Self::LEN] {
        [
            self.prefix.clone(),
            self.tier_free.to_string(),
            self.tier_basic.to_string(),
            self.tier_pro.to_string(),
            self.tier_enterprise.to_string(),
            self.breaker_window_ms.to_string(),
            self.retention_s.to_string(),
            if self.audit { "1" } else { "0" }.to_owned(),
            self.max_runners.to_string(),
            self.max_queued.to_string(),
            self.retry_after_ms.to_string(),
            self.ready_list.clone(),
            self.events_max_len.to_string(),
            self.events_max_age_ms.to_string(),
            self.wake_channel.clone(),
        ]
    }
}

fn account_arg(account: &Option<crate::kind::SavedState>) -> &str {
    account.as_ref().map_or("", |a| a.as_str())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A snapshot a script answered, as JSON (`what` names it in the error).
fn decode<T: serde::de::DeserializeOwned>(raw: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::data(format!("{what} snapshot {raw}: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(
    field: &str,
    raw: Option<&String>,
) -> Result<T, StoreError> {
    let raw = raw.ok_or_else(|| StoreError::data(format!("job hash lacks '{field}'")))?;
    serde_json::from_str(raw).map_err(|e| StoreError::data(format!("job field '{field}': {e}")))
}

/// A history entry as `store_gauges.lua` writes it and [`parse_sample`] reads it.
pub(super) fn sample_entry(s: &FleetSample) -> String {
    format!(
        "{},{},{},{},{},{},{}",
        s.at, s.queued, s.running, s.active, s.restarting, s.nodes_alive, s.node_capacity
    )
}

/// A history entry (`at,queued,running,active,restarting,nodes_alive,node_capacity`).
fn parse_sample(entry: &str) -> Option<FleetSample> {
    let mut n = entry.split(',').map(|f| f.parse::<u64>().ok());
    let mut next = || n.next().flatten();
    Some(FleetSample {
        at: next()?,
        queued: next()?,
        running: next()?,
        active: next()?,
        restarting: next()?,
        nodes_alive: next()?,
        node_capacity: next()?,
    })
}

/// Builds a [`JobRecord`] from a job hash (`HGETALL`). `None` for a missing hash.
///
/// A record whose stored data cannot be read (a spec that is not a job spec, written by some
/// other client or damaged) is still shown, with what can be read and the reason in `error`:
/// one bad record must not hide a user's other runners.
fn record_from_hash(id: &str, h: &HashMap<String, String>) -> Option<JobRecord> {
    if h.is_empty() {
        return None;
    }
    let num = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok());
    let mut unreadable = Vec::new();
    let mut record = match parse::<JobSpec>("spec", h.get("spec")) {
        Ok(spec) => JobRecord::queued(&spec, num("created").unwrap_or(0)),
        Err(e) => {
            unreadable.push(e.to_string());
            JobRecord::unreadable(
                JobId::new(id),
                UserId::new(h.get("user").cloned().unwrap_or_default()),
                h.get("strategy").cloned().unwrap_or_default().into(),
                num("created").unwrap_or(0),
            )
        }
    };
    match h.get("status").and_then(|s| JobStatus::parse(s)) {
        Some(status) => record.status = status,
        None => unreadable.push("job hash has no valid status".into()),
    }
    record.node_id = h
        .get("node")
        .filter(|n| !n.is_empty())
        .map(|n| NodeId::new(n.as_str()));
    record.epoch = num("epoch").unwrap_or(0);
    record.restarts = num("restarts").unwrap_or(0) as u32;
    record.started_at = num("started");
    record.ended_at = num("ended");
    record.last_heartbeat_at = num("hb");
    record.error = h.get("error").cloned();
    record.stop_mode = h.get("stop_mode").and_then(|m| match m.as_str() {
        "flatten" => Some(StopMode::Flatten),
        "hold" => Some(StopMode::Hold),
        _ => None,
    });
    record.flattened_positions = num("flattened").map(|n| n as u32);
    if h.contains_key("positions") {
        match parse("positions", h.get("positions")) {
            Ok(p) => record.positions = p,
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    if h.contains_key("stats") {
        match parse("stats", h.get("stats")) {
            Ok(s) => record.stats = s,
            Err(e) => unreadable.push(e.to_string()),
        }
    }
    if !unreadable.is_empty() {
        let note = format!("stored record unreadable: {}", unreadable.join("; "));
        record.error = Some(match record.error.take() {
            Some(e) => format!("{e}; {note}"),
            None => note,
        });
    }
    Some(record)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

impl JobStore for RedisStore {
    async fn admit(&self, spec: &JobSpec) -> Result<Admission, StoreError> {
        // Gathered with the other admissions in flight (see `coalesce`).
        let reply = self
            .admissions
            .admit(self, admit_arg_values(spec, None))
            .await?;
        self.admission_after(reply, spec).await
    }

    async fn admit_many(&self, specs: &[JobSpec]) -> Result<Vec<Admission>, StoreError> {
        // One round trip: a pipeline of calls of ADMIT_CHUNK admissions each. Each admission
        // is decided on its own, atomically, in order; a chunk's call is short enough not to
        // hold Redis (other clients wait while a script runs).
        let calls: Vec<Call<'_>> = specs
            .chunks(ADMIT_CHUNK)
            .map(|chunk| {
                let mut call = self.invoke(&ADMIT_MANY);
                for spec in chunk {
                    admit_args(&mut call, spec, None);
                }
                call
            })
            .collect();
        let replies = self.admission_calls(&calls, specs.len()).await?;
        // Starts under a breaker that is not closed (rare) are decided one by one.
        let mut admissions = Vec::with_capacity(specs.len());
        for (reply, spec) in replies.into_iter().zip(specs) {
            admissions.push(self.admission_after(reply, spec).await?);
        }
        Ok(admissions)
    }

    fn queues_inline(&self) -> bool {
        self.queue.is_some()
    }

    async fn confirm_enqueued(&self, jobs: &[JobId]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = jobs.iter().map(JobId::as_str).collect();
        let _: i64 = ::redis::cmd("ZREM")
            .arg(self.keys.pending())
            .arg(&ids)
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(())
    }

    async fn fleet_gauges(&self) -> Result<FleetGauges, StoreError> {
        let v: Vec<i64> = self
            .invoke(&GAUGES)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Self::gauges(&v)
    }

    async fn sample_history(&self, every: Duration, keep: u32) -> Result<bool, StoreError> {
        // Nil (the script's false) when a sample was taken within `every`.
        let taken: Option<Vec<i64>> = self
            .invoke(&GAUGES)
            .arg(every.as_millis().max(1) as u64)
            .arg(keep.max(1))
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(taken.is_some())
    }

    async fn history(&self) -> Result<Vec<FleetSample>, StoreError> {
        let raw: Vec<String> = self.whole_list(self.keys.history()).await?;
        // Newest first in Redis; an odd entry (written by something else) is skipped.
        Ok(raw.iter().rev().filter_map(|e| parse_sample(e)).collect())
    }

    async fn active_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut conn = self.conn().await?;
        // Job ids are `job-<UUIDv7>`: sorted as text, they are sorted by creation.
        let ids: Vec<String> = ::redis::cmd("SORT")
            .arg(self.keys.active())
            .arg("ALPHA")
            .arg("DESC")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut *conn)
            .await?;
        let (records, _) = self.records(&mut conn, &ids).await?;
        Ok(records)
    }

    async fn job_events(&self, job: &JobId) -> Result<Vec<RunnerEvent>, StoreError> {
        // The admission's event is read from the job's record (store_admit.lua writes no
        // history entry for it), and so is its latest claim until the job's next event moves
        // it into the list (history_push in lib.lua); every other one from the history list.
        // The record is read first: a claim moved into the list between the two reads is
        // then in the list, and the record's copy is dropped below (not newer than the list).
        type Text = Option<String>;
        type Record = (
            Text,
            Text,
            Text,
            Option<u64>,
            Text,
            Option<u64>,
            Text,
            Option<u64>,
        );
        let ((user, admitted, tier, created, claimed, epoch, node, started), raw): (
            Record,
            Vec<String>,
        ) = ::redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.job(job))
            .arg(&["user", "admitted_event", "tier", "created"])
            .arg(&["claimed_event", "epoch", "node", "started"])
            .cmd("LRANGE")
            .arg(self.keys.job_events(job))
            .arg(0)
            .arg(-1)
            .query_async(&mut *self.conn().await?)
            .await?;
        let event = |id: String, kind: &str, epoch, node, reason, at| RunnerEvent {
            id,
            job: job.clone(),
            user: UserId::new(user.clone().unwrap_or_default()),
            kind: kind.into(),
            epoch,
            node,
            reason,
            at,
        };
        let first = match (&user, admitted, tier, created) {
            (Some(_), Some(id), Some(tier), Some(at)) => Some(event(
                id,
                "admitted",
                0,
                String::new(),
                format!("tier {tier}"),
                at,
            )),
            _ => None,
        };
        // Lua's cjson writes the epoch as a string; one odd entry is skipped, not fatal.
        let later: Vec<RunnerEvent> = raw
            .iter()
            .filter_map(|e| {
                let mut v: serde_json::Value = serde_json::from_str(e).ok()?;
                let epoch = v["epoch"].as_str().and_then(|s| s.parse::<u64>().ok());
                v["epoch"] = epoch.unwrap_or(0).into();
                serde_json::from_value(v).ok()
            })
            .collect();
        let newest = |id: &str| id.parse::<EventId>().ok();
        let listed = later.last().and_then(|e| newest(&e.id));
        let claim = claimed.filter(|id| newest(id) > listed).map(|id| {
            let node = node.unwrap_or_default();
            event(
                id,
                "claimed",
                epoch.unwrap_or(0),
                node,
                String::new(),
                started.unwrap_or(0),
            )
        });
        Ok(first.into_iter().chain(later).chain(claim).collect())
    }

    async fn events_after(
        &self,
        after: &EventId,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<RunnerEvent>, StoreError> {
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count.max(1));
        if let Some(wait) = wait {
            cmd.arg("BLOCK").arg((block_seconds(wait) * 1000.0) as u64);
        }
        cmd.arg("STREAMS")
            .arg(self.keys.events())
            .arg(after.to_string());
        // A blocking read holds its connection until an event comes: the blocking pool's.
        let reply: Option<::redis::streams::StreamReadReply> = match wait {
            Some(wait) => {
                cmd.query_async(&mut self.pools.blocking(wait).await?)
                    .await?
            }
            None => cmd.query_async(&mut *self.conn().await?).await?,
        };
        Ok(reply
            .iter()
            .flat_map(|r| &r.keys)
            .flat_map(|k| &k.ids)
            .map(event_of)
            .collect())
    }

    async fn events_lost_after(&self, after: &EventId) -> Result<bool, StoreError> {
        // `entries-added` counts every append ever, `length` what is kept: runfleet never
        // deletes single entries, so the difference is what the caps trimmed.
        let info: Result<HashMap<String, Value>, _> = ::redis::cmd("XINFO")
            .arg("STREAM")
            .arg(self.keys.events())
            .query_async(&mut *self.conn().await?)
            .await;
        let info = match info {
            Ok(info) => info,
            // No stream yet: nothing was ever trimmed.
            Err(e) if e.to_string().contains("no such key") => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let number = |k: &str| {
            info.get(k)
                .and_then(text)
                .and_then(|t| t.parse::<u64>().ok())
        };
        let (Some(added), Some(kept)) = (number("entries-added"), number("length")) else {
            return Err(StoreError::data(
                "XINFO STREAM without entries-added or length",
            ));
        };
        if added <= kept {
            return Ok(false);
        }
        let id_of = |v: &Value| -> Option<EventId> {
            match v {
                Value::Array(entry) => entry.first().and_then(text)?.parse().ok(),
                other => text(other)?.parse().ok(),
            }
        };
        let oldest = info.get("first-entry").and_then(id_of);
        let newest = info.get("last-generated-id").and_then(id_of);
        Ok(match (oldest, newest) {
            (Some(oldest), _) => *after < oldest,
            (None, Some(newest)) => *after < newest,
            (None, None) => false,
        })
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        let reply: ::redis::streams::StreamRangeReply = ::redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut *self.conn().await?)
            .await?;
        match reply.ids.first() {
            Some(e) => {
                e.id.parse()
                    .map_err(|err: String| StoreError::data(format!("event stream: {err}")))
            }
            None => Ok(EventId::ZERO),
        }
    }

    async fn job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let h: HashMap<String, String> = ::redis::cmd("HGETALL")
            .arg(self.keys.job(job))
            .query_async(&mut *conn)
            .await?;
        let mut records: Vec<JobRecord> = record_from_hash(job.as_str(), &h).into_iter().collect();
        self.with_node_beats(&mut conn, &mut records).await?;
        Ok(records.pop())
    }

    async fn spec(&self, job: &JobId) -> Result<Option<JobSpec>, StoreError> {
        let raw: Option<String> = ::redis::cmd("HGET")
            .arg(self.keys.job(job))
            .arg("spec")
            .query_async(&mut *self.conn().await?)
            .await?;
        raw.map(|r| parse("spec", Some(&r))).transpose()
    }

    async fn pnl_history(&self, job: &JobId) -> Result<Vec<PnlPoint>, StoreError> {
        let raw: Vec<String> = self.whole_list(self.keys.job_pnl(job)).await?;
        Ok(raw
            .iter()
            .filter_map(|p| {
                let (at, pnl) = p.split_once(',')?;
                Some(PnlPoint {
                    at: at.parse().ok()?,
                    total_pnl: pnl.parse().ok()?,
                })
            })
            .collect())
    }

    async fn user_jobs(&self, user: &UserId) -> Result<Vec<JobRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let index = self.keys.user_jobs(user);
        let ids: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .query_async(&mut *conn)
            .await?;
        let (records, gone) = self.records(&mut conn, &ids).await?;
        if !gone.is_empty() {
            // Records past their retention expired; drop them from the index too.
            let _: i64 = ::redis::cmd("ZREM")
                .arg(&index)
                .arg(&gone)
                .query_async(&mut *conn)
                .await?;
        }
        Ok(records)
    }
}

impl LeaseStore for RedisStore {
    async fn claim(
        &self,
        node: &NodeId,
        jobs: &[JobId],
        lease: Duration,
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.invoke(&CLAIM);
        inv.arg(node.as_str()).arg(lease.as_millis() as u64);
        for j in jobs {
            inv.arg(j.as_str());
        }
        let rows: Vec<Vec<Value>> = inv.invoke_async(&mut *self.conn().await?).await?;
        if rows
            .first()
            .and_then(|row| row.get(1))
            .and_then(text)
            .as_deref()
            == Some("fenced")
        {
            return Err(StoreError::Fenced);
        }
        rows.into_iter().map(claim_outcome).collect()
    }

    async fn claim_queued(
        &self,
        node: &NodeId,
        max: usize,
        lease: Duration,
    ) -> Result<Option<QueuedClaims>, StoreError> {
        let Some(queue) = self.queue.as_deref().filter(|_| max > 0) else {
            return Ok(None);
        };
        let mut inv = self.invoke(&CLAIM);
        inv.arg(node.as_str())
            .arg(lease.as_millis() as u64)
            .arg("")
            .arg(max.min(CLAIM_QUEUED_MAX))
            .arg(self.keys.claimers(queue));
        let mut reply: Vec<Value> = inv.invoke_async(&mut *self.conn().await?).await?;
        if reply.is_empty() {
            return Err(StoreError::data("claim reply"));
        }
        let capped: i64 = ::redis::from_redis_value(reply.remove(0))
            .map_err(|e| StoreError::data(format!("claim reply: {e}")))?;
        if capped < 0 {
            return Err(StoreError::Fenced);
        }
        let outcomes = reply
            .into_iter()
            .map(|row| {
                claim_outcome(
                    ::redis::from_redis_value(row)
                        .map_err(|e| StoreError::data(format!("claim row: {e}")))?,
                )
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(QueuedClaims {
            outcomes,
            capped: capped == 1,
        }))
    }

    async fn renew(
        &self,
        node: &NodeInfo,
        beats: &[RunnerBeat],
        lease: Duration,
    ) -> Result<Vec<JobId>, StoreError> {
        self.renew_beats(node, &beats.iter().collect::<Vec<_>>(), lease)
            .await
    }

    async fn finish(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: RunEnd,
    ) -> Result<bool, StoreError> {
        if end.status == JobStatus::Crashed {
            return self.finish_crashed(node, job, epoch, &end).await;
        }
        let accepted: i64 = self
            .finish_invocation(node, job, epoch, &end, "")
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(accepted != 0)
    }

    async fn hand_back(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        account: Option<crate::kind::SavedState>,
    ) -> Result<bool, StoreError> {
        let accepted: i64 = self
            .invoke(&HAND_BACK)
            .arg(job.as_str())
            .arg(epoch)
            .arg(node.as_str())
            .arg(account_arg(&account))
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(accepted == 1)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut conn = self.conn().await?;
        let seen: Vec<(String, u64)> = ::redis::cmd("ZREVRANGE")
            .arg(self.keys.nodes())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut *conn)
            .await?;
        if seen.is_empty() {
            return Ok(Vec::new());
        }
        let node_keys: Vec<String> = seen
            .iter()
            .map(|(n, _)| self.keys.node(&NodeId::new(n.as_str())))
            .collect();
        let infos: Vec<Option<String>> = ::redis::cmd("MGET")
            .arg(&node_keys)
            .query_async(&mut *conn)
            .await?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for ((id, at), info) in seen.into_iter().zip(infos) {
            match info.and_then(|i| serde_json::from_str::<NodeInfo>(&i).ok()) {
                Some(n) => live.push(NodeInfo {
                    last_heartbeat_at: Some(at),
                    ..n
                }),
                None => dead.push(id),
            }
        }
        if !dead.is_empty() {
            let _: i64 = ::redis::cmd("ZREM")
                .arg(self.keys.nodes())
                .arg(&dead)
                .query_async(&mut *conn)
                .await?;
        }
        Ok(live)
    }
}

impl CommandBus for RedisStore {
    async fn request_stop(&self, job: &JobId, mode: StopMode) -> Result<StopRequest, StoreError> {
        let reply: Vec<String> = self
            .invoke(&STOP)
            .arg(job.as_str())
            .arg(mode.as_str())
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(match reply.first().map(String::as_str) {
            Some("missing") => StopRequest::NotFound,
            Some("ended") => StopRequest::AlreadyEnded(
                reply
                    .get(1)
                    .and_then(|s| JobStatus::parse(s))
                    .unwrap_or(JobStatus::Stopped),
            ),
            Some("stopped") => StopRequest::Stopped,
            Some("sent") => StopRequest::Sent {
                node: NodeId::new(reply.get(1).cloned().unwrap_or_default()),
            },
            other => return Err(StoreError::data(format!("stop script answered {other:?}"))),
        })
    }

    async fn next_command(
        &self,
        node: &NodeId,
        wait: Duration,
    ) -> Result<Option<NodeCommand>, StoreError> {
        let popped: Option<(String, String)> = {
            let mut conn = self.pools.blocking(wait).await?;
            ::redis::cmd("BLPOP")
                .arg(self.keys.commands(node))
                .arg(block_seconds(wait))
                .query_async(&mut conn)
                .await?
        };
        popped.map(|(_, raw)| command_of(&raw)).transpose()
    }
}

impl ApiKeys for RedisStore {
    async fn add_key(
        &self,
        user: &UserId,
        key_id: &str,
        hash: &str,
    ) -> Result<ApiKeyInfo, StoreError> {
        let created: i64 = self
            .invoke(&ADD_KEY)
            .arg(user.as_str())
            .arg(key_id)
            .arg(hash)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        if created < 0 {
            return Err(StoreError::conflict("api key id", key_id));
        }
        Ok(ApiKeyInfo {
            key_id: key_id.to_owned(),
            created_at: created as u64,
        })
    }

    async fn key(&self, key_id: &str) -> Result<Option<(UserId, String)>, StoreError> {
        let (user, hash): (Option<String>, Option<String>) = ::redis::cmd("HMGET")
            .arg(self.keys.api_key(key_id))
            .arg("user")
            .arg("hash")
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(user.zip(hash).map(|(u, h)| (UserId::new(u), h)))
    }

    async fn keys(&self, user: &UserId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        let mut conn = self.conn().await?;
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(self.keys.user_keys(user))
            .query_async(&mut *conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.hget(self.keys.api_key(id), "created");
        }
        let created: Vec<Option<u64>> = pipe.query_async(&mut *conn).await?;
        let mut keys: Vec<ApiKeyInfo> = ids
            .into_iter()
            .zip(created)
            .filter_map(|(key_id, at)| at.map(|created_at| ApiKeyInfo { key_id, created_at }))
            .collect();
        keys.sort_by_key(|k| k.created_at);
        Ok(keys)
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, StoreError> {
        let n: i64 = self
            .invoke(&REVOKE_KEY)
            .arg(user.as_str())
            .arg(key_id)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(n == 1)
    }
}

impl AdminAudit for RedisStore {
    async fn record_admin(&self, action: &AdminAction) -> Result<AdminEntry, StoreError> {
        let id: String = ::redis::cmd("XADD")
            .arg(self.keys.admin_audit())
            // Exact trimming: admin actions are rare, and the cap is then what it says.
            .arg("MAXLEN")
            .arg(self.policy.admin_audit_max)
            .arg("*")
            .arg("actor")
            .arg(&action.actor)
            .arg("action")
            .arg(&action.action)
            .arg("user")
            .arg(&action.user)
            .arg("detail")
            .arg(action.detail.to_string())
            .arg("requestId")
            .arg(&action.request_id)
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(AdminEntry {
            at: stream_id_ms(&id)?,
            id,
            action: action.clone(),
        })
    }

    async fn admin_trail(&self, count: usize) -> Result<Vec<AdminEntry>, StoreError> {
        let reply: ::redis::streams::StreamRangeReply = ::redis::cmd("XREVRANGE")
            .arg(self.keys.admin_audit())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut *self.conn().await?)
            .await?;
        reply
            .ids
            .into_iter()
            .map(|e| {
                let field = |k: &str| e.get::<String>(k).unwrap_or_default();
                let detail = serde_json::from_str(&field("detail"))
                    .map_err(|err| StoreError::data(format!("admin audit {}: {err}", e.id)))?;
                Ok(AdminEntry {
                    at: stream_id_ms(&e.id)?,
                    action: AdminAction {
                        actor: field("actor"),
                        action: field("action"),
                        user: field("user"),
                        detail,
                        request_id: field("requestId"),
                    },
                    id: e.id,
                })
            })
            .collect()
    }
}

/// Jobs one claim from the ready list takes at most: bounds how long the script holds Redis
/// (a node with more free slots claims again at once). Measured on a loaded 2-core machine
/// (docs/benchmarks.md): about 30 µs of Redis time per job, so a claim of 32 holds Redis
/// about 1 ms (64 held it 2-3 ms, up to 14 with 5,000 runners starting beside it).
const CLAIM_QUEUED_MAX: usize = 32;

/// One row of the claim script's answer: {id, 'claimed', epoch, spec, account, ms since
/// admission} or {id, reason}.
/// A command as its list holds it.
fn command_of(raw: &str) -> Result<NodeCommand, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::data(format!("command: {e}")))
}

/// An entry of the event stream.
fn event_of(e: &::redis::streams::StreamId) -> RunnerEvent {
    let field = |k: &str| e.get::<String>(k).unwrap_or_default();
    let number = |k: &str| field(k).parse::<u64>().unwrap_or(0);
    RunnerEvent {
        job: JobId::new(field("job")),
        user: UserId::new(field("user")),
        kind: field("type"),
        epoch: number("epoch"),
        node: field("node"),
        reason: field("reason"),
        at: number("at"),
        id: e.id.clone(),
    }
}

fn claim_outcome(row: Vec<Value>) -> Result<ClaimOutcome, StoreError> {
    let id = row
        .first()
        .and_then(text)
        .ok_or_else(|| StoreError::data("claim row"))?;
    let what = row.get(1).and_then(text).unwrap_or_default();
    if what != "claimed" {
        return Ok(ClaimOutcome::Dropped {
            job_id: JobId::new(id),
            reason: what,
        });
    }
    let epoch = row
        .get(2)
        .and_then(text)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    // One job's bad spec fails that job alone, never its batch-mates.
    let spec: JobSpec = match parse("spec", row.get(3).and_then(text).as_ref()) {
        Ok(spec) => spec,
        Err(e) => {
            return Ok(ClaimOutcome::Unrunnable {
                job_id: JobId::new(id),
                epoch,
                reason: e.to_string(),
            });
        }
    };
    let account = row
        .get(4)
        .and_then(text)
        .filter(|a| !a.is_empty())
        .map(crate::kind::SavedState::from_text);
    let since_created_ms = row
        .get(5)
        .and_then(text)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Ok(ClaimOutcome::Claimed(Box::new(Lease {
        spec,
        epoch,
        account,
        since_created_ms,
    })))
}

/// Runners renewed per heartbeat script call at most (a heartbeat sends as many calls as it
/// needs): bounds how long one call holds Redis. Measured with `heartbeat-load`: 500 runners
/// whose beats each carried a saved state of about 700 bytes held Redis 8 ms per call; the
/// bench's SLOWLOG then showed chunks of 128 KiB of idle runners' checkpoints at 8-11 ms, and
/// chunks of 100 new runners' first stats at up to 7.6 ms (a loaded 2-core machine), and on a
/// quiet machine chunks of 50 new runners' first reports (each a record update, a P&L point and
/// an audit entry: about 8 commands a runner) up to 5.6 ms, past issue 15's 5 ms bound.
const RENEW_CHUNK: usize = 20;
/// Report bytes per heartbeat script call at most (a chunk ends at the runner that passes it).
const RENEW_CHUNK_BYTES: usize = 8 * 1024;

/// What the admission script answers: code, tier, limit, current, detail.
pub(super) type AdmitReply = (i64, String, u32, u32, Value);

/// The admission the script's answer for `spec` means.
fn admission_of(reply: AdmitReply, spec: &JobSpec) -> Result<Admission, StoreError> {
    let (code, tier, limit, current, last) = reply;
    if code == -2 {
        return Ok(Admission::Invalid {
            reason: text(&last).unwrap_or_default(),
        });
    }
    if code == ADMIT_FAILED {
        return Err(StoreError::data(format!(
            "the admission of {} failed in Redis: {}",
            spec.id,
            text(&last).unwrap_or_default()
        )));
    }
    let retry_after_ms = text(&last).and_then(|t| t.parse().ok()).unwrap_or(0);
    let tier: Tier = tier.parse().map_err(StoreError::data)?;
    match code {
        1 => Ok(Admission::Admitted {
            tier,
            limit,
            current,
        }),
        0 => Ok(Admission::LimitReached {
            tier,
            limit,
            current,
        }),
        3 => Ok(Admission::FleetFull { retry_after_ms }),
        4 => Ok(Admission::QueueFull { retry_after_ms }),
        _ => Err(StoreError::conflict("job id", &spec.id)),
    }
}

/// The batch admission script's answer for a job whose admission raised an error (alone).
const ADMIT_FAILED: i64 = -3;

/// How many admissions one call of the batch admission script makes at most: about 2 ms of
/// Redis time on a 2-core machine, so that a batch never holds Redis long (docs/benchmarks.md).
pub(super) const ADMIT_CHUNK: usize = 64;

/// One admission's arguments (store_admit.lua's, and each group of store_admit_many.lua's).
fn admit_args(call: &mut Call<'_>, spec: &JobSpec, breaker: Option<&BreakerChange>) {
    for arg in admit_arg_values(spec, breaker) {
        call.arg(arg);
    }
}

/// The admission scripts' six arguments for `spec` (see store_admit.lua).
fn admit_arg_values(spec: &JobSpec, breaker: Option<&BreakerChange>) -> [String; 6] {
    [
        spec.id.as_str().to_owned(),
        spec.user_id.as_str().to_owned(),
        spec.strategy_id.as_str().to_owned(),
        json(spec),
        breaker.map(json).unwrap_or_default(),
        // The spec is the typed JobSpec's: the script need not check its shape.
        "1".to_owned(),
    ]
}

/// The time part of a stream entry id (`<ms>-<seq>`): when Redis appended it.
fn stream_id_ms(id: &str) -> Result<u64, StoreError> {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .ok_or_else(|| StoreError::data(format!("stream id {id}")))
}

impl Sweeper for RedisStore {
    async fn sweep(
        &self,
        interval: Duration,
        batch: u32,
    ) -> Result<Option<SweepReport>, StoreError> {
        let snapshots: Option<Vec<String>> = self
            .invoke(&SWEEP)
            .arg(interval.as_millis() as u64)
            .arg(batch)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        let Some(snapshots) = snapshots else {
            return Ok(None);
        };
        let mut report = SweepReport::default();
        if snapshots.is_empty() {
            return Ok(Some(report));
        }
        // The policy decides each lapsed run; one round trip applies them all, each on its own
        // only if still current (a decision gone stale is left for the next sweep).
        let policy = &self.policy;
        let mut decisions = Vec::with_capacity(snapshots.len());
        for raw in &snapshots {
            let snap: FailureSnapshot = decode(raw, "failure")?;
            let kind = FailureKind::NodeLost;
            let d = decide_failure(
                &policy.restart,
                &policy.breaker,
                &snap,
                kind,
                snap.silence(),
            );
            let mut inv = self.invoke(&FAIL_LOST);
            inv.arg(json(&d));
            decisions.push(inv);
        }
        let outcomes: Vec<String> =
            invoke_all(&self.mode, &decisions, &mut *self.conn().await?).await?;
        for outcome in outcomes {
            match outcome.as_str() {
                "restart" => report.restarting += 1,
                "failed" => report.failed += 1,
                _ => continue,
            }
            report.crashed += 1;
        }
        Ok(Some(report))
    }

    async fn due_restarts(&self, batch: u32) -> Result<Vec<JobId>, StoreError> {
        let ids: Vec<String> = self
            .invoke(&PROMOTE)
            .arg(batch)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(ids.into_iter().map(JobId::new).collect())
    }

    async fn unconfirmed(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> Result<Vec<JobId>, StoreError> {
        if self.queues_inline() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = self
            .invoke(&RECONCILE)
            .arg(older_than.as_millis() as u64)
            .arg(batch)
            .invoke_async(&mut *self.conn().await?)
            .await?;
        Ok(ids.into_iter().map(JobId::new).collect())
    }
}

impl Subscriptions for RedisStore {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        let (secs, micros): (u64, u64) = ::redis::cmd("TIME")
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError> {
        let (tier, expires): (Option<String>, Option<u64>) = ::redis::cmd("HMGET")
            .arg(self.keys.subscription(user))
            .arg("tier")
            .arg("expiresAtMs")
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(match (tier.and_then(|t| t.parse::<Tier>().ok()), expires) {
            (Some(tier), Some(expires_at_ms)) => Some(Subscription {
                tier,
                expires_at_ms,
            }),
            _ => None,
        })
    }

    async fn subscribe(
        &self,
        user: &UserId,
        tier: Tier,
        days: u32,
    ) -> Result<Subscription, StoreError> {
        let sub = Subscription::for_days(tier, self.now_ms().await?, days);
        let () = ::redis::cmd("HSET")
            .arg(self.keys.subscription(user))
            .arg("tier")
            .arg(tier.as_str())
            .arg("expiresAtMs")
            .arg(sub.expires_at_ms)
            .query_async(&mut *self.conn().await?)
            .await
            .map(|_: i64| ())?;
        Ok(sub)
    }

    async fn active_count(&self, user: &UserId) -> Result<u32, StoreError> {
        let n: u32 = ::redis::cmd("SCARD")
            .arg(self.keys.user_active(user))
            .query_async(&mut *self.conn().await?)
            .await?;
        Ok(n)
    }
}
