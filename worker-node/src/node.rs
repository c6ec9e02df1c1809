//! The worker-node runtime: claims jobs up to its capacity and runs each as a supervised
//! runner; renews every runner's lease in one round trip per heartbeat interval; obeys stop
//! commands; hands its jobs back when it shuts down.
//!
//! Its background services are lifecycle runners: the claim loop and the command listener (one
//! group, the node's intake) and the heartbeat ticker; each job runs as a [`ServiceRunner`] of
//! its own, so a panicking strategy is caught and recorded and the node goes on. Store and
//! queue failures never end a service: it logs, backs off and tries again, so a Redis outage is
//! survived.
//!
//! A job runs through its runner kind ([`Kinds::run`]): the node gives it the spec, the saved
//! state, a stop signal and a report sink, and knows nothing of what it does.
//!
//! Fencing runs on deadlines ([`runfleet_shared::lease`]): each runner stops trading when the lease its
//! last accepted claim or renewal granted may have lapsed, counted from when that call was
//! sent; and a lease watchdog fences every runner and takes a new node id when no heartbeat was
//! accepted for a lease (less a safety margin). Neither waits for a heartbeat to fail, so a
//! renewal hanging on a silently dropped link cannot keep a runner trading.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runfleet_shared::backoff::Backoff;
use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::dispatch::Dispatcher;
use runfleet_shared::ids::{JobId, NodeId};
use runfleet_shared::job::{JobStatus, Lease};
use runfleet_shared::lifecycle::{
    ErrorKind, EventBus, LifecycleError, Runner, RunnerGroup, RunnerOptions, ServiceRunner, Ticker,
};
use runfleet_shared::observability;
use runfleet_shared::queue::{Delivery, JobQueue, SHARE_PAUSE};
use runfleet_shared::store::{
    ClaimOutcome, FleetStore, NodeCommand, NodeInfo, RunEnd, RunnerBeat, StoreError,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use runfleet_shared::kind::{
    Kinds, Report, ReportSink, RunOutcome, RunStart, StopCause, StopSignal,
};
use runfleet_shared::lease::{LeaseDeadline, fence_at};

use crate::beat::{Sent, beat_of};

/// Timing and size of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Runners held at most at once.
    pub capacity: usize,
    /// How long one claim blocks.
    pub claim_wait: Duration,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Lease length (silence after which a runner counts as crashed).
    pub lease: Duration,
    /// Longest a runner's saved state goes unsaved while its holdings do not change.
    pub checkpoint: Duration,
}

impl NodeConfig {
    /// The node settings of `settings`, with `capacity` runners.
    pub fn from_settings(settings: &Settings, capacity: usize) -> Self {
        Self {
            capacity,
            claim_wait: Duration::from_millis(settings.node.claim_wait_ms),
            heartbeat_interval: settings.heartbeat_interval(),
            lease: settings.lease(),
            checkpoint: Duration::from_millis(settings.heartbeat.checkpoint_ms),
        }
    }
}

/// A job running on this node.
#[derive(Debug)]
struct JobRunner {
    epoch: u64,
    /// When this runner stops trading unless a renewal is accepted first.
    deadline: LeaseDeadline,
    report: ReportSink,
    /// What the store last accepted of the report.
    sent: Mutex<Sent>,
    stop: watch::Sender<Option<StopCause>>,
}

struct Inner<S, Q> {
    /// This incarnation's id; replaced when the node fences itself (its leases lapsed).
    id: std::sync::RwLock<NodeId>,
    store: S,
    queue: Q,
    cipher: CredentialCipher,
    config: NodeConfig,
    started_at: u64,
    /// When the node fences itself: [`fence_at`] the send of its last accepted heartbeat.
    /// Unarmed before the first one and after a fence, until the new id's first.
    deadline: LeaseDeadline,
    runners: Mutex<HashMap<JobId, JobRunner>>,
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Whether the node's services run (claiming, listening, heartbeating): `/healthz`.
    serving: AtomicBool,
    /// The runner kinds jobs run with.
    kinds: Kinds,
    /// The lifecycle events of every runner: one bus for the node, since a bus of each
    /// runner's own (a broadcast channel of 256 slots) was the largest part of an idle
    /// runner's memory, and nothing subscribes to one runner alone.
    runner_events: EventBus,
}

/// A worker node. Cheap to clone; clones share the node.
pub struct WorkerNode<S, Q> {
    inner: Arc<Inner<S, Q>>,
}

