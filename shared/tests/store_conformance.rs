//! One suite for every `FleetStore` backend: admission against tier limits, claims with
//! fencing epochs, fenced heartbeats and ends of runs, stops, subscriptions.

mod support;

use std::future::Future;
use std::time::Duration;

use runfleet_shared::config::{BreakerSettings, RedisSettings, RestartSettings};
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::dispatch::Dispatcher;
use runfleet_shared::ids::{BrokerId, JobId, NodeId, StrategyId, UserId};
use runfleet_shared::job::{Credentials, JobSpec, JobStatus, Stats, StopMode, StrategyConfig};
use runfleet_shared::keys::Keys;
use runfleet_shared::kind::SavedState;
use runfleet_shared::queue::{Delivery, JobQueue, MemoryQueue, QueueError};
use runfleet_shared::shard::Placement;
use runfleet_shared::store::{
    AdminAction, Admission, ClaimOutcome, EventId, FleetPolicy, FleetStore, MemoryStore,
    NodeCommand, NodeInfo, RedisStore, RunEnd, RunnerBeat, RunnerEvent, ScriptContext,
    ShardedStore, StopRequest, StoreError, SweepReport,
};
use runfleet_shared::tier::Tier;

trait Harness: Sized {
    type Store: FleetStore;
    fn store(&self) -> Self::Store;
    fn teardown(self) -> impl Future<Output = ()>;
}

struct Memory(MemoryStore);
impl Memory {
    async fn new() -> Self {
        Memory(MemoryStore::new(policy()))
    }
}
impl Harness for Memory {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.0.clone()
    }
    async fn teardown(self) {}
}

struct Redis(RedisStore, runfleet_shared::redis_pool::RedisPools);
impl Redis {
    async fn new() -> Self {
        let pools = support::redis_pools().await;
        Redis(
            RedisStore::new(pools.clone(), support::unique_keys(), policy()),
            pools,
        )
    }
}
impl Harness for Redis {
    type Store = RedisStore;
    fn store(&self) -> RedisStore {
        self.0.clone()
    }
    async fn teardown(self) {
        support::cleanup(&self.1, self.0.keys()).await;
    }
}

/// The Redis store on the test Redis Cluster (3 masters, 3 replicas), under a hash tag of its
/// own.
struct RedisCluster(RedisStore, runfleet_shared::redis_pool::RedisPools);
impl RedisCluster {
    async fn new() -> Self {
        let pools = support::cluster_pools().await;
        RedisCluster(
            RedisStore::new(pools.clone(), support::unique_cluster_keys(), policy()),
            pools,
        )
    }
}
impl Harness for RedisCluster {
    type Store = RedisStore;
    fn store(&self) -> RedisStore {
        self.0.clone()
    }
    async fn teardown(self) {
        support::cleanup(&self.1, self.0.keys()).await;
    }
}

/// Shards of the sharded backend: specs everywhere get job ids in their user's shard of a fleet
/// of this many (any id fits the other backends).
const SHARDS: u32 = 4;

/// The sharded store on the test Redis Cluster: [`SHARDS`] shards, each under a hash tag of its
/// own (so spread over the cluster's masters).
struct RedisSharded(ShardedStore, runfleet_shared::redis_pool::RedisPools);
impl RedisSharded {
    async fn new() -> Self {
        let pools = support::cluster_pools().await;
        let settings = RedisSettings {
            url: support::cluster_url(),
            cluster: true,
            shards: SHARDS,
            key_prefix: format!("rftest-{}", uuid::Uuid::new_v4().simple()),
            ..RedisSettings::default()
        };
        let (store, _) =
            runfleet_shared::backend::sharded(&pools, &settings, policy(), "jobs", false);
        RedisSharded(store, pools)
    }
}
impl Harness for RedisSharded {
    type Store = ShardedStore;
    fn store(&self) -> ShardedStore {
        self.0.clone()
    }
    async fn teardown(self) {
        for shard in self.0.shards() {
            support::cleanup(&self.1, shard.keys()).await;
        }
    }
}

/// The Redis store on a server without Redis Functions: every script runs with EVAL.
struct RedisEval(RedisStore, support::PrivateServer);
impl RedisEval {
    async fn new() -> Self {
        let server = support::PrivateServer::without_functions().await;
        let pools = support::redis_pools_at(&server.url).await;
        RedisEval(
            RedisStore::new(pools, support::unique_keys(), policy()),
            server,
        )
    }
}
impl Harness for RedisEval {
    type Store = RedisStore;
    fn store(&self) -> RedisStore {
        self.0.clone()
    }
    async fn teardown(self) {
        // Killed, with its data.
        drop(self.1);
    }
}

const LEASE: Duration = Duration::from_secs(30);

/// Fast timings, so the suite runs in real time on a real Redis (whose clock cannot be paused).
/// The breaker opens only after many failures unless a test says otherwise (by strategy id).
fn policy() -> FleetPolicy {
    FleetPolicy {
        restart: RestartSettings {
            max_restarts: 2,
            window_ms: 60_000,
            base_delay_ms: 50,
            max_delay_ms: 200,
            stable_ms: 60_000,
            max_node_losses: 2,
        },
        breaker: BreakerSettings {
            failures: 3,
            window_ms: 60_000,
            cooldown_ms: 300,
            trial_ms: 150,
        },
        audit: true,
        admin_audit_max: 3,
        ..FleetPolicy::default()
    }
}

async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Sweeps once the previous sweep's guard (10 ms) has lapsed.
async fn sweep<S: FleetStore>(s: &S) -> SweepReport {
    sleep_ms(15).await;
    s.sweep(Duration::from_millis(10), 100)
        .await
        .unwrap()
        .expect("the guard was free")
}

fn spec(user: &str) -> JobSpec {
    let id = JobId::generate_in(Placement::of_user(user, SHARDS));
    let creds = Credentials {
        api_key: "k".into(),
        api_secret: "s".into(),
    };
    JobSpec {
        credentials: CredentialCipher::ephemeral().seal(&id, &creds).unwrap(),
        id,
        user_id: UserId::new(user),
        strategy_id: StrategyId::new("s"),
        broker_id: BrokerId::new("paper"),
        config: StrategyConfig {
            name: "t".into(),
            kind: "scalping".into(),
            parameters: Default::default(),
            risk_management: None,
            instruments: vec!["BTC-PERPETUAL".into()],
        },
    }
}

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        node_id: NodeId::new(id),
        capacity: 10,
        runners: 1,
        started_at: 0,
        last_heartbeat_at: None,
    }
}

async fn claim_one<S: FleetStore>(s: &S, n: &str, job: &JobId) -> u64 {
    match s
        .claim(&NodeId::new(n), std::slice::from_ref(job), LEASE)
        .await
        .unwrap()
        .remove(0)
    {
        ClaimOutcome::Claimed(lease) => lease.epoch,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// A run that ended by crashing (panicked or erred), as a node reports it.
fn crashed(error: &str) -> RunEnd {
    RunEnd {
        error: Some(error.into()),
        flattened_positions: None,
        ..end(JobStatus::Crashed)
    }
}

fn end(status: JobStatus) -> RunEnd {
    RunEnd {
        account: None,
        status,
        error: None,
        flattened_positions: Some(2),
        positions: vec![],
        stats: Default::default(),
    }
}

async fn admission_holds_the_tier_limit<S: FleetStore>(s: S) {
    let a = spec("alice");
    assert!(matches!(
        s.admit(&a).await.unwrap(),
        Admission::Admitted {
            tier: Tier::Free,
            limit: 1,
            current: 1
        }
    ));
    let b = spec("alice");
    assert_eq!(
        s.admit(&b).await.unwrap(),
        Admission::LimitReached {
            tier: Tier::Free,
            limit: 1,
            current: 1
        }
    );
    assert!(
        s.job(&b.id).await.unwrap().is_none(),
        "a refused start writes nothing"
    );
    s.subscribe(&UserId::new("alice"), Tier::Basic, 30)
        .await
        .unwrap();
    assert!(matches!(
        s.admit(&b).await.unwrap(),
        Admission::Admitted {
            tier: Tier::Basic,
            limit: 3,
            current: 2
        }
    ));
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Queued);
    assert_eq!(s.user_jobs(&UserId::new("alice")).await.unwrap().len(), 2);
    assert_eq!(s.spec(&a.id).await.unwrap().unwrap(), a);
}

async fn expired_subscription_falls_back_to_free<S: FleetStore>(s: S) {
    s.subscribe(&UserId::new("bob"), Tier::Pro, 0)
        .await
        .unwrap();
    assert!(matches!(
        s.admit(&spec("bob")).await.unwrap(),
        Admission::Admitted {
            tier: Tier::Free,
            ..
        }
    ));
    assert!(matches!(
        s.admit(&spec("bob")).await.unwrap(),
        Admission::LimitReached {
            tier: Tier::Free,
            ..
        }
    ));
}

async fn claims_bump_the_epoch_and_drop_what_must_not_run<S: FleetStore>(s: S) {
    let a = spec("carol");
    s.admit(&a).await.unwrap();
    assert_eq!(claim_one(&s, "n1", &a.id).await, 1);
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.epoch, rec.node_id),
        (JobStatus::Running, 1, Some(NodeId::new("n1")))
    );
    // A duplicate delivery while the lease is live is dropped.
    let again = s
        .claim(&NodeId::new("n2"), std::slice::from_ref(&a.id), LEASE)
        .await
        .unwrap();
    assert!(
        matches!(&again[0], ClaimOutcome::Dropped { .. }),
        "{again:?}"
    );
    let unknown = s
        .claim(&NodeId::new("n2"), &[JobId::new("nope")], LEASE)
        .await
        .unwrap();
    assert!(matches!(&unknown[0], ClaimOutcome::Dropped { reason, .. } if reason == "unknown"));
}

