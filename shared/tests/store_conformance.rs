//! One suite for every `FleetStore` backend: admission against tier limits, claims with
//! fencing epochs, fenced heartbeats and ends of runs, stops, subscriptions.

mod support;

use std::future::Future;
use std::time::Duration;

use runfleet::crypto::CredentialCipher;
use runfleet::ids::{BrokerId, JobId, NodeId, StrategyId, UserId};
use runfleet::job::{Credentials, JobSpec, JobStatus, StopMode, StrategyConfig};
use runfleet::store::{
    Admission, ClaimOutcome, FleetStore, MemoryStore, NodeCommand, NodeInfo, RedisStore, RunEnd,
    RunnerBeat, StopRequest,
};
use runfleet::tier::{Tier, TierLimits};

trait Harness: Sized {
    type Store: FleetStore;
    fn store(&self) -> Self::Store;
    fn teardown(self) -> impl Future<Output = ()>;
}

struct Memory(MemoryStore);
impl Memory {
    async fn new() -> Self {
        Memory(MemoryStore::new())
    }
}
impl Harness for Memory {
    type Store = MemoryStore;
    fn store(&self) -> MemoryStore {
        self.0.clone()
    }
    async fn teardown(self) {}
}

struct Redis(RedisStore, runfleet::redis_pool::RedisPools);
impl Redis {
    async fn new() -> Self {
        let pools = support::redis_pools().await;
        Redis(
            RedisStore::new(pools.clone(), support::unique_keys()),
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

const LEASE: Duration = Duration::from_secs(30);

fn spec(user: &str) -> JobSpec {
    let id = JobId::generate();
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

fn end(status: JobStatus) -> RunEnd {
    RunEnd {
        status,
        error: None,
        flattened_positions: Some(2),
        positions: vec![],
        stats: Default::default(),
    }
}

async fn admission_holds_the_tier_limit<S: FleetStore>(s: S) {
    let limits = TierLimits::default();
    let a = spec("alice");
    assert!(matches!(
        s.admit(&a, &limits).await.unwrap(),
        Admission::Admitted {
            tier: Tier::Free,
            limit: 1,
            current: 1
        }
    ));
    let b = spec("alice");
    assert_eq!(
        s.admit(&b, &limits).await.unwrap(),
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
        s.admit(&b, &limits).await.unwrap(),
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
    let limits = TierLimits::default();
    s.subscribe(&UserId::new("bob"), Tier::Pro, 0)
        .await
        .unwrap();
    assert!(matches!(
        s.admit(&spec("bob"), &limits).await.unwrap(),
        Admission::Admitted {
            tier: Tier::Free,
            ..
        }
    ));
    assert!(matches!(
        s.admit(&spec("bob"), &limits).await.unwrap(),
        Admission::LimitReached {
            tier: Tier::Free,
            ..
        }
    ));
}

async fn claims_bump_the_epoch_and_drop_what_must_not_run<S: FleetStore>(s: S) {
    let limits = TierLimits::default();
    let a = spec("carol");
    s.admit(&a, &limits).await.unwrap();
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
    s.admit(&a, &TierLimits::default()).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    let beat = |epoch| RunnerBeat {
        job_id: a.id.clone(),
        epoch,
        positions: vec![],
        stats: Default::default(),
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
    assert_eq!(
        s.renew(&node("n2"), &[beat(epoch)], LEASE).await.unwrap(),
        vec![a.id.clone()]
    );
    assert!(
        !s.finish(&NodeId::new("n1"), &a, epoch + 1, end(JobStatus::Stopped))
            .await
            .unwrap()
    );
    assert!(
        s.finish(&NodeId::new("n1"), &a, epoch, end(JobStatus::Stopped))
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
        !s.finish(&NodeId::new("n1"), &a, epoch, end(JobStatus::Failed))
            .await
            .unwrap()
    );
    let nodes = s.nodes().await.unwrap();
    assert!(
        nodes.iter().any(|n| n.node_id.as_str() == "n1"),
        "{nodes:?}"
    );
}

async fn stopping_a_queued_job_needs_no_node<S: FleetStore>(s: S) {
    let a = spec("erin");
    s.admit(&a, &TierLimits::default()).await.unwrap();
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
    s.admit(&a, &TierLimits::default()).await.unwrap();
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

async fn handed_back_jobs_can_be_claimed_again<S: FleetStore>(s: S) {
    let a = spec("gina");
    s.admit(&a, &TierLimits::default()).await.unwrap();
    let epoch = claim_one(&s, "n1", &a.id).await;
    assert!(!s.hand_back(&NodeId::new("n2"), &a.id, epoch).await.unwrap());
    assert!(s.hand_back(&NodeId::new("n1"), &a.id, epoch).await.unwrap());
    assert_eq!(
        s.active_count(&UserId::new("gina")).await.unwrap(),
        1,
        "the slot stays held"
    );
    assert_eq!(claim_one(&s, "n2", &a.id).await, epoch + 1);
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
                handed_back_jobs_can_be_claimed_again);
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

store_conformance!(memory => Memory, redis => Redis);
