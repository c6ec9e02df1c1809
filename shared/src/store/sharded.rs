//! A fleet whose state is split into shards (`redis.shards > 1`), so that a Redis Cluster
//! spreads it over its masters: [`ShardedStore`].
//!
//! Each shard is a whole [`RedisStore`] under its own hash tag ([`Keys::shard`]): its own job
//! records, users, ready list, node leases, sweep and event stream. A user lives in one shard
//! ([`crate::shard`]), and their job ids and API key ids are made to hash to it, so every
//! call about a user, a job or a key goes to exactly one shard and stays one atomic script in
//! one slot. Fleet-wide reads (gauges, nodes, the admin's runner list, the event feed) ask
//! every shard at once and merge; fleet-wide singletons (the load history, the admin trail,
//! the clock) live in shard 0.
//!
//! A worker node's lease is kept in every shard it has claimed in: its heartbeat is one
//! renewal per such shard (and its home shard, where it registers while it holds nothing),
//! sent together. A node refused in any shard fences itself whole, as on one Redis.
//!
//! Fleet-wide limits (`limits.max_runners`, `limits.max_queued`) apply per shard, divided by
//! the shard count (rounded up): each shard enforces its part atomically, and the sum is the
//! fleet's limit. A fleet whose users cluster in few shards reaches a shard's part before the
//! fleet's limit; with many users the parts fill evenly.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;

use super::{
    AdminAction, AdminAudit, AdminEntry, Admission, ApiKeyInfo, ApiKeys, ClaimOutcome, CommandBus,
    EventId, FleetGauges, FleetPolicy, FleetSample, JobStore, LeaseStore, NodeCommand, NodeInfo,
    PnlPoint, QueuedClaims, RedisStore, RunEnd, RunnerBeat, RunnerEvent, StopRequest, StoreError,
    Subscriptions, SweepReport, Sweeper,
};
use crate::ids::{JobId, NodeId, UserId};
use crate::job::{JobRecord, JobSpec, StopMode};
use crate::shard::{Placement, group_by_shard, shard_of};
use crate::tier::{Subscription, Tier};
use crate::wake::{LazyWake, Listener, Listeners, WakeUp, wait_for};

/// How long the merged event feed waits between looks at the shards when a read may wait.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// How long a read of the merged feed waits at most for the shards' clocks to pass the events
/// it found (a millisecond when the masters' clocks agree).
const SETTLE: Duration = Duration::from_millis(100);

/// How often a node waiting for commands looks at its shards even without a wake-up (one
/// lost in a cluster bus partition).
const SAFETY_SCAN: Duration = Duration::from_secs(10);

/// The fleet's state over several shards (see the module docs). Cloning shares it.
#[derive(Debug, Clone)]
pub struct ShardedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Vec<RedisStore>,
    count: u32,
    wake: LazyWake,
    /// Per node id of this process: the shards it holds (or held) a lease in, and when that
    /// lease surely still runs (from when the call that extended it was sent).
    nodes: Mutex<HashMap<NodeId, HashMap<usize, Instant>>>,
    /// Each node's wake-ups for commands, kept between its waits.
    listeners: Listeners,
    /// Where the next claim starts, so that no shard is always looked at first.
    next_claim: AtomicUsize,
}

/// `policy` for one of `shards` shards: the fleet-wide limits divided among them.
pub fn shard_policy(mut policy: FleetPolicy, shards: u32) -> FleetPolicy {
    let s = shards.max(1);
    policy.limits.max_runners = policy.limits.max_runners.div_ceil(s);
    policy.limits.max_queued = policy.limits.max_queued.div_ceil(s);
    policy
}

/// The id of shard `shard`'s event `local` in the merged feed: `<ms>-<seq × shards + shard>`,
/// unique across shards and ordered by time, then by sequence, then by shard.
fn global_id(local: &EventId, shard: usize, shards: u32) -> EventId {
    EventId {
        ms: local.ms,
        seq: local
            .seq
            .saturating_mul(u64::from(shards))
            .saturating_add(shard as u64),
    }
}

/// Shard `shard`'s own position that merged position `after` stands for: its events up to it
/// have been handed out.
fn local_id(after: &EventId, shard: usize, shards: u32) -> EventId {
    let b = shard as u64;
    if after.seq >= b {
        EventId {
            ms: after.ms,
            seq: (after.seq - b) / u64::from(shards),
        }
    } else if after.ms > 0 {
        // None of this shard's events of that millisecond.
        EventId {
            ms: after.ms - 1,
            seq: u64::MAX,
        }
    } else {
        EventId::ZERO
    }
}