impl<S, Q> Clone for WorkerNode<S, Q> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, Q> std::fmt::Debug for WorkerNode<S, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerNode")
            .field(
                "id",
                &*self.inner.id.read().unwrap_or_else(|p| p.into_inner()),
            )
            .field("capacity", &self.inner.config.capacity)
            .field(
                "runners",
                &self.inner.runners.lock().map(|r| r.len()).unwrap_or(0),
            )
            .finish()
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Retry delays for store and queue calls: 100 ms doubling to 5 s, each plus a random jitter
/// of up to itself, so nodes that failed together do not retry together.
fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
}

impl<S: FleetStore, Q: JobQueue + Clone> WorkerNode<S, Q> {
    /// A node with a fresh id, running jobs with `kinds`. `cipher` opens the credentials the
    /// orchestrators sealed.
    pub fn new(
        store: S,
        queue: Q,
        cipher: CredentialCipher,
        config: NodeConfig,
        kinds: Kinds,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.capacity));
        Self {
            inner: Arc::new(Inner {
                id: std::sync::RwLock::new(NodeId::generate()),
                store,
                queue,
                cipher,
                config,
                started_at: wall_ms(),
                deadline: LeaseDeadline::unarmed(),
                runners: Mutex::new(HashMap::new()),
                slots,
                serving: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                kinds,
                runner_events: EventBus::default(),
            }),
        }
    }

    /// This incarnation's id.
    pub fn id(&self) -> NodeId {
        self.inner
            .id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the node's services run: from a successful start until shutdown begins.
    pub fn is_serving(&self) -> bool {
        self.inner.serving.load(Ordering::Acquire)
    }

    /// Runners running now.
    pub fn runner_count(&self) -> usize {
        self.runners().len()
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, JobRunner>> {
        self.inner.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node as a lifecycle service named `name`: it runs until the service is stopped.
    pub fn service(&self, name: &str) -> ServiceRunner {
        let node = self.clone();
        ServiceRunner::new(RunnerOptions::new(name.to_owned()), move |token| {
            let node = node.clone();
            async move { node.run(token).await }
        })
    }

    /// Runs the node until `shutdown` is cancelled, then stops claiming, hands every job back
    /// to the queue (positions held) and returns once every runner has ended.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), LifecycleError> {
        let config = &self.inner.config;
        info!(node = %self.id(), capacity = config.capacity, "worker node started");
        let mut intake = RunnerGroup::new();
        let node = self.clone();
        intake.register(Arc::new(ServiceRunner::new(
            RunnerOptions::new("claim-loop"),
            move |token| {
                let node = node.clone();
                async move {
                    node.claim_loop(token).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        )))?;
        let node = self.clone();
        intake.register(Arc::new(ServiceRunner::new(
            RunnerOptions::new("command-listener"),
            move |token| {
                let node = node.clone();
                async move {
                    node.command_loop(token).await;
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        )))?;
        let node = self.clone();
        let heartbeat = Ticker::new(
            RunnerOptions::new("heartbeat"),
            config.heartbeat_interval,
            move |_| {
                let node = node.clone();
                async move { node.heartbeat().await }
            },
        )?
        .skip_overlapping(true);
        let node = self.clone();
        let watchdog = ServiceRunner::new(RunnerOptions::new("lease-watchdog"), move |token| {
            let node = node.clone();
            async move {
                node.lease_watchdog(token).await;
                Ok::<(), std::convert::Infallible>(())
            }
        });
        watchdog.start().await?;
        heartbeat.start().await?;
        if let Err(e) = intake.start_all().await {
            let _ = heartbeat.stop(config.heartbeat_interval).await;
            let _ = watchdog.stop(Duration::from_secs(1)).await;
            return Err(e);
        }

        self.inner.serving.store(true, Ordering::Release);
        shutdown.cancelled().await;
        self.inner.serving.store(false, Ordering::Release);
        // A claim in flight is never abandoned; it blocks at most `claim_wait`.
        let report = intake
            .stop_all(config.claim_wait + Duration::from_secs(2))
            .await;
        for failure in report.failures() {
            warn!(node = %self.id(), runner = failure.name, outcome = ?failure.result, "service did not stop cleanly");
        }
        info!(node = %self.id(), runners = self.runner_count(), "shutting down: handing jobs back");
        for runner in self.runners().values() {
            runner.stop.send_replace(Some(StopCause::Shutdown));
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        // Heartbeats went on until the last runner was handed back.
        heartbeat
            .stop(config.heartbeat_interval + Duration::from_secs(2))
            .await?;
        watchdog.stop(Duration::from_secs(1)).await?;
        info!(node = %self.id(), "worker node stopped");
        Ok(())
    }

    async fn claim_loop(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut backoff = backoff();
        // When the last claim from the store's own queue was capped by the node's fair share.
        let mut capped_at: Option<Instant> = None;
        // The node id whose claim found the store's own queue empty, and whose wait on it since
        // brought nothing: its next claim only waits (one blocking call per wait while idle).
        let mut idle: Option<NodeId> = None;
        while !shutdown.is_cancelled() {
            let first = tokio::select! {
                permit = inner.slots.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            while let Ok(p) = inner.slots.clone().try_acquire_owned() {
                permits.push(p);
            }
            // One id for the whole claim: the node may fence itself and take a new one while
            // the claim is in flight.
            let id = self.id();
            // First from the queue the store fills itself (the Redis lists): taken and claimed
            // in one atomic script, one round trip, nothing to acknowledge. Only when it has
            // nothing does the node block on the queue below.
            if let Some(at) = capped_at.take() {
                // Capped by the fair share: the other nodes take theirs first.
                tokio::time::sleep_until(at + SHARE_PAUSE).await;
            }
            let round = match idle.take() {
                Some(was) if was == id => Ok(QueuedRound::Empty),
                _ => self.claim_queued(&id, &mut permits, &mut capped_at).await,
            };
            let empty = match round {
                Ok(QueuedRound::Claimed((leases, unrunnable, deadline))) => {
                    backoff.reset();
                    self.start_claimed(&id, leases, unrunnable, deadline, permits)
                        .await;
                    continue;
                }
                Ok(QueuedRound::Empty) => true,
                Ok(QueuedRound::NoQueue) => false,
                Err(StoreError::Fenced) => {
                    // The node's lease lapsed: nothing of it may run on under this id.
                    self.fence(Some(&id));
                    continue;
                }
                Err(e) => {
                    warn!(node = %id, error = %e, "claim failed; retrying");
                    drop(permits);
                    backoff.wait().await;
                    continue;
                }
            };
            // A claim is never abandoned half-way: dropping it mid-flight could strand a job in
            // this node's processing list. It blocks at most `claim_wait` (plus the response
            // timeout on a dead link). When the store's claim just found its queue (the same
            // list) empty, the node only waits for the next job.
            let wait = inner.config.claim_wait;
            let claimed = if empty {
                inner.queue.claim_next(&id, wait).await
            } else {
                inner.queue.claim(&id, permits.len(), wait).await
            };
            let deliveries = match claimed {
                Ok(d) => d,
                Err(e) => {
                    warn!(node = %id, error = %e, "claim failed; retrying");
                    drop(permits);
                    backoff.wait().await;
                    continue;
                }
            };
            if deliveries.is_empty() {
                if empty {
                    idle = Some(id);
                }
                continue;
            }
            metrics::histogram!(observability::NODE_CLAIM_BATCH_JOBS)
                .record(deliveries.len() as f64);
            match self.record_claims(&id, &deliveries, &shutdown).await {
                Ok((leases, unrunnable, deadline)) => {
                    backoff.reset();
                    self.start_claimed(&id, leases, unrunnable, deadline, permits)
                        .await;
                }
                Err(e) => {
                    warn!(node = %id, error = %e, "recording claims failed; giving them back");
                    if let Err(e) = inner.queue.release(&id, &deliveries).await {
                        warn!(node = %id, error = %e, "release failed; the claims stay recoverable");
                    }
                    if matches!(e.downcast_ref(), Some(StoreError::Fenced)) {
                        // The node's lease lapsed: nothing of it may run on under this id.
                        self.fence(Some(&id));
                        continue;
                    }
                    backoff.wait().await;
                }
            }
        }
    }

    /// Takes and claims jobs from the queue the store fills itself, for up to `permits.len()`
    /// runners: bounded claims one after the other (each one script, one round trip, so that
    /// Redis serves everyone else between them), until the permits are used, the queue is
    /// empty, the node's fair share capped a claim, or [`CLAIM_ROUND_MAX`] were claimed; only
    /// then are the runners started, so that their start does not slow the claims of a burst.
    /// Unused permits are released.
    async fn claim_queued(
        &self,
        id: &NodeId,
        permits: &mut Vec<OwnedSemaphorePermit>,
        capped_at: &mut Option<Instant>,
    ) -> Result<QueuedRound, StoreError> {
        let inner = &self.inner;
        let (mut leases, mut unrunnable) = (Vec::new(), Vec::new());
        let mut deadline = None;
        let mut claimed = 0;
        while claimed < permits.len() && claimed < CLAIM_ROUND_MAX {
            if let Some(at) = capped_at.take() {
                // Capped by the fair share: the other nodes take theirs first.
                tokio::time::sleep_until(at + SHARE_PAUSE).await;
            }
            let sent_at = Instant::now();
            let want = permits.len() - claimed;
            let taken = match inner.store.claim_queued(id, want, inner.config.lease).await {
                Ok(Some(taken)) => taken,
                Ok(None) => return Ok(QueuedRound::NoQueue),
                // What was claimed before stays claimed and starts; the error comes next round.
                Err(_) if deadline.is_some() => break,
                Err(e) => return Err(e),
            };
            if taken.capped {
                *capped_at = Some(Instant::now());
            }
            let n = taken.outcomes.len();
            if n == 0 {
                break;
            }
            metrics::histogram!(observability::NODE_CLAIM_BATCH_JOBS).record(n as f64);
            // The first claim's: the earliest any of these leases may lapse.
            deadline.get_or_insert(fence_at(sent_at, inner.config.lease));
            let (l, u) = sort_claims(id, taken.outcomes);
            claimed += l.len();
            leases.extend(l);
            unrunnable.extend(u);
            if taken.capped {
                break;
            }
        }
        let Some(deadline) = deadline else {
            // Nothing taken: every permit goes on to the blocking claim.
            return Ok(QueuedRound::Empty);
        };
        permits.truncate(leases.len());
        Ok(QueuedRound::Claimed((leases, unrunnable, deadline)))
    }

    /// Starts the runners of `leases` (claimed by node `id`, surely ours until `deadline`), one
    /// permit each, and fails the jobs that can never run.
    async fn start_claimed(
        &self,
        id: &NodeId,
        leases: Vec<Lease>,
        unrunnable: Vec<(JobId, u64, String)>,
        deadline: Instant,
        mut permits: Vec<OwnedSemaphorePermit>,
    ) {
        // The runners first: failing a job is a store call each, and they wait for none.
        for lease in leases {
            let Some(permit) = permits.pop() else { break };
            self.spawn_runner(id.clone(), lease, deadline, permit);
        }
        for (job, epoch, reason) in unrunnable {
            warn!(node = %id, job = %job, reason, "claimed job cannot run; failing it");
            let end = failed_end(format!("the job cannot run: {reason}"));
            self.finish(id, &job, epoch, end).await;
        }
    }

    /// Records the claims in the store as node `id`, then acknowledges the deliveries. Returns
    /// the leases to run, the jobs leased to this node that can never run (their stored spec
    /// is unreadable), to be failed alone, and when the new leases stop being surely ours;
    /// dropped jobs are acknowledged and forgotten.
    async fn record_claims(
        &self,
        id: &NodeId,
        deliveries: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Vec<Lease>, Vec<(JobId, u64, String)>, Instant)> {
        let inner = &self.inner;
        let ids: Vec<JobId> = deliveries.iter().map(|d| d.job_id.clone()).collect();
        if shutdown.is_cancelled() {
            anyhow::bail!("shutting down");
        }
        if *id != self.id() {
            anyhow::bail!("the node fenced itself while claiming");
        }
        let sent_at = Instant::now();
        let outcomes = inner.store.claim(id, &ids, inner.config.lease).await?;
        if let Err(e) = inner.queue.ack(id, deliveries).await {
            // The claims are recorded; an unacknowledged delivery is dropped by the claim
            // script if it is ever delivered again.
            warn!(node = %id, error = %e, "ack failed after claims were recorded");
        }
        let (leases, unrunnable) = sort_claims(id, outcomes);
        Ok((leases, unrunnable, fence_at(sent_at, inner.config.lease)))
    }

    fn spawn_runner(
        &self,
        owner: NodeId,
        lease: Lease,
        deadline: Instant,
        permit: OwnedSemaphorePermit,
    ) {
        let node = self.clone();
        self.inner.tasks.spawn(async move {
            node.supervise(owner, lease, LeaseDeadline::at(deadline))
                .await;
            drop(permit);
        });
    }

    /// Runs one job to its end and records how it ended, as `owner` (the node id that claimed
    /// it). The strategy runs in a lifecycle runner of its own: a panic or error is caught there
    /// and reported at once as a crash, which the store's restart policy decides. The runner is
    /// fenced when `deadline` passes (heartbeats push it forward).
    ///
    /// Its future lives as long as the runner, one per running runner: the store calls that
    /// record the end ([`Self::finish`], [`Self::hand_back`]) box their own futures, so that
    /// they take memory only while they run.
    async fn supervise(&self, owner: NodeId, lease: Lease, deadline: LeaseDeadline) {
        let inner = &self.inner;
        let spec = Arc::new(lease.spec);
        let job = spec.id.clone();
        // Credentials are opened here, on the node, for the broker; the paper broker needs
        // none, so they are only checked.
        if inner.cipher.open(&job, &spec.credentials).is_err() {
            warn!(node = %self.id(), job = %job, "credentials could not be opened; failing the job");
            let end = failed_end(
                "credentials could not be opened on the worker node (credentials key mismatch?)"
                    .into(),
            );
            self.finish(&owner, &job, lease.epoch, end).await;
            return;
        }
        let report = ReportSink::new(inner.kinds.before_start(&spec));
        let last_report = report.clone();
        let (stop, stop_rx) = watch::channel(None);
        let outcome: Arc<Mutex<Option<Result<RunOutcome, String>>>> = Arc::default();
        let runner = {
            let (spec, report, outcome, kinds, resume, deadline) = (
                spec.clone(),
                report.clone(),
                outcome.clone(),
                inner.kinds.clone(),
                lease.account.clone(),
                deadline.clone(),
            );
            ServiceRunner::new(
                RunnerOptions::new(job.to_string())
                    .history_capacity(4)
                    .events(inner.runner_events.clone()),
                move |_token| {
                    let start = RunStart {
                        spec: spec.clone(),
                        resume: resume.clone(),
                        stop: StopSignal::new(stop_rx.clone(), deadline.clone()),
                        report: report.clone(),
                    };
                    let (run, outcome) = (kinds.run(start), outcome.clone());
                    async move {
                        let ended = run.await;
                        *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(ended);
                        Ok::<(), std::convert::Infallible>(())
                    }
                },
            )
        };
        {
            let mut runners = self.runners();
            if let Some(running) = runners.get_mut(&job) {
                // This node runs the job already: Redis lost the claim that started it (a
                // failover dropped a write the old master had acknowledged), queued it again,
                // and it came back here. The runner keeps running under the new claim (its
                // reports and its end carry the new epoch) instead of a second copy starting.
                warn!(node = %self.id(), job = %job, epoch = lease.epoch, previous = running.epoch, "claimed a runner this node already runs; it keeps running under the new claim");
                running.epoch = lease.epoch;
                if let Some(at) = deadline.get() {
                    running.deadline.extend_to(at);
                }
                return;
            }
            runners.insert(
                job.clone(),
                JobRunner {
                    epoch: lease.epoch,
                    deadline,
                    report,
                    sent: Mutex::new(Sent::started(Instant::now(), &last_report.latest())),
                    stop,
                },
            );
        }
        info!(node = %self.id(), job = %job, user = %spec.user_id, epoch = lease.epoch, "runner started");
        if let Err(e) = runner.start().await {
            warn!(node = %self.id(), job = %job, error = %e, "runner did not start");
        }
        runner.ended().await;

        // The epoch it ends under: the latest claim's (see above), not always the first.
        let epoch = self.runners().remove(&job).map_or(lease.epoch, |r| r.epoch);
        let taken = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = match taken {
            Some(Err(reason)) => {
                // A configuration failure: it would fail the same way every time, so it is
                // neither restarted nor counted against the strategy's breaker.
                warn!(node = %self.id(), job = %job, error = %reason, "runner cannot start; failing the job");
                let end = failed_end(format!("runner cannot start: {reason}"));
                self.finish(&owner, &job, epoch, end).await;
                return;
            }
            Some(Ok(o)) if o.crashed.is_some() => {
                // What the runner ran crashed without a panic (an external strategy's
                // process): a crash like a panic, left to the restart policy and breaker.
                let reason = o.crashed.unwrap_or_default();
                warn!(node = %self.id(), job = %job, error = %reason, "strategy crashed; reporting the crash");
                metrics::counter!(observability::STRATEGY_ERRORS_TOTAL).increment(1);
                self.finish(
                    &owner,
                    &job,
                    epoch,
                    end_of(JobStatus::Crashed, Some(reason), None, o.report),
                )
                .await;
                return;
            }
            Some(Ok(o)) => Some(o),
            None => None,
        };
        match outcome.as_ref().map(|o| o.cause) {
            Some(StopCause::Requested(mode)) => {
                let outcome = outcome.expect("matched Some");
                info!(node = %self.id(), job = %job, mode = mode.as_str(), flattened = ?outcome.flattened, "runner stopped");
                if let Some(e) = &outcome.flatten_error {
                    warn!(node = %self.id(), job = %job, error = %e, "flatten failed: positions remain open");
                }
                let error = outcome.flatten_error.clone();
                metrics::counter!(observability::FLATTENS_TOTAL)
                    .increment(outcome.flattened.unwrap_or(0).into());
                self.finish(
                    &owner,
                    &job,
                    epoch,
                    end_of(JobStatus::Stopped, error, outcome.flattened, outcome.report),
                )
                .await;
            }
            Some(StopCause::Fenced) => {
                // `fenced_at_ms` (wall clock, ms since the epoch) is no earlier than the runner's
                // last trade: the partition tests compare it with the next claim's time in Redis.
                warn!(node = %owner, job = %job, epoch, fenced_at_ms = wall_ms(), "runner fenced off: its lease is no longer ours");
            }
            Some(StopCause::Shutdown) => {
                let outcome = outcome.expect("matched Some");
                self.hand_back(&owner, &job, epoch, outcome.report).await;
            }
            None => {
                let reason = match runner.last_error() {
                    Some(e) if e.kind == ErrorKind::Panicked => {
                        format!("runner panicked: {}", e.message)
                    }
                    Some(e) => format!("runner failed: {}", e.message),
                    None => "runner ended abnormally".to_owned(),
                };
                warn!(node = %self.id(), job = %job, error = %reason, "runner failed; reporting the crash");
                metrics::counter!(observability::STRATEGY_ERRORS_TOTAL).increment(1);
                // The last report the runner published is what it leaves behind.
                let last = last_report.take();
                self.finish(
                    &owner,
                    &job,
                    epoch,
                    end_of(JobStatus::Crashed, Some(reason), None, last),
                )
                .await;
            }
        }
    }

    /// Records the end of a run, retrying while the store is unreachable (bounded by a lease:
    /// past that the lease has expired and the orchestrators own the job's fate).
    ///
    /// Boxed: it is awaited inside [`Self::supervise`], whose future every running runner keeps.
    fn finish<'a>(
        &'a self,
        owner: &'a NodeId,
        job: &'a JobId,
        epoch: u64,
        end: RunEnd,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.finish_now(owner, job, epoch, end))
    }

    async fn finish_now(&self, owner: &NodeId, job: &JobId, epoch: u64, end: RunEnd) {
        let inner = &self.inner;
        let give_up = tokio::time::Instant::now() + inner.config.lease;
        let mut backoff = backoff();
        loop {
            match inner.store.finish(owner, job, epoch, end.clone()).await {
                Ok(true) => return,
                Ok(false) => {
                    warn!(node = %self.id(), job = %job, epoch, "end of run refused: stale epoch");
                    return;
                }
                Err(e) if tokio::time::Instant::now() < give_up => {
                    warn!(node = %self.id(), job = %job, error = %e, "recording end of run failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => {
                    warn!(node = %self.id(), job = %job, error = %e, "giving up recording end of run");
                    return;
                }
            }
        }
    }

    /// Hands a job back at shutdown: queued again in the store (with its saved state), and
    /// dispatched to the queue.
    ///
    /// Boxed, as [`Self::finish`] is.
    fn hand_back<'a>(
        &'a self,
        owner: &'a NodeId,
        job: &'a JobId,
        epoch: u64,
        last: Report,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(self.hand_back_now(owner, job, epoch, last))
    }

    async fn hand_back_now(&self, owner: &NodeId, job: &JobId, epoch: u64, last: Report) {
        let inner = &self.inner;
        match Dispatcher::new(&inner.store, &inner.queue)
            .hand_back(owner, job, epoch, last.state)
            .await
        {
            Ok(true) => info!(node = %self.id(), job = %job, "job handed back to the queue"),
            Ok(false) => debug!(node = %self.id(), job = %job, "hand-back refused: stale epoch"),
            Err(e) => {
                warn!(node = %self.id(), job = %job, error = %e, "hand-back failed; its lease will expire")
            }
        }
    }

    /// One heartbeat: renews the node's lease, which is every runner's, in one round trip, with
    /// the reports that changed since the last accepted beat ([`crate::beat`]). Runners whose
    /// report was refused stop at once; the others' deadlines, and the node's, move to a lease
    /// (less the safety margin) after this call was sent. A node refused whole (its lease
    /// lapsed) fences itself at once. A failed or hanging heartbeat changes nothing: the
    /// deadlines pass by themselves (see [`Self::lease_watchdog`]).
    async fn heartbeat(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let id = self.id();
        let sent_at = Instant::now();
        // The runners held as the beat is sent (their epochs), and what changed of them.
        let (held, beats): (Vec<(JobId, u64)>, Vec<RunnerBeat>) = {
            let runners = self.runners();
            let held = runners.iter().map(|(j, r)| (j.clone(), r.epoch)).collect();
            let beats = runners
                .iter()
                .filter_map(|(job, r)| {
                    let report = r.report.latest();
                    let sent = r.sent.lock().unwrap_or_else(|p| p.into_inner());
                    beat_of(
                        job,
                        r.epoch,
                        &sent,
                        &report,
                        sent_at,
                        inner.config.checkpoint,
                    )
                })
                .collect();
            (held, beats)
        };
        let info = NodeInfo {
            node_id: id.clone(),
            capacity: inner.config.capacity as u32,
            runners: held.len() as u32,
            started_at: inner.started_at,
            last_heartbeat_at: None,
        };
        let capacity = inner.config.capacity;
        metrics::gauge!(observability::NODE_RUNNERS).set(held.len() as f64);
        metrics::gauge!(observability::NODE_FREE_SLOTS)
            .set(capacity.saturating_sub(held.len()) as f64);
        let renewed = inner.store.renew(&info, &beats, inner.config.lease).await;
        metrics::histogram!(observability::HEARTBEAT_SECONDS).record(sent_at.elapsed());
        let refused = match renewed {
            Err(StoreError::Fenced) => {
                self.fence(Some(&id));
                return Ok(());
            }
            other => other?,
        };
        metrics::counter!(observability::LEASE_RENEWALS_REFUSED_TOTAL)
            .increment(refused.len() as u64);
        let deadline = fence_at(sent_at, inner.config.lease);
        {
            // Held while the deadlines move, so that a fence cannot slip in between: an answer
            // for an id the node has since given up renews nothing of the new one.
            let current = inner.id.read().unwrap_or_else(|p| p.into_inner());
            if *current != id {
                debug!(node = %id, "heartbeat answered after the node fenced itself; ignored");
                return Ok(());
            }
            inner.deadline.extend_to(deadline);
            let now = self.runners();
            for beat in beats.iter().filter(|b| !refused.contains(&b.job_id)) {
                if let Some(r) = now.get(&beat.job_id).filter(|r| r.epoch == beat.epoch) {
                    r.sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .accepted(beat, sent_at);
                }
            }
            // Every runner that was the node's when the beat was sent lives on with it.
            for (job, epoch) in held.iter().filter(|(job, _)| !refused.contains(job)) {
                if let Some(r) = now.get(job).filter(|r| r.epoch == *epoch) {
                    r.deadline.extend_to(deadline);
                }
            }
        }
        for job in refused {
            self.stop_runner(&job, StopCause::Fenced);
        }
        Ok(())
    }

    /// Fences the node whenever its deadline passes: no heartbeat was accepted for a lease
    /// (less the safety margin), so the sweep may give its jobs to another node. Two live
    /// copies of a strategy is the worst failure there is, so every runner stops (holding its
    /// positions), and the node comes back under a new id: the old one is dead for the rest of
    /// the fleet, and the scripts refuse its writes.
    async fn lease_watchdog(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = self.inner.deadline.passed() => self.fence(None),
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Stops every runner and takes a new node id: when the deadline passed (`refused` none),
    /// or at once when the store refused the node whole under the id `refused` (its lease
    /// lapsed), unless the node has taken a new id since.
    fn fence(&self, refused: Option<&NodeId>) {
        let inner = &self.inner;
        let fresh = NodeId::generate();
        let mut id = inner.id.write().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock: a renewal accepted just now may have moved the deadline, and
        // an answer for an id given up already concerns no runner of this one.
        let due = match refused {
            Some(refused) => *refused == *id,
            None => inner.deadline.has_passed(),
        };
        if !due {
            return;
        }
        let runners = self.runners();
        warn!(node = %*id, new_id = %fresh, runners = runners.len(), fenced_at_ms = wall_ms(), "leases lapsed; fencing every runner and taking a new node id");
        for runner in runners.values() {
            runner.stop.send_if_modified(|c| {
                if c.is_none() {
                    *c = Some(StopCause::Fenced);
                    true
                } else {
                    false
                }
            });
        }
        *id = fresh;
        inner.deadline.disarm();
    }

    async fn command_loop(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut backoff = backoff();
        while !shutdown.is_cancelled() {
            let id = self.id();
            let next = tokio::select! {
                next = inner.store.next_command(&id, Duration::from_secs(1)) => next,
                () = shutdown.cancelled() => return,
            };
            match next {
                Ok(Some(NodeCommand::Stop {
                    job_id,
                    epoch,
                    mode,
                })) => {
                    backoff.reset();
                    let current = self.runners().get(&job_id).map(|r| r.epoch);
                    if current == Some(epoch) {
                        self.stop_runner(&job_id, StopCause::Requested(mode));
                    } else {
                        debug!(node = %self.id(), job = %job_id, epoch, "stop for a runner this node does not run");
                    }
                }
                Ok(None) => backoff.reset(),
                Err(e) => {
                    warn!(node = %self.id(), error = %e, "reading commands failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    fn stop_runner(&self, job: &JobId, cause: StopCause) {
        if let Some(r) = self.runners().get(job) {
            r.stop.send_if_modified(|c| {
                // The first cause wins: a fenced runner is not then "stopped on request".
                if c.is_none() {
                    *c = Some(cause);
                    true
                } else {
                    false
                }
            });
        }
    }
}

/// Jobs a node claims from the store's queue at most before it starts their runners (in
/// bounded claims of up to 32 each): a burst is claimed quickly, without waiting for runners to
/// start between two claims, and the first runners wait for at most this many claims.
const CLAIM_ROUND_MAX: usize = 1_024;

/// What a round of claims gave: the leases to run, the jobs that can never run, and when the
/// leases stop being surely the node's.
type ClaimedRound = (Vec<Lease>, Vec<(JobId, u64, String)>, Instant);

/// What a round of claims from the store's own queue came to.
enum QueuedRound {
    /// Jobs taken and claimed.
    Claimed(ClaimedRound),
    /// The store's queue had nothing: the node waits on it for the next job.
    Empty,
    /// The store fills no queue itself: the node claims from its queue.
    NoQueue,
}

/// The leases to run and the jobs that can never run, of node `id`'s claim `outcomes`; dropped
/// jobs are forgotten.
fn sort_claims(
    id: &NodeId,
    outcomes: Vec<ClaimOutcome>,
) -> (Vec<Lease>, Vec<(JobId, u64, String)>) {
    let (mut leases, mut unrunnable) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            ClaimOutcome::Claimed(lease) => {
                // Only a first claim measures admission to running; a restart's wait is its
                // restart delay.
                if lease.epoch == 1 {
                    metrics::histogram!(observability::START_TO_RUNNING_SECONDS)
                        .record(lease.since_created_ms as f64 / 1000.0);
                }
                leases.push(*lease);
            }
            ClaimOutcome::Dropped { job_id, reason } => {
                debug!(node = %id, job = %job_id, reason, "claimed job dropped");
            }
            ClaimOutcome::Unrunnable {
                job_id,
                epoch,
                reason,
            } => unrunnable.push((job_id, epoch, reason)),
        }
    }
    (leases, unrunnable)
}

/// The end of a run that failed for good: no restart, no breaker count.
fn failed_end(error: String) -> RunEnd {
    RunEnd {
        status: JobStatus::Failed,
        error: Some(error),
        flattened_positions: None,
        positions: Vec::new(),
        stats: Default::default(),
        account: None,
    }
}

fn end_of(
    status: JobStatus,
    error: Option<String>,
    flattened: Option<u32>,
    report: Report,
) -> RunEnd {
    RunEnd {
        status,
        error,
        flattened_positions: flattened,
        account: report.state,
        positions: report.positions,
        stats: report.stats,
    }
}