async fn heartbeats_and_ends_are_fenced_by_epoch<S: FleetStore>(s: S) {
    let a = spec("dave");
    s.admit(&a).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    let beat = |epoch| RunnerBeat {
        job_id: a.id.clone(),
        epoch,
        account: None,
        positions: Some(vec![]),
        stats: Some(Default::default()),
    };
    assert!(
        s.renew(&node("n1"), &[beat(epoch)], LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.renew(&node("n1"), &[beat(epoch + 1)], LEASE)
            .await
            .unwrap(),
        vec![a.id.clone()]
    );
    assert!(
        matches!(
            s.renew(&node("n2"), &[beat(epoch)], LEASE).await,
            Err(StoreError::Fenced)
        ),
        "a node without a lease cannot report runners"
    );
    assert!(
        !s.finish(
            &NodeId::new("n1"),
            &a.id,
            epoch + 1,
            end(JobStatus::Stopped)
        )
        .await
        .unwrap()
    );
    assert!(
        s.finish(&NodeId::new("n1"), &a.id, epoch, end(JobStatus::Stopped))
            .await
            .unwrap()
    );
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.flattened_positions),
        (JobStatus::Stopped, Some(2))
    );
    assert_eq!(
        s.active_count(&UserId::new("dave")).await.unwrap(),
        0,
        "the slot is free again"
    );
    assert!(
        !s.finish(&NodeId::new("n1"), &a.id, epoch, end(JobStatus::Failed))
            .await
            .unwrap()
    );
    let nodes = s.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.node_id.as_str() == "n1" && n.last_heartbeat_at.is_some()),
        "a live node is listed with its last heartbeat: {nodes:?}"
    );
}

async fn stopping_a_queued_job_needs_no_node<S: FleetStore>(s: S) {
    let a = spec("erin");
    s.admit(&a).await.unwrap();
    assert_eq!(
        s.request_stop(&a.id, StopMode::Flatten).await.unwrap(),
        StopRequest::Stopped
    );
    assert_eq!(
        s.job(&a.id).await.unwrap().unwrap().status,
        JobStatus::Stopped
    );
    assert_eq!(s.active_count(&UserId::new("erin")).await.unwrap(), 0);
    assert_eq!(
        s.request_stop(&a.id, StopMode::Flatten).await.unwrap(),
        StopRequest::AlreadyEnded(JobStatus::Stopped)
    );
    let late = s
        .claim(&NodeId::new("n1"), std::slice::from_ref(&a.id), LEASE)
        .await
        .unwrap();
    assert!(
        matches!(&late[0], ClaimOutcome::Dropped { .. }),
        "a stopped job never starts"
    );
    assert_eq!(
        s.request_stop(&JobId::new("nope"), StopMode::Hold)
            .await
            .unwrap(),
        StopRequest::NotFound
    );
}

async fn stopping_a_running_job_sends_its_node_a_command<S: FleetStore>(s: S) {
    let a = spec("frank");
    s.admit(&a).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    assert_eq!(
        s.request_stop(&a.id, StopMode::Hold).await.unwrap(),
        StopRequest::Sent {
            node: NodeId::new("n1")
        }
    );
    assert_eq!(
        s.next_command(&NodeId::new("n2"), Duration::from_millis(50))
            .await
            .unwrap(),
        None
    );
    let cmd = s
        .next_command(&NodeId::new("n1"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        cmd,
        Some(NodeCommand::Stop {
            job_id: a.id.clone(),
            epoch,
            mode: StopMode::Hold
        })
    );
    assert_eq!(
        s.job(&a.id).await.unwrap().unwrap().stop_mode,
        Some(StopMode::Hold)
    );
}

/// A node's pending commands live as long as the node: each heartbeat extends them, and once
/// its liveness lapses they are gone rather than waiting for a node that will not come back.
async fn a_nodes_commands_expire_with_the_node<S: FleetStore>(s: S) {
    let short = Duration::from_millis(300);
    let (a, b) = (spec("cmd-a"), spec("cmd-b"));
    s.admit(&a).await.unwrap();
    s.admit(&b).await.unwrap();
    let (alive, dead) = (NodeId::new("cmd-alive"), NodeId::new("cmd-dead"));
    for (n, job) in [(&alive, &a), (&dead, &b)] {
        let claimed = s.claim(n, std::slice::from_ref(&job.id), short).await;
        assert!(matches!(claimed.unwrap()[0], ClaimOutcome::Claimed(_)));
        s.renew(&node(n.as_str()), &[], short).await.unwrap();
        assert!(matches!(
            s.request_stop(&job.id, StopMode::Hold).await.unwrap(),
            StopRequest::Sent { .. }
        ));
    }
    // Only the live node keeps beating, each beat well inside the lease.
    for _ in 0..4 {
        sleep_ms(150).await;
        s.renew(&node("cmd-alive"), &[], short).await.unwrap();
    }
    assert!(
        s.next_command(&alive, Duration::from_millis(50))
            .await
            .unwrap()
            .is_some(),
        "a live node's command waits for it"
    );
    assert_eq!(
        s.next_command(&dead, Duration::from_millis(50))
            .await
            .unwrap(),
        None,
        "a dead node's commands went with it"
    );
}

async fn handed_back_jobs_can_be_claimed_again<S: FleetStore>(s: S) {
    let a = spec("gina");
    s.admit(&a).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    assert!(
        !s.hand_back(&NodeId::new("n2"), &a.id, epoch, None)
            .await
            .unwrap()
    );
    let account =
        SavedState::of(&serde_json::json!({"balance": "1000.5", "positions": []})).unwrap();
    assert!(
        s.hand_back(&NodeId::new("n1"), &a.id, epoch, Some(account.clone()))
            .await
            .unwrap()
    );
    assert_eq!(
        s.active_count(&UserId::new("gina")).await.unwrap(),
        1,
        "the slot stays held"
    );
    match s
        .claim(&NodeId::new("n2"), std::slice::from_ref(&a.id), LEASE)
        .await
        .unwrap()
        .remove(0)
    {
        ClaimOutcome::Claimed(lease) => {
            assert_eq!(lease.epoch, epoch + 1);
            assert_eq!(
                lease.account,
                Some(account),
                "the next run resumes from the stored account"
            );
        }
        other => panic!("{other:?}"),
    }
}

fn spec_for(user: &str, strategy: &str) -> JobSpec {
    JobSpec {
        strategy_id: StrategyId::new(strategy),
        ..spec(user)
    }
}

async fn claim_for<S: FleetStore>(s: &S, node: &str, job: &JobId, lease_ms: u64) -> u64 {
    match s
        .claim(
            &NodeId::new(node),
            std::slice::from_ref(job),
            Duration::from_millis(lease_ms),
        )
        .await
        .unwrap()
        .remove(0)
    {
        ClaimOutcome::Claimed(lease) => lease.epoch,
        other => panic!("expected a claim, got {other:?}"),
    }
}

async fn a_silent_runner_is_swept_restarted_with_backoff_then_failed<S: FleetStore>(s: S) {
    let a = spec_for("hana", "silent");
    s.admit(&a).await.unwrap();
    let mut epochs = Vec::new();
    for round in 1..=2u32 {
        // A node whose lease lapsed and was swept never claims again under its id.
        let epoch = claim_for(&s, &format!("s{round}"), &a.id, 40).await;
        epochs.push(epoch);
        sleep_ms(60).await;
        // A guard of 60 ms, not the helper's 10: the check below must see it held, on a loaded
        // machine too, and the next round sweeps over 100 ms later.
        sleep_ms(15).await;
        let report = s
            .sweep(Duration::from_millis(60), 100)
            .await
            .unwrap()
            .expect("the guard was free");
        assert_eq!(
            report,
            SweepReport {
                crashed: 1,
                restarting: 1,
                failed: 0
            },
            "round {round}"
        );
        assert!(
            s.sweep(Duration::from_millis(10), 100)
                .await
                .unwrap()
                .is_none(),
            "one sweep per interval"
        );
        let rec = s.job(&a.id).await.unwrap().unwrap();
        assert_eq!((rec.status, rec.restarts), (JobStatus::Crashed, round));
        assert!(
            rec.error.as_deref().unwrap().contains("no heartbeat"),
            "{:?}",
            rec.error
        );
        assert!(
            s.due_restarts(10).await.unwrap().is_empty(),
            "not before its delay"
        );
        sleep_ms(50 * 2u64.pow(round - 1) + 20).await;
        assert_eq!(s.due_restarts(10).await.unwrap(), vec![a.id.clone()]);
        assert_eq!(
            s.job(&a.id).await.unwrap().unwrap().status,
            JobStatus::Queued
        );
        assert_eq!(
            s.active_count(&UserId::new("hana")).await.unwrap(),
            1,
            "a job waiting for a restart keeps its slot"
        );
    }
    let epoch = claim_for(&s, "n2", &a.id, 40).await;
    assert_eq!(epoch, epochs[1] + 1);
    let stale = RunnerBeat {
        job_id: a.id.clone(),
        epoch: epochs[0],
        positions: Some(vec![]),
        stats: Some(Default::default()),
        account: None,
    };
    assert!(
        matches!(
            s.renew(&node("s1"), &[stale], LEASE).await,
            Err(StoreError::Fenced)
        ),
        "the swept node is fenced off, whatever it reports"
    );
    assert!(
        matches!(
            s.claim(&NodeId::new("s2"), std::slice::from_ref(&a.id), LEASE)
                .await,
            Err(StoreError::Fenced)
        ),
        "and claims nothing"
    );
    sleep_ms(60).await;
    assert_eq!(
        sweep(&s).await,
        SweepReport {
            crashed: 1,
            restarting: 0,
            failed: 1
        }
    );
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    assert!(
        rec.error.as_deref().unwrap().contains("2 node losses"),
        "{:?}",
        rec.error
    );
    assert_eq!(s.active_count(&UserId::new("hana")).await.unwrap(), 0);
}

async fn a_runner_whose_node_died_during_its_stop_is_stopped_not_restarted<S: FleetStore>(s: S) {
    let a = spec_for("rhea", "s");
    s.admit(&a).await.unwrap();
    claim_for(&s, "n1", &a.id, 40).await;
    assert!(matches!(
        s.request_stop(&a.id, StopMode::Flatten).await.unwrap(),
        StopRequest::Sent { .. }
    ));
    sleep_ms(60).await;
    assert_eq!(
        sweep(&s).await,
        SweepReport {
            crashed: 1,
            restarting: 0,
            failed: 1
        }
    );
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Stopped);
    assert!(rec.error.unwrap().contains("stop was requested"));
    assert_eq!(s.active_count(&UserId::new("rhea")).await.unwrap(), 0);
    sleep_ms(70).await;
    assert!(s.due_restarts(10).await.unwrap().is_empty());
}