fn globalize(mut e: RunnerEvent, shard: usize, shards: u32) -> RunnerEvent {
    if let Ok(local) = e.id.parse::<EventId>() {
        e.id = global_id(&local, shard, shards).to_string();
    }
    e
}

impl ShardedStore {
    /// A store over `shards` (shard `n`'s store under [`Keys::shard`] `n`, built with
    /// [`shard_policy`] and announcing on the fleet's wake-up channel), waiting on `wake`.
    pub fn new(shards: Vec<RedisStore>, wake: LazyWake) -> Self {
        let count = shards.len() as u32;
        Self {
            inner: Arc::new(Inner {
                shards,
                count,
                wake,
                nodes: Mutex::default(),
                listeners: Listeners::default(),
                next_claim: AtomicUsize::new(0),
            }),
        }
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[RedisStore] {
        &self.inner.shards
    }

    fn shard_index(&self, id: &str) -> usize {
        shard_of(id, self.inner.count)
    }

    fn of(&self, id: &str) -> &RedisStore {
        &self.inner.shards[self.shard_index(id)]
    }

    /// Shard 0: the fleet-wide singletons (load history, admin trail, clock).
    fn control(&self) -> &RedisStore {
        &self.inner.shards[0]
    }

    /// `f` on every shard at once, in shard order.
    async fn each<'a, T, Fut>(
        &'a self,
        f: impl Fn(usize, &'a RedisStore) -> Fut,
    ) -> Result<Vec<T>, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        try_join_all(self.inner.shards.iter().enumerate().map(|(i, s)| f(i, s))).await
    }

    /// The indices of `ids` grouped by shard, in their order within each shard.
    fn by_shard<'b>(&self, ids: impl IntoIterator<Item = &'b str>) -> HashMap<usize, Vec<usize>> {
        group_by_shard(ids, self.inner.count)
    }

    fn node_shards(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, HashMap<usize, Instant>>> {
        self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `node`'s lease in `shard` runs until at least `until` (a claim or a renewal
    /// there, sent a lease before, was accepted).
    fn leased(&self, node: &NodeId, shard: usize, until: Instant) {
        let mut nodes = self.node_shards();
        let end = nodes
            .entry(node.clone())
            .or_default()
            .entry(shard)
            .or_insert(until);
        *end = (*end).max(until);
    }

    /// Whether `node`'s lease may have lapsed in a shard: then it may claim nowhere (in that
    /// shard a sweep may be restarting its runners elsewhere, and the node will learn so at its
    /// next heartbeat there and fence itself whole). Checked here because a shard the node has
    /// no lease in yet would let it start one.
    fn lapsed(&self, node: &NodeId) -> bool {
        let now = Instant::now();
        self.node_shards()
            .get(node)
            .is_some_and(|ends| ends.values().any(|&end| end <= now))
    }

    /// The shards `node` keeps a lease in: those it claimed in, and its home shard.
    fn lease_shards(&self, node: &NodeId) -> BTreeSet<usize> {
        let mut shards = self.lease_shards_claimed(node);
        shards.insert(self.shard_index(node.as_str()));
        shards
    }

    /// The first command waiting for `node` in any of its shards.
    async fn scan_commands(
        &self,
        listener: &mut Listener,
        node: &NodeId,
    ) -> Result<Option<NodeCommand>, StoreError> {
        listener.looked = Some(Instant::now());
        for b in self.lease_shards(node) {
            if let Some(c) = self.inner.shards[b].try_next_command(node).await? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// [`CommandBus::next_command`] with `node`'s kept receiver.
    async fn command_with(
        &self,
        listener: &mut Listener,
        node: &NodeId,
        wait: Duration,
    ) -> Result<Option<NodeCommand>, StoreError> {
        let mine = |w: &WakeUp| matches!(w, WakeUp::Command(_, n) if n == node);
        let found = match listener.pending(mine) {
            Some(WakeUp::Command(shard, _)) => {
                self.inner.shards[shard].try_next_command(node).await?
            }
            Some(_) => self.scan_commands(listener, node).await?,
            None if listener.due(SAFETY_SCAN) => self.scan_commands(listener, node).await?,
            None => None,
        };
        if found.is_some() {
            return Ok(found);
        }
        match wait_for(&mut listener.rx, wait, mine).await {
            Some(WakeUp::Command(shard, _)) => {
                self.inner.shards[shard].try_next_command(node).await
            }
            Some(_) => self.scan_commands(listener, node).await,
            None => Ok(None),
        }
    }
}

impl JobStore for ShardedStore {
    fn placement(&self, user: &UserId) -> Placement {
        Placement::of_user(user.as_str(), self.inner.count)
    }

    async fn admit(&self, spec: &JobSpec) -> Result<Admission, StoreError> {
        if let Some(refused) = misplaced(self, spec) {
            return Ok(refused);
        }
        self.of(spec.user_id.as_str()).admit(spec).await
    }

    async fn admit_many(&self, specs: &[JobSpec]) -> Result<Vec<Admission>, StoreError> {
        let mut out: Vec<Option<Admission>> = specs.iter().map(|s| misplaced(self, s)).collect();
        let groups = self.by_shard(
            specs
                .iter()
                .zip(&out)
                .filter(|(_, refused)| refused.is_none())
                .map(|(s, _)| s.user_id.as_str()),
        );
        // The indices above count only the placed specs: map them back.
        let placed: Vec<usize> = (0..specs.len()).filter(|&i| out[i].is_none()).collect();
        let answers = try_join_all(groups.into_iter().map(|(shard, members)| {
            let batch: Vec<JobSpec> = members.iter().map(|&i| specs[placed[i]].clone()).collect();
            let store = &self.inner.shards[shard];
            async move {
                let answers = store.admit_many(&batch).await?;
                Ok::<_, StoreError>((members, answers))
            }
        }))
        .await?;
        for (members, answers) in answers {
            for (i, a) in members.into_iter().zip(answers) {
                out[placed[i]] = Some(a);
            }
        }
        out.into_iter()
            .map(|a| a.ok_or_else(|| StoreError::data("an admission went unanswered")))
            .collect()
    }

    fn queues_inline(&self) -> bool {
        self.control().queues_inline()
    }

    async fn confirm_enqueued(&self, jobs: &[JobId]) -> Result<(), StoreError> {
        let groups = self.by_shard(jobs.iter().map(JobId::as_str));
        try_join_all(groups.into_iter().map(|(shard, members)| {
            let ids: Vec<JobId> = members.into_iter().map(|i| jobs[i].clone()).collect();
            let store = &self.inner.shards[shard];
            async move { store.confirm_enqueued(&ids).await }
        }))
        .await?;
        Ok(())
    }

    async fn fleet_gauges(&self) -> Result<FleetGauges, StoreError> {
        let (shards, nodes) = tokio::try_join!(self.each(|_, s| s.fleet_gauges()), self.nodes())?;
        let mut g = FleetGauges {
            ready: Some(0),
            processing: Some(0),
            ..FleetGauges::default()
        };
        for s in &shards {
            g.counts.queued += s.counts.queued;
            g.counts.running += s.counts.running;
            g.counts.active += s.counts.active;
            g.counts.restarting += s.counts.restarting;
            g.failed_last_hour += s.failed_last_hour;
            g.breaker_openings += s.breaker_openings;
            g.ready = g.ready.zip(s.ready).map(|(a, b)| a + b);
            g.processing = g.processing.zip(s.processing).map(|(a, b)| a + b);
        }
        // Each shard counts the nodes that renew in it: the fleet's are the merged list.
        g.nodes_alive = nodes.len() as u64;
        g.node_capacity = nodes.iter().map(|n| u64::from(n.capacity)).sum();
        g.node_runners = nodes.iter().map(|n| u64::from(n.runners)).sum();
        Ok(g)
    }

    async fn sample_history(&self, every: Duration, keep: u32) -> Result<bool, StoreError> {
        let control = self.control();
        let keys = control.keys();
        let mut conn = control.conn().await?;
        let taken: Option<String> = ::redis::cmd("SET")
            .arg(keys.history_guard())
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(every.as_millis().max(1) as u64)
            .query_async(&mut *conn)
            .await?;
        if taken.is_none() {
            return Ok(false);
        }
        let (gauges, at) = tokio::try_join!(self.fleet_gauges(), control.now_ms())?;
        let entry = super::redis::sample_entry(&FleetSample::of(at, &gauges));
        // Both on the one key: one slot, one round trip.
        let () = ::redis::pipe()
            .cmd("LPUSH")
            .arg(keys.history())
            .arg(entry)
            .ignore()
            .cmd("LTRIM")
            .arg(keys.history())
            .arg(0)
            .arg(i64::from(keep.max(1)) - 1)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        Ok(true)
    }

    async fn history(&self) -> Result<Vec<FleetSample>, StoreError> {
        self.control().history().await
    }

    async fn active_jobs(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut all: Vec<JobRecord> = self
            .each(|_, s| s.active_jobs(limit))
            .await?
            .into_iter()
            .flatten()
            .collect();
        // Job ids are `job-<UUIDv7>`: sorted as text, sorted by creation (newest first).
        all.sort_by(|a, b| b.job_id.cmp(&a.job_id));
        all.truncate(limit);
        Ok(all)
    }

    async fn job(&self, job: &JobId) -> Result<Option<JobRecord>, StoreError> {
        self.of(job.as_str()).job(job).await
    }

    async fn spec(&self, job: &JobId) -> Result<Option<JobSpec>, StoreError> {
        self.of(job.as_str()).spec(job).await
    }

    async fn job_events(&self, job: &JobId) -> Result<Vec<RunnerEvent>, StoreError> {
        let shard = self.shard_index(job.as_str());
        let events = self.inner.shards[shard].job_events(job).await?;
        Ok(events
            .into_iter()
            .map(|e| globalize(e, shard, self.inner.count))
            .collect())
    }

    /// The shards' streams merged: every shard is read after its own position that `after`
    /// stands for, together with its clock; only events older than the least of those clocks
    /// are handed out (every later event of any shard will have a newer id), in merged-id
    /// order. A read that may wait looks again every [`EVENT_POLL`].
    async fn events_after(
        &self,
        after: &EventId,
        count: usize,
        wait: Option<Duration>,
    ) -> Result<Vec<RunnerEvent>, StoreError> {
        let count = count.max(1);
        let n = self.inner.count;
        let started = tokio::time::Instant::now();
        let deadline = started + wait.unwrap_or_default();
        // The newest millisecond among the events the first read found but held back: the
        // read waits (briefly) for the horizon to pass it, so that what was appended before
        // the call is in its answer (a client reads its own writes).
        let mut wanted: Option<u64> = None;
        loop {
            let reads = self
                .each(
                    |b, s| async move { s.events_with_clock(&local_id(after, b, n), count).await },
                )
                .await?;
            let horizon = reads.iter().map(|(clock, _)| *clock).min().unwrap_or(0);
            let mut held_back = None;
            let mut merged: Vec<(EventId, RunnerEvent)> = Vec::new();
            for (b, (_, events)) in reads.into_iter().enumerate() {
                for e in events {
                    let Ok(local) = e.id.parse::<EventId>() else {
                        continue;
                    };
                    if local.ms < horizon {
                        merged.push((global_id(&local, b, n), globalize(e, b, n)));
                    } else {
                        held_back = held_back.max(Some(local.ms));
                    }
                }
            }
            merged.sort_by_key(|(id, _)| *id);
            merged.truncate(count);
            let now = tokio::time::Instant::now();
            let wanted = *wanted.get_or_insert(held_back.unwrap_or(0));
            if merged.len() < count && horizon <= wanted && now < started + SETTLE {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            if !merged.is_empty() || now >= deadline {
                return Ok(merged.into_iter().map(|(_, e)| e).collect());
            }
            tokio::time::sleep_until(deadline.min(now + EVENT_POLL)).await;
        }
    }

    async fn last_event_id(&self) -> Result<EventId, StoreError> {
        let n = self.inner.count;
        let ids = self.each(|_, s| s.last_event_id()).await?;
        Ok(ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id != EventId::ZERO)
            .map(|(b, id)| global_id(id, b, n))
            .max()
            .unwrap_or(EventId::ZERO))
    }

    async fn events_lost_after(&self, after: &EventId) -> Result<bool, StoreError> {
        let n = self.inner.count;
        let lost = self
            .each(|b, s| async move { s.events_lost_after(&local_id(after, b, n)).await })
            .await?;
        Ok(lost.into_iter().any(|l| l))
    }

    async fn pnl_history(&self, job: &JobId) -> Result<Vec<PnlPoint>, StoreError> {
        self.of(job.as_str()).pnl_history(job).await
    }

    async fn user_jobs(&self, user: &UserId) -> Result<Vec<JobRecord>, StoreError> {
        self.of(user.as_str()).user_jobs(user).await
    }
}

/// The refusal of a spec whose job id is not in its user's shard (made elsewhere than by
/// [`JobStore::placement`]): it could never be found by its id.
fn misplaced(store: &ShardedStore, spec: &JobSpec) -> Option<Admission> {
    let placement = store.placement(&spec.user_id);
    (!placement.fits(spec.id.as_str())).then(|| Admission::Invalid {
        reason: format!(
            "jobId: {} is not in the shard of user {} (a sharded fleet makes job ids itself)",
            spec.id, spec.user_id
        ),
    })
}

impl LeaseStore for ShardedStore {
    async fn claim(
        &self,
        node: &NodeId,
        jobs: &[JobId],
        lease: Duration,
    ) -> Result<Vec<ClaimOutcome>, StoreError> {
        if self.lapsed(node) {
            return Err(StoreError::Fenced);
        }
        let until = Instant::now() + lease;
        let groups = self.by_shard(jobs.iter().map(JobId::as_str));
        let answers = futures::future::join_all(groups.into_iter().map(|(shard, members)| {
            let ids: Vec<JobId> = members.iter().map(|&i| jobs[i].clone()).collect();
            let store = &self.inner.shards[shard];
            async move {
                let outcomes = store.claim(node, &ids, lease).await;
                (shard, members, outcomes)
            }
        }))
        .await;
        let mut out: Vec<Option<ClaimOutcome>> = vec![None; jobs.len()];
        let mut failure = None;
        for (shard, members, outcomes) in answers {
            match outcomes {
                Ok(outcomes) => {
                    self.leased(node, shard, until);
                    for (i, o) in members.into_iter().zip(outcomes) {
                        out[i] = Some(o);
                    }
                }
                // Fenced anywhere is fenced: the node gives up this id whole.
                Err(StoreError::Fenced) => failure = Some(StoreError::Fenced),
                Err(e) => {
                    if failure.is_none() {
                        failure = Some(e);
                    }
                }
            }
        }
        if let Some(e) = failure {
            // Some shards recorded their claims, another failed: the caller gives every
            // delivery back, so the recorded ones are handed back too (else their records would
            // say they run on this node, whose lease there goes on, and nothing would run them).
            let claimed = out.iter().flatten().filter_map(|o| match o {
                ClaimOutcome::Claimed(l) => Some((l.spec.id.clone(), l.epoch)),
                ClaimOutcome::Unrunnable { job_id, epoch, .. } => Some((job_id.clone(), *epoch)),
                ClaimOutcome::Dropped { .. } => None,
            });
            for (job, epoch) in claimed {
                if let Err(err) = self.hand_back(node, &job, epoch, None).await {
                    tracing::warn!(node = %node, job = %job, error = %err, "a claim recorded in one shard while another failed could not be handed back; its record stays claimed by this node");
                }
            }
            return Err(e);
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| StoreError::data("a claim went unanswered")))
            .collect()
    }

    /// Claims from the shards' ready lists one after the other, starting at a shard that
    /// rotates from call to call, until `max` are claimed or every shard was looked at.
    async fn claim_queued(
        &self,
        node: &NodeId,
        max: usize,
        lease: Duration,
    ) -> Result<Option<QueuedClaims>, StoreError> {
        if !self.queues_inline() {
            return Ok(None);
        }
        if self.lapsed(node) {
            return Err(StoreError::Fenced);
        }
        let n = self.inner.shards.len();
        let start = self.inner.next_claim.fetch_add(1, Ordering::Relaxed);
        let mut taken = QueuedClaims {
            outcomes: Vec::new(),
            capped: false,
        };
        for k in 0..n {
            let want = max.saturating_sub(taken.outcomes.len());
            if want == 0 {
                break;
            }
            let shard = (start + k) % n;
            let until = Instant::now() + lease;
            let claims = match self.inner.shards[shard]
                .claim_queued(node, want, lease)
                .await
            {
                Ok(Some(claims)) => claims,
                Ok(None) => return Ok(None),
                // What was claimed stays claimed and is returned; the error comes next time.
                Err(e) if taken.outcomes.is_empty() || matches!(e, StoreError::Fenced) => {
                    return Err(e);
                }
                Err(_) => break,
            };
            if !claims.outcomes.is_empty() {
                self.leased(node, shard, until);
            }
            taken.capped |= claims.capped;
            taken.outcomes.extend(claims.outcomes);
        }
        Ok(Some(taken))
    }

    /// One renewal per shard the node keeps a lease in, all sent at once; the node's info is
    /// registered in each (its home shard keeps it listed while it holds nothing).
    async fn renew(
        &self,
        node: &NodeInfo,
        beats: &[RunnerBeat],
        lease: Duration,
    ) -> Result<Vec<JobId>, StoreError> {
        let home = self.shard_index(node.node_id.as_str());
        let leased = self.lease_shards_claimed(&node.node_id);
        let mut shards = leased.clone();
        shards.insert(home);
        let mut groups: HashMap<usize, Vec<&RunnerBeat>> = HashMap::new();
        for b in beats {
            let shard = self.shard_index(b.job_id.as_str());
            shards.insert(shard);
            groups.entry(shard).or_default().push(b);
        }
        let until = Instant::now() + lease;
        let renewed: Vec<usize> = shards.iter().copied().collect();
        let answers = try_join_all(shards.into_iter().map(|shard| {
            let beats = groups.remove(&shard).unwrap_or_default();
            // A shard the node never claimed in (its home) starts a lease there for a node
            // that holds nothing there; the others require the lease it has had since its
            // first claim there.
            let info = if shard == home && !leased.contains(&shard) {
                NodeInfo {
                    runners: 0,
                    ..node.clone()
                }
            } else {
                node.clone()
            };
            let store = &self.inner.shards[shard];
            async move { store.renew_beats(&info, &beats, lease).await }
        }))
        .await?;
        for shard in renewed {
            // The home shard counts once the node holds a lease there for runners.
            if shard != home || leased.contains(&shard) {
                self.leased(&node.node_id, shard, until);
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    async fn finish(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        end: RunEnd,
    ) -> Result<bool, StoreError> {
        self.of(job.as_str()).finish(node, job, epoch, end).await
    }

    async fn hand_back(
        &self,
        node: &NodeId,
        job: &JobId,
        epoch: u64,
        account: Option<crate::kind::SavedState>,
    ) -> Result<bool, StoreError> {
        self.of(job.as_str())
            .hand_back(node, job, epoch, account)
            .await
    }

    /// Every shard's live nodes, merged by id: a node renews in several shards, each of which
    /// lists it; its newest heartbeat and the most runners it reported win.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut merged: HashMap<NodeId, NodeInfo> = HashMap::new();
        for n in self.each(|_, s| s.nodes()).await?.into_iter().flatten() {
            match merged.get_mut(&n.node_id) {
                Some(m) => {
                    m.runners = m.runners.max(n.runners);
                    m.last_heartbeat_at = m.last_heartbeat_at.max(n.last_heartbeat_at);
                }
                None => {
                    merged.insert(n.node_id.clone(), n);
                }
            }
        }
        let mut nodes: Vec<NodeInfo> = merged.into_values().collect();
        nodes.sort_by(|a, b| {
            b.last_heartbeat_at
                .cmp(&a.last_heartbeat_at)
                .then_with(|| a.node_id.cmp(&b.node_id))
        });
        Ok(nodes)
    }
}

impl ShardedStore {
    /// The shards `node` has claimed in (without its home shard).
    fn lease_shards_claimed(&self, node: &NodeId) -> BTreeSet<usize> {
        self.node_shards()
            .get(node)
            .map(|ends| ends.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// A node's commands wait in the shards of its runners: it looks at every shard it keeps a
/// lease in when it starts, then waits for wake-ups naming it (the stop script announces each
/// command), looking at every one of them again after a resubscription and at least every
/// [`SAFETY_SCAN`].
impl CommandBus for ShardedStore {
    async fn request_stop(&self, job: &JobId, mode: StopMode) -> Result<StopRequest, StoreError> {
        self.of(job.as_str()).request_stop(job, mode).await
    }

    async fn next_command(
        &self,
        node: &NodeId,
        wait: Duration,
    ) -> Result<Option<NodeCommand>, StoreError> {
        let mut listener = self.inner.listeners.take(self.inner.wake.get(), node);
        let found = self.command_with(&mut listener, node, wait).await;
        self.inner.listeners.put(node, listener);
        found
    }
}

impl Sweeper for ShardedStore {
    async fn sweep(
        &self,
        interval: Duration,
        batch: u32,
    ) -> Result<Option<SweepReport>, StoreError> {
        let reports = self.each(|_, s| s.sweep(interval, batch)).await?;
        Ok(reports.into_iter().flatten().reduce(|a, b| SweepReport {
            crashed: a.crashed + b.crashed,
            restarting: a.restarting + b.restarting,
            failed: a.failed + b.failed,
        }))
    }

    async fn due_restarts(&self, batch: u32) -> Result<Vec<JobId>, StoreError> {
        Ok(self
            .each(|_, s| s.due_restarts(batch))
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn unconfirmed(
        &self,
        older_than: Duration,
        batch: u32,
    ) -> Result<Vec<JobId>, StoreError> {
        Ok(self
            .each(|_, s| s.unconfirmed(older_than, batch))
            .await?
            .into_iter()
            .flatten()
            .collect())
    }
}

impl ApiKeys for ShardedStore {
    async fn add_key(
        &self,
        user: &UserId,
        key_id: &str,
        hash: &str,
    ) -> Result<ApiKeyInfo, StoreError> {
        if !self.placement(user).fits(key_id) {
            return Err(StoreError::data(format!(
                "api key id {key_id} is not in the shard of user {user}"
            )));
        }
        self.of(user.as_str()).add_key(user, key_id, hash).await
    }

    async fn key(&self, key_id: &str) -> Result<Option<(UserId, String)>, StoreError> {
        self.of(key_id).key(key_id).await
    }

    async fn keys(&self, user: &UserId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        ApiKeys::keys(self.of(user.as_str()), user).await
    }

    async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<bool, StoreError> {
        self.of(user.as_str()).revoke_key(user, key_id).await
    }
}

impl AdminAudit for ShardedStore {
    async fn record_admin(&self, action: &AdminAction) -> Result<AdminEntry, StoreError> {
        self.control().record_admin(action).await
    }

    async fn admin_trail(&self, count: usize) -> Result<Vec<AdminEntry>, StoreError> {
        self.control().admin_trail(count).await
    }
}

impl Subscriptions for ShardedStore {
    async fn now_ms(&self) -> Result<u64, StoreError> {
        self.control().now_ms().await
    }

    async fn subscription(&self, user: &UserId) -> Result<Option<Subscription>, StoreError> {
        self.of(user.as_str()).subscription(user).await
    }

    async fn subscribe(
        &self,
        user: &UserId,
        tier: Tier,
        days: u32,
    ) -> Result<Subscription, StoreError> {
        self.of(user.as_str()).subscribe(user, tier, days).await
    }

    async fn active_count(&self, user: &UserId) -> Result<u32, StoreError> {
        self.of(user.as_str()).active_count(user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_event_ids_map_back_to_each_shards_position() {
        let n = 4;
        // Shard 2's event 1000-3 is merged 1000-14.
        let g = global_id(&EventId { ms: 1000, seq: 3 }, 2, n);
        assert_eq!(g, EventId { ms: 1000, seq: 14 });
        // After it: shard 2 resumes after 1000-3; shard 1 after 1000-3 (1000-13 came before);
        // shard 3 after 1000-2 (its 1000-3 is 1000-15, not handed out yet).
        assert_eq!(local_id(&g, 2, n), EventId { ms: 1000, seq: 3 });
        assert_eq!(local_id(&g, 1, n), EventId { ms: 1000, seq: 3 });
        assert_eq!(local_id(&g, 3, n), EventId { ms: 1000, seq: 2 });
        // After 1000-1: shards 2 and 3 have handed out nothing of millisecond 1000.
        let early = EventId { ms: 1000, seq: 1 };
        assert_eq!(local_id(&early, 1, n), EventId { ms: 1000, seq: 0 });
        assert_eq!(
            local_id(&early, 3, n),
            EventId {
                ms: 999,
                seq: u64::MAX
            }
        );
        assert_eq!(local_id(&EventId::ZERO, 3, n), EventId::ZERO);
        // Every merged id maps back to the same shard position it came from.
        for b in 0..4 {
            for seq in 0..5 {
                let local = EventId { ms: 7, seq };
                assert_eq!(local_id(&global_id(&local, b, n), b, n), local);
            }
        }
    }

    #[test]
    fn fleet_limits_are_divided_among_the_shards() {
        let mut p = FleetPolicy::default();
        p.limits.max_runners = 10_000;
        p.limits.max_queued = 10;
        let s = shard_policy(p, 16);
        assert_eq!(s.limits.max_runners, 625);
        assert_eq!(s.limits.max_queued, 1, "rounded up");
    }
}