async fn a_crash_reported_by_the_node_goes_through_the_same_policy<S: FleetStore>(s: S) {
    let a = spec_for("ivan", "panicky");
    s.admit(&a).await.unwrap();
    let epoch = claim_for(&s, "n1", &a.id, 30_000).await;
    let crash = crashed("runner panicked: boom");
    assert!(
        s.finish(&NodeId::new("n1"), &a.id, epoch, crash)
            .await
            .unwrap()
    );
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!((rec.status, rec.restarts), (JobStatus::Crashed, 1));
    assert_eq!(rec.error.as_deref(), Some("runner panicked: boom"));
    sleep_ms(70).await;
    assert_eq!(s.due_restarts(10).await.unwrap(), vec![a.id.clone()]);
    // Stopping a job that waits for its restart cancels the restart.
    let b = spec_for("ivan2", "panicky");
    s.admit(&b).await.unwrap();
    let epoch = claim_for(&s, "n1", &b.id, 30_000).await;
    let crash = crashed("x");
    s.finish(&NodeId::new("n1"), &b.id, epoch, crash)
        .await
        .unwrap();
    assert_eq!(
        s.request_stop(&b.id, StopMode::Flatten).await.unwrap(),
        StopRequest::Stopped
    );
    sleep_ms(70).await;
    assert!(s.due_restarts(10).await.unwrap().is_empty());
    assert_eq!(s.active_count(&UserId::new("ivan2")).await.unwrap(), 0);
}

async fn the_breaker_opens_refuses_starts_and_a_trial_closes_it<S: FleetStore>(s: S) {
    s.subscribe(&UserId::new("jo"), Tier::Pro, 1).await.unwrap();
    let mut failed = None;
    for _ in 0..3 {
        let j = spec_for("jo", "fragile");
        assert!(matches!(
            s.admit(&j).await.unwrap(),
            Admission::Admitted { .. }
        ));
        let epoch = claim_for(&s, "n1", &j.id, 30_000).await;
        s.finish(&NodeId::new("n1"), &j.id, epoch, crashed("boom"))
            .await
            .unwrap();
        failed = Some(j.id);
    }
    let third = s.job(&failed.unwrap()).await.unwrap().unwrap();
    assert_eq!(
        third.status,
        JobStatus::Failed,
        "the failure that opens the breaker is not restarted"
    );
    assert!(third.error.unwrap().contains("circuit breaker"));
    let refused = s.admit(&spec_for("jo", "fragile")).await.unwrap();
    assert!(
        matches!(refused, Admission::BreakerOpen { retry_after_ms } if retry_after_ms > 0 && retry_after_ms <= 300),
        "{refused:?}"
    );
    assert!(
        matches!(
            s.admit(&spec_for("jo", "other")).await.unwrap(),
            Admission::Admitted { .. }
        ),
        "other strategies are not affected"
    );
    assert!(
        matches!(
            s.admit(&spec_for("kim", "fragile")).await.unwrap(),
            Admission::Admitted { .. }
        ),
        "nor other users"
    );

    sleep_ms(320).await;
    let trial = spec_for("jo", "fragile");
    assert!(
        matches!(s.admit(&trial).await.unwrap(), Admission::Admitted { .. }),
        "after the cool-down, one trial"
    );
    assert!(
        matches!(
            s.admit(&spec_for("jo", "fragile")).await.unwrap(),
            Admission::BreakerOpen { .. }
        ),
        "while the trial decides"
    );
    claim_for(&s, "n1", &trial.id, 30_000).await;
    sleep_ms(170).await;
    assert!(
        matches!(
            s.admit(&spec_for("jo", "fragile")).await.unwrap(),
            Admission::Admitted { .. }
        ),
        "the trial ran long enough: closed"
    );
}

async fn a_user_above_their_tier_after_a_downgrade_is_not_restarted<S: FleetStore>(s: S) {
    let user = UserId::new("lee");
    s.subscribe(&user, Tier::Basic, 1).await.unwrap();
    let (a, b) = (spec_for("lee", "a"), spec_for("lee", "b"));
    s.admit(&a).await.unwrap();
    s.admit(&b).await.unwrap();
    let epoch = claim_for(&s, "n1", &a.id, 30_000).await;
    s.subscribe(&user, Tier::Free, 1).await.unwrap();
    let crash = crashed("boom");
    s.finish(&NodeId::new("n1"), &a.id, epoch, crash)
        .await
        .unwrap();
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    assert!(rec.error.unwrap().contains("tier"));
    assert_eq!(
        s.active_count(&user).await.unwrap(),
        1,
        "its slot is freed; the other runner keeps its own"
    );
}

/// A lease that expired because its node died is infrastructure, not the strategy: the
/// breaker does not count it, and its restarts draw from the node-loss budget.
async fn node_losses_do_not_count_toward_the_breaker<S: FleetStore>(s: S) {
    s.subscribe(&UserId::new("nora"), Tier::Pro, 1)
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for _ in 0..4 {
        let j = spec_for("nora", "steady");
        assert!(matches!(
            s.admit(&j).await.unwrap(),
            Admission::Admitted { .. }
        ));
        jobs.push(j.id);
    }
    // One claim of all four: separate claims of a 5 ms lease could find the node's lease
    // already lapsed on a loaded machine (and be fenced).
    let claimed = s
        .claim(&NodeId::new("n1"), &jobs, Duration::from_millis(5))
        .await
        .unwrap();
    assert!(
        claimed
            .iter()
            .all(|c| matches!(c, ClaimOutcome::Claimed(_))),
        "{claimed:?}"
    );
    sleep_ms(10).await;
    assert_eq!(
        sweep(&s).await,
        SweepReport {
            crashed: 4,
            restarting: 4,
            failed: 0
        },
        "4 node losses of one strategy (breaker at 3) all restart"
    );
    assert!(
        matches!(
            s.admit(&spec_for("nora", "steady")).await.unwrap(),
            Admission::Admitted { .. }
        ),
        "the breaker stayed closed"
    );
    // The node-loss budget (2 in the window) bounds one job's restarts after node losses.
    let j = jobs[0].clone();
    for round in 1..=2 {
        sleep_ms(250).await;
        assert!(s.due_restarts(10).await.unwrap().contains(&j));
        claim_for(&s, &format!("m{round}"), &j, 5).await;
        sleep_ms(10).await;
        sweep(&s).await;
        let rec = s.job(&j).await.unwrap().unwrap();
        if round == 1 {
            assert_eq!(rec.status, JobStatus::Crashed);
        } else {
            assert_eq!(rec.status, JobStatus::Failed);
            let err = rec.error.unwrap();
            assert!(err.contains("2 node losses within"), "{err}");
            assert!(!err.contains("circuit breaker"), "{err}");
        }
    }
}

/// A queued job waits in `pending` until its enqueue is confirmed; the sweep's reconciliation
/// hands back the ones never confirmed (their orchestrator died mid-start), re-arming them,
/// and forgets those that were claimed or stopped.
/// A queue that refuses every publish (a broker that is down).
struct DownQueue;

impl JobQueue for DownQueue {
    async fn enqueue(&self, _: &[JobId]) -> Result<(), QueueError> {
        Err(QueueError::Broker("down".into()))
    }
    async fn claim(&self, _: &NodeId, _: usize, _: Duration) -> Result<Vec<Delivery>, QueueError> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &NodeId, _: &[Delivery]) -> Result<(), QueueError> {
        Ok(())
    }
    async fn release(&self, _: &NodeId, _: &[Delivery]) -> Result<(), QueueError> {
        Ok(())
    }
    async fn remove(&self, _: &JobId) -> Result<bool, QueueError> {
        Ok(false)
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(0)
    }
    async fn recover(&self, _: &NodeId) -> Result<u64, QueueError> {
        Ok(0)
    }
}

/// The record-then-queue rule of `Dispatcher`: an admission whose publish fails stands (the
/// job stays queued and pending), and the sweep's re-publish queues it once.
async fn a_failed_publish_is_not_undone_and_the_sweep_publishes_it_again<S: FleetStore>(s: S) {
    let a = spec("ulla");
    let admission = Dispatcher::new(&s, &DownQueue).admit(&a).await.unwrap();
    assert!(
        matches!(admission, Admission::Admitted { .. }),
        "{admission:?}"
    );
    let record = s.job(&a.id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Queued, "the admission stands");
    if s.queues_inline() {
        return;
    }
    let queue = MemoryQueue::new();
    let dispatcher = Dispatcher::new(&s, &queue);
    let again = dispatcher
        .republish_unconfirmed(Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(again, vec![a.id.clone()]);
    assert_eq!(queue.depth().await.unwrap(), 1);
    sleep_ms(5).await;
    let none = dispatcher
        .republish_unconfirmed(Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "a confirmed publish is not made again");
}

async fn unconfirmed_enqueues_are_published_again<S: FleetStore>(s: S) {
    let (a, b, c) = (spec("uma"), spec("uli"), spec("ute"));
    for j in [&a, &b, &c] {
        s.admit(j).await.unwrap();
    }
    s.confirm_enqueued(std::slice::from_ref(&b.id))
        .await
        .unwrap();
    claim_one(&s, "n1", &c.id).await;
    // A bound of 200 ms: the second look below, right after the first, must fall inside the
    // re-armed bound even on a loaded machine.
    sleep_ms(250).await;
    let again = s.unconfirmed(Duration::from_millis(200), 10).await.unwrap();
    if s.queues_inline() {
        assert!(again.is_empty());
        return;
    }
    assert_eq!(
        again,
        vec![a.id.clone()],
        "confirmed and claimed jobs are not"
    );
    assert!(
        s.unconfirmed(Duration::from_millis(200), 10)
            .await
            .unwrap()
            .is_empty(),
        "re-armed: it waits another bound for its new publish"
    );
    s.request_stop(&a.id, StopMode::Hold).await.unwrap();
    sleep_ms(30).await;
    assert!(
        s.unconfirmed(Duration::from_millis(20), 10)
            .await
            .unwrap()
            .is_empty(),
        "a stopped job is never published again"
    );
    let counts = s.fleet_counts().await.unwrap();
    assert_eq!((counts.queued, counts.running, counts.active), (1, 1, 2));
}

/// Stops running job `job` on request and has its node `node` confirm the stop of run `epoch`.
async fn stop_running<S: FleetStore>(s: &S, job: &JobId, node: &str, epoch: u64, mode: StopMode) {
    assert!(matches!(
        s.request_stop(job, mode).await.unwrap(),
        StopRequest::Sent { .. }
    ));
    assert!(
        s.finish(&NodeId::new(node), job, epoch, end(JobStatus::Stopped))
            .await
            .unwrap()
    );
}

/// Each event of a history as (kind, epoch, node).
fn steps(history: &[RunnerEvent]) -> Vec<(&str, u64, &str)> {
    history
        .iter()
        .map(|e| (e.kind.as_str(), e.epoch, e.node.as_str()))
        .collect()
}

/// The events' ids are stream ids, each after the one before.
fn assert_ids_increase(history: &[RunnerEvent]) {
    let ids: Vec<EventId> = history.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
}

/// Every step of a runner's life is in its history, in order, with the epoch and node it
/// concerned: admitted, claimed, crashed, restart scheduled, restarted, claimed again, a stale
/// heartbeat fenced, stop requested, stopped.
async fn a_runners_history_lists_every_step_with_its_epoch<S: FleetStore>(s: S) {
    let a = spec("evh");
    assert!(matches!(
        s.admit(&a).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(claim_one(&s, "n1", &a.id).await, 1);
    assert!(
        s.finish(&NodeId::new("n1"), &a.id, 1, crashed("boom"))
            .await
            .unwrap()
    );
    sleep_ms(60).await;
    assert_eq!(s.due_restarts(10).await.unwrap(), vec![a.id.clone()]);
    assert_eq!(claim_one(&s, "n2", &a.id).await, 2);
    let stale = RunnerBeat {
        job_id: a.id.clone(),
        epoch: 1,
        positions: Some(vec![]),
        stats: Some(Default::default()),
        account: None,
    };
    assert_eq!(
        s.renew(&node("n1"), &[stale], LEASE).await.unwrap(),
        vec![a.id.clone()]
    );
    stop_running(&s, &a.id, "n2", 2, StopMode::Flatten).await;

    let history = s.job_events(&a.id).await.unwrap();
    assert_eq!(
        steps(&history),
        vec![
            ("admitted", 0, ""),
            ("claimed", 1, "n1"),
            ("crashed", 1, "n1"),
            ("restart_scheduled", 1, "n1"),
            ("restarted", 1, ""),
            ("claimed", 2, "n2"),
            ("fenced", 1, "n1"),
            ("stop_requested", 2, "n2"),
            ("stopped", 2, "n2"),
        ]
    );
    assert!(
        history
            .iter()
            .all(|e| e.job == a.id && e.user.as_str() == "evh")
    );
    assert!(history[2].reason.contains("boom"), "{:?}", history[2]);
    assert_eq!(history[8].reason, "flattened: 2");
    assert_ids_increase(&history);
    assert!(
        s.job_events(&JobId::new("no-such-job"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A runner is claimed many times over its life, and the Redis store keeps only its latest
/// claim on its record (the claim writes no history entry): each later event or claim must put
/// the one before into the history first. Restarted twice, handed back, and claimed again after
/// its lease lapsed, its history lists every claim in order, and read between the steps it
/// ends with the latest claim.
async fn every_claim_of_a_runner_stays_in_its_history_in_order<S: FleetStore>(s: S) {
    let a = spec("reclaimed");
    s.admit(&a).await.unwrap();
    let crash_and_restart = |node: &'static str, epoch: u64| {
        let s = s.clone();
        let id = a.id.clone();
        async move {
            assert!(
                s.finish(&NodeId::new(node), &id, epoch, crashed("boom"))
                    .await
                    .unwrap()
            );
            // The backoff is at most 200 ms (policy()).
            for _ in 0..50 {
                if s.due_restarts(10).await.unwrap() == vec![id.clone()] {
                    return;
                }
                sleep_ms(20).await;
            }
            panic!("{id} was not restarted");
        }
    };
    for (epoch, node) in [(1, "n1"), (2, "n2")] {
        assert_eq!(claim_one(&s, node, &a.id).await, epoch);
        let h = s.job_events(&a.id).await.unwrap();
        assert_eq!(steps(&h).last(), Some(&("claimed", epoch, node)), "{h:?}");
        crash_and_restart(node, epoch).await;
    }
    assert_eq!(claim_one(&s, "n3", &a.id).await, 3);
    assert!(
        s.hand_back(&NodeId::new("n3"), &a.id, 3, None)
            .await
            .unwrap()
    );
    // Claimed by n4 under a lease that lapses, then by n5 with no event in between.
    assert_eq!(claim_for(&s, "n4", &a.id, 50).await, 4);
    sleep_ms(120).await;
    assert_eq!(claim_one(&s, "n5", &a.id).await, 5);
    let h = s.job_events(&a.id).await.unwrap();
    assert_eq!(
        steps(&h[h.len() - 2..]),
        [("claimed", 4, "n4"), ("claimed", 5, "n5")]
    );
    stop_running(&s, &a.id, "n5", 5, StopMode::Hold).await;

    let history = s.job_events(&a.id).await.unwrap();
    let mut expected = vec![("admitted", 0, "")];
    for (epoch, node) in [(1, "n1"), (2, "n2")] {
        expected.extend([
            ("claimed", epoch, node),
            ("crashed", epoch, node),
            ("restart_scheduled", epoch, node),
            ("restarted", epoch, ""),
        ]);
    }
    expected.extend([
        ("claimed", 3, "n3"),
        ("handed_back", 3, "n3"),
        ("claimed", 4, "n4"),
        ("claimed", 5, "n5"),
        ("stop_requested", 5, "n5"),
        ("stopped", 5, "n5"),
    ]);
    assert_eq!(steps(&history), expected);
    assert_ids_increase(&history);
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(
        history
            .iter()
            .all(|e| e.job == a.id && e.user.as_str() == "reclaimed" && e.at > 0)
    );
    // The claims are the fleet stream's own entries.
    let stream = s.events_after(&EventId::ZERO, 1000, None).await.unwrap();
    let claims: Vec<&RunnerEvent> = stream
        .iter()
        .filter(|e| e.job == a.id && e.kind == "claimed")
        .collect();
    let listed: Vec<&RunnerEvent> = history.iter().filter(|e| e.kind == "claimed").collect();
    assert_eq!(claims, listed);
}

async fn the_admin_trail_is_capped_and_read_newest_first<S: FleetStore>(s: S) {
    assert!(s.admin_trail(10).await.unwrap().is_empty());
    let mut recorded = Vec::new();
    for i in 0..5 {
        let action = AdminAction {
            actor: "admin".into(),
            action: "key.issued".into(),
            user: format!("u{i}"),
            detail: serde_json::json!({"keyId": format!("k{i}")}),
            request_id: format!("req-{i}"),
        };
        let entry = s.record_admin(&action).await.unwrap();
        assert_eq!(entry.action, action);
        assert!(entry.at > 0);
        recorded.push(entry);
    }
    let trail = s.admin_trail(10).await.unwrap();
    let users: Vec<&str> = trail.iter().map(|e| e.action.user.as_str()).collect();
    assert_eq!(users, ["u4", "u3", "u2"], "capped at 3, newest first");
    assert_eq!(trail[0], recorded[4], "read back as recorded");
    assert_eq!(s.admin_trail(1).await.unwrap().len(), 1);
}

/// Issue 13's bug: a breaker trial that ends `failed` for a reason of its own (a configuration
/// failure, not counted by the breaker) closes the breaker in both stores, instead of keeping
/// the strategy refused until the trial's record expires.
async fn a_trial_that_fails_on_its_own_does_not_keep_the_breaker_half_open<S: FleetStore>(s: S) {
    s.subscribe(&UserId::new("tess"), Tier::Pro, 1)
        .await
        .unwrap();
    for _ in 0..3 {
        let j = spec_for("tess", "brittle");
        s.admit(&j).await.unwrap();
        let epoch = claim_for(&s, "n1", &j.id, 30_000).await;
        s.finish(&NodeId::new("n1"), &j.id, epoch, crashed("boom"))
            .await
            .unwrap();
    }
    assert!(matches!(
        s.admit(&spec_for("tess", "brittle")).await.unwrap(),
        Admission::BreakerOpen { .. }
    ));
    assert_eq!(s.fleet_gauges().await.unwrap().breaker_openings, 1);
    sleep_ms(320).await;
    let trial = spec_for("tess", "brittle");
    assert!(matches!(
        s.admit(&trial).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let epoch = claim_for(&s, "n1", &trial.id, 30_000).await;
    let failed = RunEnd {
        error: Some("runner cannot start: replay file x.csv: no candle rows".into()),
        flattened_positions: None,
        ..end(JobStatus::Failed)
    };
    assert!(
        s.finish(&NodeId::new("n1"), &trial.id, epoch, failed)
            .await
            .unwrap()
    );
    let next = s.admit(&spec_for("tess", "brittle")).await.unwrap();
    assert!(
        matches!(next, Admission::Admitted { .. }),
        "the failed trial decided nothing against the strategy: {next:?}"
    );
}

/// A runner's lease is its node's: a heartbeat that reports no runner at all keeps every one of
/// them alive, and when the node falls silent they lapse together.
async fn a_nodes_heartbeat_keeps_its_runners_without_reporting_them<S: FleetStore>(s: S) {
    let (a, b) = (spec("lea"), spec("lea2"));
    s.admit(&a).await.unwrap();
    s.admit(&b).await.unwrap();
    let quiet = NodeInfo {
        runners: 2,
        ..node("quiet")
    };
    claim_for(&s, "quiet", &a.id, 40).await;
    claim_for(&s, "quiet", &b.id, 40).await;
    for _ in 0..5 {
        sleep_ms(20).await;
        let refused = s
            .renew(&quiet, &[], Duration::from_millis(40))
            .await
            .unwrap();
        assert!(refused.is_empty());
    }
    assert_eq!(
        sweep(&s).await,
        SweepReport::default(),
        "both alive after 100 ms"
    );
    let rec = s.job(&a.id).await.unwrap().unwrap();
    assert!(
        rec.last_heartbeat_at > rec.started_at,
        "its last heartbeat is its node's: {rec:?}"
    );
    sleep_ms(60).await;
    assert_eq!(
        sweep(&s).await,
        SweepReport {
            crashed: 2,
            restarting: 2,
            failed: 0
        },
        "silent together, lapsed together"
    );
}

/// A heartbeat with more changed reports than one script call takes goes out in several calls
/// (bounded by runners and by bytes, so no call holds Redis long); every report is stored, and
/// a stale runner among them is refused alone.
async fn a_heartbeat_larger_than_one_call_stores_every_report<S: FleetStore>(s: S) {
    const RUNNERS: usize = 450;
    const STALE: usize = 301;
    let specs: Vec<JobSpec> = (0..RUNNERS).map(|i| spec(&format!("wide{i}"))).collect();
    let mut epochs = Vec::new();
    for sp in &specs {
        s.admit(sp).await.unwrap();
        epochs.push(claim_one(&s, "wide", &sp.id).await);
    }
    // 450 saved states of 1 KiB each: more than one call's runners and bytes.
    let state = SavedState::of(&serde_json::json!({ "pad": "x".repeat(1_024) })).unwrap();
    let beats: Vec<RunnerBeat> = specs
        .iter()
        .zip(&epochs)
        .enumerate()
        .map(|(i, (sp, &epoch))| RunnerBeat {
            job_id: sp.id.clone(),
            epoch: if i == STALE { epoch + 1 } else { epoch },
            positions: Some(vec![]),
            stats: Some(Stats {
                total_trades: i as u64,
                ..Stats::default()
            }),
            account: Some(state.clone()),
        })
        .collect();
    let wide = NodeInfo {
        capacity: 500,
        runners: RUNNERS as u32,
        ..node("wide")
    };
    let refused = s.renew(&wide, &beats, LEASE).await.unwrap();
    assert_eq!(refused, vec![specs[STALE].id.clone()]);
    for (i, sp) in specs.iter().enumerate() {
        let rec = s.job(&sp.id).await.unwrap().unwrap();
        let expected = if i == STALE { 0 } else { i as u64 };
        assert_eq!(rec.stats.total_trades, expected, "runner {i}");
    }
    // The last runner's saved state went in the last call: a hand-back keeps it for the next
    // run.
    let last = specs.last().unwrap();
    assert!(
        s.hand_back(
            &NodeId::new("wide"),
            &last.id,
            *epochs.last().unwrap(),
            None
        )
        .await
        .unwrap()
    );
    match s
        .claim(&NodeId::new("next"), std::slice::from_ref(&last.id), LEASE)
        .await
        .unwrap()
        .remove(0)
    {
        ClaimOutcome::Claimed(lease) => assert_eq!(lease.account, Some(state)),
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// A node whose lease lapsed cannot revive it, not even by claiming: the sweep may have given
/// its runners to another node already. It is refused whole until it comes back under a new id.
async fn a_lapsed_node_cannot_revive_its_lease<S: FleetStore>(s: S) {
    let (a, b) = (spec("lyn"), spec("lyn2"));
    s.admit(&a).await.unwrap();
    s.admit(&b).await.unwrap();
    claim_for(&s, "late", &a.id, 40).await;
    sleep_ms(60).await;
    assert!(matches!(
        s.claim(&NodeId::new("late"), std::slice::from_ref(&b.id), LEASE)
            .await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        s.renew(&node("late"), &[], LEASE).await,
        Err(StoreError::Fenced)
    ));
    assert_eq!(
        s.job(&b.id).await.unwrap().unwrap().status,
        JobStatus::Queued,
        "the refused claim took nothing"
    );
    assert_eq!(sweep(&s).await.crashed, 1);
    assert_eq!(claim_one(&s, "fresh", &b.id).await, 1, "another node may");
}

/// Many runners of one strategy crash at the same moment: every failure is counted once, in
/// some order, as if one at a time. (The Redis store decides in Rust between two scripts; the
/// decisions that find the breaker changed are made again on the fresh state.) With 3 failures
/// to open: the first two restart, the third opens the breaker, the rest fail on it.
async fn simultaneous_crashes_of_one_strategy_are_each_counted_once<S: FleetStore>(s: S) {
    let user = UserId::new("herd");
    s.subscribe(&user, Tier::Enterprise, 1).await.unwrap();
    let mut runs = Vec::new();
    for _ in 0..8 {
        let j = spec_for("herd", "stampede");
        s.admit(&j).await.unwrap();
        let epoch = claim_for(&s, "n1", &j.id, 30_000).await;
        runs.push((j.id, epoch));
    }
    let node = NodeId::new("n1");
    let finishes = runs
        .iter()
        .map(|(id, epoch)| s.finish(&node, id, *epoch, crashed("same bug")));
    for accepted in futures::future::join_all(finishes).await {
        assert!(accepted.unwrap(), "every crash report is accepted");
    }
    let mut statuses = Vec::new();
    for (id, _) in &runs {
        let r = s.job(id).await.unwrap().unwrap();
        let events = s.job_events(id).await.unwrap();
        let crashes = events.iter().filter(|e| e.kind == "crashed").count();
        assert_eq!(crashes, 1, "{id}: one crash recorded: {events:?}");
        statuses.push(r.status);
    }
    let restarting = statuses
        .iter()
        .filter(|st| **st == JobStatus::Crashed)
        .count();
    let failed = statuses
        .iter()
        .filter(|st| **st == JobStatus::Failed)
        .count();
    assert_eq!((restarting, failed), (2, 6), "{statuses:?}");
    assert_eq!(s.fleet_gauges().await.unwrap().breaker_openings, 1);
    assert!(matches!(
        s.admit(&spec_for("herd", "stampede")).await.unwrap(),
        Admission::BreakerOpen { .. }
    ));
}

/// The fleet's event stream read after an id (what `GET /v1/events` serves): in order, from
/// exactly after the id, and a read that waits returns as soon as an event comes.
async fn the_event_stream_is_read_after_an_id_and_waits_for_the_next<S: FleetStore>(s: S) {
    assert_eq!(s.last_event_id().await.unwrap(), EventId::ZERO);
    assert!(
        s.events_after(&EventId::ZERO, 10, None)
            .await
            .unwrap()
            .is_empty()
    );
    // A few milliseconds apart: a sharded store orders the events of different shards by the
    // millisecond they were appended in (within one millisecond, by shard), one store exactly.
    for user in ["ev1", "ev2", "ev3"] {
        s.admit(&spec(user)).await.unwrap();
        sleep_ms(3).await;
    }
    let all = s.events_after(&EventId::ZERO, 10, None).await.unwrap();
    let users: Vec<&str> = all.iter().map(|e| e.user.as_str()).collect();
    assert_eq!(users, ["ev1", "ev2", "ev3"]);
    assert!(all.iter().all(|e| e.kind == "admitted" && e.at > 0));
    let ids: Vec<EventId> = all.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(s.last_event_id().await.unwrap(), ids[2]);
    // The same events as each job's own history.
    assert_eq!(
        s.job_events(&all[1].job).await.unwrap(),
        vec![all[1].clone()]
    );
    let second = s.events_after(&ids[0], 1, None).await.unwrap();
    assert_eq!(second, vec![all[1].clone()]);
    assert!(s.events_after(&ids[2], 10, None).await.unwrap().is_empty());

    // A waiting read returns the next event when it comes, not at the end of its wait.
    let writer = s.clone();
    let admit_later = tokio::spawn(async move {
        sleep_ms(50).await;
        writer.admit(&spec("ev4")).await.unwrap();
    });
    let next = s
        .events_after(&ids[2], 10, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    admit_later.await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].user.as_str(), "ev4");
    let last: EventId = next[0].id.parse().unwrap();
    assert!(
        s.events_after(&last, 10, Some(Duration::from_millis(50)))
            .await
            .unwrap()
            .is_empty()
    );
}

/// A batch of admissions: each decided on its own, in order, as one by one.
async fn a_batch_of_admissions_decides_each_on_its_own_in_order<S: FleetStore>(s: S) {
    let batch = [spec("bea"), spec("bea"), spec("cal"), spec("bea")];
    let got = s.admit_many(&batch).await.unwrap();
    let kinds: Vec<&str> = got
        .iter()
        .map(|a| match a {
            Admission::Admitted { .. } => "admitted",
            Admission::LimitReached { .. } => "limit",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["admitted", "limit", "admitted", "limit"]);
    assert_eq!(s.active_count(&UserId::new("bea")).await.unwrap(), 1);
    assert!(s.job(&batch[0].id).await.unwrap().is_some());
    assert!(
        s.job(&batch[1].id).await.unwrap().is_none(),
        "a refused one left nothing"
    );
    assert!(s.admit_many(&[]).await.unwrap().is_empty());

    // Larger than one script call (the Redis store sends 64 per call): 50 free users, three
    // starts each, interleaved so that a user's starts fall in different calls.
    let big: Vec<JobSpec> = (0..150).map(|i| spec(&format!("big-{}", i % 50))).collect();
    let got = s.admit_many(&big).await.unwrap();
    assert_eq!(got.len(), 150);
    for (i, a) in got.iter().enumerate() {
        if i < 50 {
            assert!(
                matches!(a, Admission::Admitted { current: 1, .. }),
                "{i}: {a:?}"
            );
        } else {
            assert!(
                matches!(a, Admission::LimitReached { current: 1, .. }),
                "{i}: {a:?}"
            );
        }
    }
}

/// Single admissions in flight at once (the Redis store gathers them into shared script calls,
/// `store::coalesce`) are each decided on their own and answered on their own: one user's
/// limit holds across them, other users are not refused for it, and one spec sent twice is
/// admitted once.
async fn single_admissions_made_at_once_are_each_decided_on_their_own<S: FleetStore>(s: S) {
    let crowd: Vec<JobSpec> = (0..30).map(|_| spec("crowd")).collect();
    let many: Vec<JobSpec> = (0..40).map(|i| spec(&format!("many-{i}"))).collect();
    let twice = spec("twice");
    // Room for two, so that the second copy meets the id check, not the limit.
    s.subscribe(&UserId::new("twice"), Tier::Basic, 30)
        .await
        .unwrap();
    let all: Vec<&JobSpec> = crowd.iter().chain(&many).chain([&twice, &twice]).collect();
    let got = futures::future::join_all(all.iter().map(|sp| s.admit(sp))).await;

    let admitted = |a: &Result<Admission, StoreError>| matches!(a, Ok(Admission::Admitted { .. }));
    for a in &got[..30] {
        assert!(
            matches!(
                a,
                Ok(Admission::Admitted { current: 1, .. }
                    | Admission::LimitReached {
                        limit: 1,
                        current: 1,
                        ..
                    })
            ),
            "{a:?}"
        );
    }
    assert_eq!(got[..30].iter().filter(|a| admitted(a)).count(), 1);
    for (sp, a) in crowd.iter().zip(&got[..30]) {
        assert_eq!(
            s.job(&sp.id).await.unwrap().is_some(),
            admitted(a),
            "only the admitted start left a record"
        );
    }
    assert_eq!(s.active_count(&UserId::new("crowd")).await.unwrap(), 1);
    for a in &got[30..70] {
        assert!(
            matches!(a, Ok(Admission::Admitted { current: 1, .. })),
            "{a:?}"
        );
    }
    let twice_got = &got[70..];
    assert_eq!(
        twice_got.iter().filter(|a| admitted(a)).count(),
        1,
        "{twice_got:?}"
    );
    assert!(
        twice_got
            .iter()
            .any(|a| matches!(a, Err(StoreError::Conflict { .. }))),
        "{twice_got:?}"
    );
    assert_eq!(s.active_count(&UserId::new("twice")).await.unwrap(), 1);
}

/// The fleet's load is sampled at most once per interval whichever process asks, the samples
/// are kept capped and read oldest first, and the runners holding a slot list newest first.
async fn the_load_is_sampled_once_per_interval_and_the_active_runners_listed<S: FleetStore>(s: S) {
    let every = Duration::from_millis(400);
    let a = spec("hist-a");
    s.admit(&a).await.unwrap();
    assert!(s.sample_history(every, 2).await.unwrap());
    assert!(
        !s.sample_history(every, 2).await.unwrap(),
        "a second sample within the interval is not taken"
    );
    sleep_ms(5).await;
    let b = spec("hist-b");
    s.admit(&b).await.unwrap();
    for _ in 0..2 {
        sleep_ms(450).await;
        assert!(s.sample_history(every, 2).await.unwrap());
    }
    let h = s.history().await.unwrap();
    assert_eq!(h.len(), 2, "only the newest samples are kept: {h:?}");
    assert!(h[0].at < h[1].at, "oldest first: {h:?}");
    assert_eq!((h[1].queued, h[1].active, h[1].running), (2, 2, 0));
    let listed: Vec<JobId> = s
        .active_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(listed, vec![b.id.clone(), a.id.clone()], "newest first");
    assert_eq!(s.active_jobs(1).await.unwrap()[0].job_id, b.id);
    s.request_stop(&b.id, StopMode::Hold).await.unwrap();
    let listed = s.active_jobs(10).await.unwrap();
    assert_eq!(listed.len(), 1, "an ended runner holds no slot");
}

/// A runner's PnL history gets a point for each accepted report with stats and one at the end
/// of its run; a refused (stale) report adds none, and a report without stats neither.
async fn a_runners_pnl_history_follows_its_accepted_stats<S: FleetStore>(s: S) {
    let a = spec("pnl-user");
    s.admit(&a).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    let stats = |pnl: &str| Stats {
        total_pnl: pnl.parse().unwrap(),
        ..Default::default()
    };
    let beat = |epoch, stats: Option<Stats>| RunnerBeat {
        job_id: a.id.clone(),
        epoch,
        positions: None,
        stats,
        account: None,
    };
    for (epoch, st) in [
        (epoch, Some(stats("-1.25"))),
        (epoch, None),
        (epoch + 7, Some(stats("99"))),
        (epoch, Some(stats("0.00000072"))),
        // Delivered twice, or stats whose total did not move (fees): no new point.
        (epoch, Some(stats("0.00000072"))),
    ] {
        s.renew(&node("n1"), &[beat(epoch, st)], LEASE)
            .await
            .unwrap();
        sleep_ms(2).await;
    }
    let end = RunEnd {
        stats: stats("3.5"),
        ..end(JobStatus::Stopped)
    };
    assert!(
        s.finish(&NodeId::new("n1"), &a.id, epoch, end)
            .await
            .unwrap()
    );
    let points = s.pnl_history(&a.id).await.unwrap();
    let pnl: Vec<String> = points.iter().map(|p| p.total_pnl.to_string()).collect();
    assert_eq!(pnl, ["-1.25", "0.00000072", "3.5"], "{points:?}");
    assert!(
        points.windows(2).all(|w| w[0].at <= w[1].at),
        "oldest first"
    );
    assert!(s.pnl_history(&JobId::generate()).await.unwrap().is_empty());
}

macro_rules! store_conformance {
    ($($module:ident => $backend:ident),*) => {$(
        mod $module {
            use super::*;
            store_conformance!(@tests $backend:
                admission_holds_the_tier_limit,
                expired_subscription_falls_back_to_free,
                claims_bump_the_epoch_and_drop_what_must_not_run,
                heartbeats_and_ends_are_fenced_by_epoch,
                stopping_a_queued_job_needs_no_node,
                stopping_a_running_job_sends_its_node_a_command,
                a_nodes_commands_expire_with_the_node,
                handed_back_jobs_can_be_claimed_again,
                a_silent_runner_is_swept_restarted_with_backoff_then_failed,
                a_crash_reported_by_the_node_goes_through_the_same_policy,
                a_runner_whose_node_died_during_its_stop_is_stopped_not_restarted,
                the_breaker_opens_refuses_starts_and_a_trial_closes_it,
                a_user_above_their_tier_after_a_downgrade_is_not_restarted,
                node_losses_do_not_count_toward_the_breaker,
                unconfirmed_enqueues_are_published_again,
                a_runners_history_lists_every_step_with_its_epoch,
                every_claim_of_a_runner_stays_in_its_history_in_order,
                the_admin_trail_is_capped_and_read_newest_first,
                a_trial_that_fails_on_its_own_does_not_keep_the_breaker_half_open,
                simultaneous_crashes_of_one_strategy_are_each_counted_once,
                a_nodes_heartbeat_keeps_its_runners_without_reporting_them,
                a_heartbeat_larger_than_one_call_stores_every_report,
                a_lapsed_node_cannot_revive_its_lease,
                the_event_stream_is_read_after_an_id_and_waits_for_the_next,
                a_batch_of_admissions_decides_each_on_its_own_in_order,
                single_admissions_made_at_once_are_each_decided_on_their_own,
                a_failed_publish_is_not_undone_and_the_sweep_publishes_it_again,
                the_load_is_sampled_once_per_interval_and_the_active_runners_listed,
                a_runners_pnl_history_follows_its_accepted_stats);
        }
    )*};
    (@tests $backend:ident: $($test:ident),*) => {$(
        #[tokio::test]
        async fn $test() {
            let h = super::$backend::new().await;
            super::$test(h.store()).await;
            h.teardown().await;
        }
    )*};
}

store_conformance!(
    memory => Memory,
    redis => Redis,
    redis_eval => RedisEval,
    redis_cluster => RedisCluster,
    redis_sharded => RedisSharded
);

/// The store's scripts are a Redis Function library, loaded by the first call that finds it
/// missing: after the server lost it (a restart without persistence, `FUNCTION FLUSH`), a
/// pipelined batch loads it again and runs every admission exactly once.
#[tokio::test]
async fn the_store_loads_its_functions_again_after_the_server_lost_them() {
    use runfleet_shared::store::{JobStore, Subscriptions};
    let server = support::PrivateServer::start(&[]).await;
    let pools = support::redis_pools_at(&server.url).await;
    let store = RedisStore::new(pools.clone(), support::unique_keys(), policy());
    let mut c = pools.commands.get().await.unwrap();
    let libraries = |c: &mut runfleet_shared::redis_pool::CommandConnection| {
        let mut c = c.clone();
        async move {
            let list: ::redis::Value = ::redis::cmd("FUNCTION")
                .arg("LIST")
                .query_async(&mut *c)
                .await
                .unwrap();
            format!("{list:?}").matches("library_name").count()
        }
    };
    assert_eq!(libraries(&mut c).await, 0);
    assert!(matches!(
        store.admit(&spec("fl-a")).await.unwrap(),
        Admission::Admitted { .. }
    ));
    assert_eq!(libraries(&mut c).await, 1, "the first call loaded it");
    let _: () = ::redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async(&mut *c)
        .await
        .unwrap();
    let batch = [spec("fl-b"), spec("fl-c"), spec("fl-b")];
    let got = store.admit_many(&batch).await.unwrap();
    assert!(
        matches!(got[0], Admission::Admitted { current: 1, .. }),
        "{got:?}"
    );
    assert!(
        matches!(got[1], Admission::Admitted { current: 1, .. }),
        "{got:?}"
    );
    assert!(
        matches!(got[2], Admission::LimitReached { current: 1, .. }),
        "{got:?}"
    );
    assert_eq!(libraries(&mut c).await, 1);
    for (user, n) in [("fl-a", 1), ("fl-b", 1), ("fl-c", 1)] {
        assert_eq!(
            store.active_count(&UserId::new(user)).await.unwrap(),
            n,
            "{user}"
        );
    }
    assert!(store.job(&batch[2].id).await.unwrap().is_none());
}

/// Single admissions in flight together leave in shared calls of the batch function (one
/// call per 64 at most, while a call is free none waits), and when Redis is gone every one of
/// them is answered with the failure: none hangs, none is answered for another.
#[tokio::test]
async fn single_admissions_in_flight_together_share_script_calls() {
    use runfleet_shared::store::{JobStore, Subscriptions};
    let server = support::PrivateServer::start(&[]).await;
    let pools = support::redis_pools_at(&server.url).await;
    let store = RedisStore::new(pools.clone(), support::unique_keys(), policy());
    // The library is loaded by the first call; the count starts after it.
    assert!(matches!(
        store.admit(&spec("warm")).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let mut c = pools.commands.get().await.unwrap();
    let _: () = ::redis::cmd("CONFIG")
        .arg(&["RESETSTAT"])
        .query_async(&mut *c)
        .await
        .unwrap();
    let specs: Vec<JobSpec> = (0..200).map(|i| spec(&format!("together-{i}"))).collect();
    let got = futures::future::join_all(specs.iter().map(|sp| store.admit(sp))).await;
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut *c)
        .await
        .unwrap();
    let calls: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_fcall:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no FCALL in the command stats: {stats}"));
    println!("200 single admissions in flight together: {calls} script calls");
    // At most 64 per call, so 4 at the least; how many more depends on when the runtime lets
    // the gathering task run between the callers, but never one call per admission.
    assert!(
        (4..=25).contains(&calls),
        "{calls} calls for 200 admissions"
    );
    for (sp, a) in specs.iter().zip(&got) {
        assert!(
            matches!(a, Ok(Admission::Admitted { current: 1, .. })),
            "{a:?}"
        );
        assert_eq!(
            store.active_count(&sp.user_id).await.unwrap(),
            1,
            "{} admitted once",
            sp.user_id
        );
    }

    drop(c);
    drop(server);
    let late: Vec<JobSpec> = (0..20).map(|i| spec(&format!("late-{i}"))).collect();
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(late.iter().map(|sp| store.admit(sp))),
    )
    .await
    .expect("every admission is answered once Redis is gone");
    for a in &got {
        assert!(matches!(a, Err(StoreError::Unavailable(_))), "{a:?}");
    }
}

/// An admission that fails in Redis (a key of another type where its user's should be: data
/// runfleet did not write) fails alone: the other users' starts gathered into the same call are
/// admitted as if it were not there, and it writes nothing.
#[tokio::test]
async fn an_admission_that_fails_in_redis_fails_alone_in_its_call() {
    use runfleet_shared::store::{JobStore, Subscriptions};
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    let store = RedisStore::new(pools.clone(), keys.clone(), policy());
    let mut c = pools.commands.get().await.unwrap();
    let _: () = ::redis::cmd("SET")
        .arg(keys.user_active(&UserId::new("broken")))
        .arg("not a set")
        .query_async(&mut *c)
        .await
        .unwrap();
    let batch = [spec("fine-1"), spec("broken"), spec("fine-2")];
    let got = futures::future::join_all(batch.iter().map(|sp| store.admit(sp))).await;
    assert!(
        matches!(got[0], Ok(Admission::Admitted { current: 1, .. })),
        "{got:?}"
    );
    assert!(
        matches!(&got[1], Err(StoreError::Data(e)) if e.contains("WRONGTYPE")),
        "{got:?}"
    );
    assert!(
        matches!(got[2], Ok(Admission::Admitted { current: 1, .. })),
        "{got:?}"
    );
    assert!(store.job(&batch[1].id).await.unwrap().is_none());
    for user in ["fine-1", "fine-2"] {
        assert_eq!(store.active_count(&UserId::new(user)).await.unwrap(), 1);
    }
    support::cleanup(&pools, &keys).await;
}

/// A Redis user that may call functions but not load them (an ACL without `FUNCTION`, as some
/// managed services set): the store runs its scripts with EVAL instead, whether its first call
/// is one admission or a pipelined batch.
#[tokio::test]
async fn a_store_that_may_not_load_functions_runs_its_scripts_with_eval() {
    use runfleet_shared::store::{JobStore, Subscriptions};
    let server = support::PrivateServer::start(&[]).await;
    let pools = support::redis_pools_at(&server.url).await;
    let mut c = pools.commands.get().await.unwrap();
    let _: () = ::redis::cmd("ACL")
        .arg(&["SETUSER", "default", "-function"])
        .query_async(&mut *c)
        .await
        .unwrap();
    let one = RedisStore::new(pools.clone(), support::unique_keys(), policy());
    assert!(matches!(
        one.admit(&spec("acl-a")).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let many = RedisStore::new(pools.clone(), support::unique_keys(), policy());
    let got = many
        .admit_many(&[spec("acl-b"), spec("acl-b"), spec("acl-c")])
        .await
        .unwrap();
    assert!(
        matches!(got[0], Admission::Admitted { current: 1, .. }),
        "{got:?}"
    );
    assert!(
        matches!(got[1], Admission::LimitReached { current: 1, .. }),
        "{got:?}"
    );
    assert!(
        matches!(got[2], Admission::Admitted { current: 1, .. }),
        "{got:?}"
    );
    assert_eq!(many.active_count(&UserId::new("acl-b")).await.unwrap(), 1);
    let stats: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut *c)
        .await
        .unwrap();
    assert!(stats.contains("cmdstat_evalsha"), "{stats}");
}

/// The key names the Lua prelude builds are the key schema's, for plain ids and for ids that
/// contain the separator and the escape character.
#[tokio::test]
async fn lua_key_names_match_the_key_schema() {
    let pools = support::redis_pools().await;
    let keys = Keys::new("rfkeys");
    for (j, u, n, st) in [
        ("j1", "u1", "n1", "s1"),
        ("j:1%", "eve:x", "n:{1}", "s:failures"),
        ("%3A", "eve", "n%", "x:s"),
    ] {
        let (job, user, node) = (JobId::new(j), UserId::new(u), NodeId::new(n));
        let strategy = StrategyId::new(st);
        let body = "local j, u, n, s = A(1), A(2), A(3), A(4)
                    return {K.job(j), K.user_jobs(u), K.user_active(u),
                    K.subscription(u), K.node(n), K.node_jobs(n), K.commands(n), K.node_fenced(n), K.node_leases, K.nodes,
                    K.active, K.queued, K.apikey(j), K.user_keys(u), K.breaker(u, s),
                    K.pending, K.delayed, K.failed, K.events, K.job_events(j), K.counters}";
        let script = ::redis::Script::new(&format!(
            "{}\n{body}",
            runfleet_shared::store::SCRIPT_PRELUDE
        ));
        let mut inv = script.prepare_invoke();
        for arg in ScriptContext::new(&keys, &FleetPolicy::default(), None).args() {
            inv.arg(arg);
        }
        inv.arg(j).arg(u).arg(n).arg(st);
        let got: Vec<String> = inv
            .invoke_async(&mut *pools.commands.get().await.unwrap())
            .await
            .unwrap();
        let want = vec![
            keys.job(&job),
            keys.user_jobs(&user),
            keys.user_active(&user),
            keys.subscription(&user),
            keys.node(&node),
            keys.node_jobs(&node),
            keys.commands(&node),
            keys.node_fenced(&node),
            keys.node_leases(),
            keys.nodes(),
            keys.active(),
            keys.queued(),
            keys.api_key(j),
            keys.user_keys(&user),
            keys.breaker(&user, &strategy),
            keys.pending(),
            keys.delayed(),
            keys.failed(),
            keys.events(),
            keys.job_events(&job),
            keys.counters(),
        ];
        assert_eq!(got, want, "ids {j} {u} {n} {st}");
    }
}

/// Fleet-wide backpressure holds in both stores: the queue never grows past `max_queued`, and
/// no more than `max_runners` jobs hold slots.
async fn backpressure_is_enforced_at_admission<S: FleetStore>(s: S) {
    for user in ["p1", "p2"] {
        assert!(matches!(
            s.admit(&spec(user)).await.unwrap(),
            Admission::Admitted { .. }
        ));
    }
    let third = spec("p3");
    assert_eq!(
        s.admit(&third).await.unwrap(),
        Admission::QueueFull {
            retry_after_ms: 4_000
        }
    );
    assert!(s.job(&third.id).await.unwrap().is_none());
    let first = s.user_jobs(&UserId::new("p1")).await.unwrap()[0]
        .job_id
        .clone();
    claim_one(&s, "n1", &first).await;
    assert!(
        matches!(s.admit(&third).await.unwrap(), Admission::Admitted { .. }),
        "a claim frees a queue place"
    );
    assert_eq!(
        s.admit(&spec("p4")).await.unwrap(),
        Admission::FleetFull {
            retry_after_ms: 4_000
        }
    );
    assert_eq!(
        s.request_stop(&third.id, StopMode::Hold).await.unwrap(),
        StopRequest::Stopped
    );
    assert!(
        matches!(
            s.admit(&spec("p4")).await.unwrap(),
            Admission::Admitted { .. }
        ),
        "a stop frees a fleet slot"
    );
}

fn tight() -> FleetPolicy {
    FleetPolicy {
        limits: runfleet_shared::config::LimitSettings {
            max_runners: 3,
            max_queued: 2,
            retry_after_ms: 4_000,
            ..Default::default()
        },
        ..policy()
    }
}

#[tokio::test]
async fn backpressure_memory() {
    backpressure_is_enforced_at_admission(MemoryStore::new(tight())).await;
}

#[tokio::test]
async fn backpressure_redis() {
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    backpressure_is_enforced_at_admission(RedisStore::new(pools.clone(), keys.clone(), tight()))
        .await;
    support::cleanup(&pools, &keys).await;
}

async fn api_keys_store_only_hashes_and_can_be_revoked<S: FleetStore>(s: S) {
    let user = UserId::new("kay");
    let info = s.add_key(&user, "k1", "hash-1").await.unwrap();
    assert_eq!(info.key_id, "k1");
    assert!(
        matches!(
            s.add_key(&UserId::new("other"), "k1", "hash-2").await,
            Err(StoreError::Conflict { what: "api key id", ref id }) if id == "k1"
        ),
        "key ids are unique"
    );
    assert_eq!(
        s.key("k1").await.unwrap(),
        Some((user.clone(), "hash-1".to_owned()))
    );
    assert_eq!(s.keys(&user).await.unwrap(), vec![info]);
    assert!(
        !s.revoke_key(&UserId::new("other"), "k1").await.unwrap(),
        "only the owner's key is revoked"
    );
    assert!(s.revoke_key(&user, "k1").await.unwrap());
    assert_eq!(s.key("k1").await.unwrap(), None);
    assert!(s.keys(&user).await.unwrap().is_empty());
}

#[tokio::test]
async fn api_keys_memory() {
    api_keys_store_only_hashes_and_can_be_revoked(MemoryStore::new(policy())).await;
}

#[tokio::test]
async fn api_keys_redis() {
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    api_keys_store_only_hashes_and_can_be_revoked(RedisStore::new(
        pools.clone(),
        keys.clone(),
        policy(),
    ))
    .await;
    support::cleanup(&pools, &keys).await;
}

/// An ended job's record is kept for the retention, then forgotten, as its history is
/// `events.max_age_ms` after its last event; a job that still runs is kept however old.
async fn ended_jobs_are_forgotten_after_the_retention<S: FleetStore>(s: S) {
    // Two users: the free tier holds one runner each.
    let (ended, running) = (spec("old"), spec("old-running"));
    s.admit(&ended).await.unwrap();
    s.admit(&running).await.unwrap();
    claim_one(&s, "n1", &running.id).await;
    assert_eq!(
        s.request_stop(&ended.id, StopMode::Hold).await.unwrap(),
        StopRequest::Stopped
    );
    assert!(s.job(&ended.id).await.unwrap().is_some());
    assert!(!s.job_events(&ended.id).await.unwrap().is_empty());
    assert_eq!(s.user_jobs(&ended.user_id).await.unwrap().len(), 1);
    // Past the retention (1 s; Redis counts it in seconds) and the history's age (1.5 s).
    sleep_ms(1_700).await;
    assert!(
        s.job(&ended.id).await.unwrap().is_none(),
        "record forgotten"
    );
    assert!(s.spec(&ended.id).await.unwrap().is_none());
    assert!(
        s.job_events(&ended.id).await.unwrap().is_empty(),
        "history forgotten"
    );
    assert_eq!(
        s.request_stop(&ended.id, StopMode::Hold).await.unwrap(),
        StopRequest::NotFound
    );
    assert!(s.user_jobs(&ended.user_id).await.unwrap().is_empty());
    let kept: Vec<JobId> = s
        .user_jobs(&running.user_id)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.job_id)
        .collect();
    assert_eq!(kept, vec![running.id.clone()], "a running job is kept");
}

fn short_retention() -> FleetPolicy {
    FleetPolicy {
        retention: Duration::from_secs(1),
        events: runfleet_shared::config::EventSettings {
            max_age_ms: 1_500,
            ..policy().events
        },
        ..policy()
    }
}

#[tokio::test]
async fn retention_memory() {
    ended_jobs_are_forgotten_after_the_retention(MemoryStore::new(short_retention())).await;
}

#[tokio::test]
async fn retention_redis() {
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    ended_jobs_are_forgotten_after_the_retention(RedisStore::new(
        pools.clone(),
        keys.clone(),
        short_retention(),
    ))
    .await;
    support::cleanup(&pools, &keys).await;
}

/// A policy whose event stream keeps about 10 events.
fn short_stream() -> FleetPolicy {
    FleetPolicy {
        events: runfleet_shared::config::EventSettings {
            max_len: 10,
            ..Default::default()
        },
        limits: runfleet_shared::config::LimitSettings {
            max_runners: 100_000,
            max_queued: 100_000,
            ..Default::default()
        },
        ..policy()
    }
}

/// What the stream's caps trimmed is known, so a reader resuming from before it can be told
/// (`GET /v1/events` starts with a `gap` event). Redis trims `MAXLEN ~` by whole nodes of
/// 100 entries, so 300 events are appended.
async fn the_stream_reports_what_its_caps_trimmed<S: FleetStore>(s: S) {
    assert!(!s.events_lost_after(&EventId::ZERO).await.unwrap());
    s.admit(&spec("tr0")).await.unwrap();
    let first = s.last_event_id().await.unwrap();
    // Nothing trimmed yet: resuming from anywhere loses nothing.
    assert!(!s.events_lost_after(&EventId::ZERO).await.unwrap());
    for i in 1..300 {
        s.admit(&spec(&format!("tr{i}"))).await.unwrap();
    }
    let kept = s.events_after(&EventId::ZERO, 1000, None).await.unwrap();
    assert!(kept.len() < 300, "trimmed to about 10: {}", kept.len());
    assert!(
        s.events_lost_after(&first).await.unwrap(),
        "the first event's successors"
    );
    assert!(s.events_lost_after(&EventId::ZERO).await.unwrap());
    let oldest_kept: EventId = kept[0].id.parse().unwrap();
    assert!(!s.events_lost_after(&oldest_kept).await.unwrap());
    let newest = s.last_event_id().await.unwrap();
    assert!(!s.events_lost_after(&newest).await.unwrap());
}

#[tokio::test]
async fn trimmed_events_memory() {
    the_stream_reports_what_its_caps_trimmed(MemoryStore::new(short_stream())).await;
}

#[tokio::test]
async fn trimmed_events_redis() {
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    the_stream_reports_what_its_caps_trimmed(RedisStore::new(
        pools.clone(),
        keys.clone(),
        short_stream(),
    ))
    .await;
    support::cleanup(&pools, &keys).await;
}

/// The Redis store that queues jobs itself takes them from its ready list and claims them in one
/// step: oldest first, at most `max`, a stopped or already-running id dropped (a duplicate
/// push), nothing taken by a fenced node, the fair share of two claiming nodes; the queue's
/// processing list and the ack are not involved. Without a queue of its own it takes nothing.
#[tokio::test]
async fn a_claim_from_the_stores_own_queue_takes_and_records_in_one_step() {
    use runfleet_shared::store::{CommandBus, JobStore, LeaseStore};
    let pools = support::redis_pools().await;
    let keys = support::unique_keys();
    let ready = keys.ready("jobs");
    let plain = RedisStore::new(pools.clone(), keys.clone(), policy());
    assert_eq!(
        plain
            .claim_queued(&NodeId::new("n1"), 5, LEASE)
            .await
            .unwrap(),
        None,
        "a store that queues nothing itself has no queue to take from"
    );
    let s = plain.queuing_into("jobs");
    let mem = MemoryStore::new(policy());
    assert_eq!(
        mem.claim_queued(&NodeId::new("n1"), 5, LEASE)
            .await
            .unwrap(),
        None
    );
    let mut conn = pools.commands.get().await.unwrap();
    async fn llen(pools: &runfleet_shared::redis_pool::RedisPools, key: String) -> u64 {
        let mut c = pools.commands.get().await.unwrap();
        ::redis::cmd("LLEN")
            .arg(key)
            .query_async(&mut *c)
            .await
            .unwrap()
    }

    let specs: Vec<JobSpec> = (0..5).map(|i| spec(&format!("taker{i}"))).collect();
    for sp in &specs {
        s.admit(sp).await.unwrap();
    }
    let n1 = NodeId::new("n1");
    let taken = s.claim_queued(&n1, 2, LEASE).await.unwrap().unwrap();
    assert!(!taken.capped, "one claiming node: its share is all");
    let ids: Vec<JobId> = taken
        .outcomes
        .iter()
        .map(|o| match o {
            ClaimOutcome::Claimed(l) => l.spec.id.clone(),
            other => panic!("expected claims, got {other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        [specs[0].id.clone(), specs[1].id.clone()],
        "oldest first"
    );
    for id in &ids {
        let rec = s.job(id).await.unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.epoch, rec.node_id),
            (JobStatus::Running, 1, Some(n1.clone()))
        );
    }
    assert_eq!(llen(&pools, ready.clone()).await, 3);
    assert_eq!(
        llen(&pools, keys.processing("jobs", &n1)).await,
        0,
        "nothing waits for an ack"
    );

    // A stopped job and a duplicate push of a running one are dropped, not run.
    s.request_stop(&specs[2].id, StopMode::Hold).await.unwrap();
    let () = ::redis::cmd("RPUSH")
        .arg(&ready)
        .arg(ids[0].as_str())
        .query_async(&mut *conn)
        .await
        .unwrap();
    // A second node claims from this queue now: n1's share of the 4 waiting is 2.
    let n2 = NodeId::new("n2");
    let () = ::redis::cmd("SADD")
        .arg(keys.claimers("jobs"))
        .arg(n2.as_str())
        .query_async(&mut *conn)
        .await
        .unwrap();
    let taken = s.claim_queued(&n1, 10, LEASE).await.unwrap().unwrap();
    assert!(taken.capped, "the share left jobs for n2");
    assert_eq!(taken.outcomes.len(), 2, "{:?}", taken.outcomes);
    assert!(
        taken
            .outcomes
            .iter()
            .all(|o| matches!(o, ClaimOutcome::Dropped { .. })),
        "{:?}",
        taken.outcomes
    );
    let taken = s.claim_queued(&n2, 10, LEASE).await.unwrap().unwrap();
    assert_eq!(taken.outcomes.len(), 1, "{:?}", taken.outcomes);
    assert!(matches!(&taken.outcomes[0], ClaimOutcome::Claimed(l) if l.spec.id == specs[3].id));

    // A node whose lease lapsed takes nothing: the job stays queued for another.
    let late = NodeId::new("late");
    let taken = s.claim_queued(&late, 1, Duration::from_millis(40)).await;
    assert!(
        matches!(&taken, Ok(Some(t)) if t.outcomes.len() == 1),
        "{taken:?}"
    );
    s.admit(&spec("after")).await.unwrap();
    sleep_ms(60).await;
    assert!(matches!(
        s.claim_queued(&late, 5, LEASE).await,
        Err(StoreError::Fenced)
    ));
    assert_eq!(
        llen(&pools, ready.clone()).await,
        1,
        "the fenced claim took nothing"
    );
    let taken = s.claim_queued(&n1, 5, LEASE).await.unwrap().unwrap();
    assert_eq!(taken.outcomes.len(), 1);
    let empty = s.claim_queued(&n1, 5, LEASE).await.unwrap().unwrap();
    assert!(empty.outcomes.is_empty() && !empty.capped);
    drop(conn);
    support::cleanup(&pools, &keys).await;
}

/// A sharded claim whose jobs span two shards, one of which fails: the caller will give every
/// delivery back, so the claim recorded in the shard that answered is handed back too, and
/// another node can claim the job (instead of its record saying it runs on a node that does
/// not run it). Shard 0 is the test Redis, shard 1 a server that is not there.
#[tokio::test]
async fn a_claim_across_shards_that_fails_in_one_hands_back_what_the_others_recorded() {
    use runfleet_shared::keys::Keys;
    use runfleet_shared::shard::shard_of;
    use runfleet_shared::store::{JobStore, LeaseStore};
    use runfleet_shared::wake::LazyWake;
    let live = support::redis_pools().await;
    let settings = RedisSettings {
        shards: 2,
        key_prefix: format!("rftest-{}", uuid::Uuid::new_v4().simple()),
        response_timeout_ms: 300,
        connect_timeout_ms: 300,
        ..RedisSettings::default()
    };
    let dead = runfleet_shared::redis_pool::RedisPools::new(&RedisSettings {
        url: "redis://127.0.0.1:1".into(),
        ..settings.clone()
    })
    .unwrap();
    let keys: Vec<Keys> = (0..2).map(|n| Keys::shard(&settings, n)).collect();
    let store = ShardedStore::new(
        vec![
            RedisStore::new(live.clone(), keys[0].clone(), policy()),
            RedisStore::new(dead, keys[1].clone(), policy()),
        ],
        LazyWake::new(
            Vec::new(),
            "unused".into(),
            keys.clone(),
            Duration::from_secs(1),
        ),
    );
    let in_shard = |n: usize| {
        (0..)
            .map(|i| format!("u{i}"))
            .find(|u| shard_of(u, 2) == n)
            .unwrap()
    };
    let mut job = spec(&in_shard(0));
    job.id = JobId::generate_in(Placement::of_user(job.user_id.as_str(), 2));
    assert!(matches!(
        store.admit(&job).await.unwrap(),
        Admission::Admitted { .. }
    ));
    let elsewhere = JobId::generate_in(Placement::of_user(&in_shard(1), 2));
    let failed = store
        .claim(&NodeId::new("n1"), &[job.id.clone(), elsewhere], LEASE)
        .await;
    assert!(
        matches!(failed, Err(StoreError::Unavailable(_))),
        "{failed:?}"
    );
    let record = store.job(&job.id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Queued, "handed back: {record:?}");
    assert!(matches!(
        store
            .claim(&NodeId::new("n2"), &[job.id.clone()], LEASE)
            .await
            .unwrap()[..],
        [ClaimOutcome::Claimed(_)]
    ));
    support::cleanup(&live, &keys[0]).await;
}
