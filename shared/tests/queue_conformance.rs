//! One conformance suite for every `JobQueue` backend. Each backend gets the same tests through
//! the `queue_conformance!` macro; a backend that needs a service talks to the real one.
//!
//! Where a backend cannot keep a promise of the contract, its [`Capabilities`] say so and the
//! test states the weaker guarantee that backend does keep, rather than skipping it.

mod support;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use runfleet_shared::ids::{JobId, NodeId};
#[cfg(feature = "rabbitmq")]
use runfleet_shared::queue::RabbitMqQueue;
use runfleet_shared::queue::{
    Delivery, JobQueue, MemoryQueue, QueueError, RedisQueue, ShardedQueue,
};

/// What a backend promises beyond the common contract.
trait Capabilities {
    /// `remove` takes a queued job out by id. AMQP has no such operation: RabbitMQ's `remove`
    /// returns `false` and the job stays queued until a node claims it, when the store's claim
    /// script drops it because its record says stopped (docs/architecture.md).
    const REMOVES_BY_ID: bool = true;
    /// Claims come oldest first across the whole queue. A sharded queue keeps each shard's
    /// ready list in order, but a claim takes from one shard after another: its order across
    /// shards is not the order of arrival.
    const FIFO: bool = true;
}

/// Asserts that `got` are the jobs `expected`, in that order where `Q` keeps one.
fn assert_claimed<Q: Capabilities>(got: &[Delivery], expected: &[&str]) {
    let mut got = names(got);
    let mut expected: Vec<String> = expected.iter().map(|e| (*e).to_owned()).collect();
    if !Q::FIFO {
        got.sort();
        expected.sort();
    }
    assert_eq!(got, expected);
}

impl Capabilities for MemoryQueue {}
impl Capabilities for RedisQueue {}
impl Capabilities for ShardedQueue {
    const FIFO: bool = false;
}
#[cfg(feature = "rabbitmq")]
impl Capabilities for RabbitMqQueue {
    const REMOVES_BY_ID: bool = false;
}

/// A queue under test plus whatever must be cleaned up after it.
trait Harness: Sized {
    type Queue: JobQueue + Clone + Capabilities;
    fn queue(&self) -> Self::Queue;
    fn teardown(self) -> impl Future<Output = ()>;
}

struct Memory(MemoryQueue);

impl Memory {
    async fn new() -> Self {
        Memory(MemoryQueue::new())
    }
}

impl Harness for Memory {
    type Queue = MemoryQueue;
    fn queue(&self) -> MemoryQueue {
        self.0.clone()
    }
    async fn teardown(self) {}
}

struct Redis {
    queue: RedisQueue,
    pools: runfleet_shared::redis_pool::RedisPools,
    keys: runfleet_shared::keys::Keys,
}

impl Redis {
    async fn new() -> Self {
        Self::on(support::redis_pools().await, support::unique_keys())
    }

    fn on(
        pools: runfleet_shared::redis_pool::RedisPools,
        keys: runfleet_shared::keys::Keys,
    ) -> Self {
        Redis {
            queue: RedisQueue::new(pools.clone(), keys.clone(), "jobs"),
            pools,
            keys,
        }
    }
}

/// The Redis-list queue on the test Redis Cluster, under a hash tag of its own.
struct RedisCluster;
impl RedisCluster {
    // The suite's macro builds each backend with `<Backend>::new()`; this one is the Redis
    // harness on other pools.
    #[allow(clippy::new_ret_no_self)]
    async fn new() -> Redis {
        Redis::on(
            support::cluster_pools().await,
            support::unique_cluster_keys(),
        )
    }
}

impl Harness for Redis {
    type Queue = RedisQueue;
    fn queue(&self) -> RedisQueue {
        self.queue.clone()
    }
    async fn teardown(self) {
        support::cleanup(&self.pools, &self.keys).await;
    }
}

/// The sharded queue (4 shards, each under a hash tag of its own) on the test Redis Cluster.
struct RedisSharded {
    queue: ShardedQueue,
    pools: runfleet_shared::redis_pool::RedisPools,
    shards: Vec<runfleet_shared::keys::Keys>,
}

impl RedisSharded {
    async fn new() -> Self {
        let pools = support::cluster_pools().await;
        let settings = runfleet_shared::config::RedisSettings {
            url: support::cluster_url(),
            cluster: true,
            shards: 4,
            key_prefix: format!("rftest-{}", uuid::Uuid::new_v4().simple()),
            ..Default::default()
        };
        let policy = runfleet_shared::store::FleetPolicy::default();
        let (store, queue) =
            runfleet_shared::backend::sharded(&pools, &settings, policy, "jobs", true);
        let shards = store.shards().iter().map(|s| s.keys().clone()).collect();
        RedisSharded {
            queue,
            pools,
            shards,
        }
    }
}

impl Harness for RedisSharded {
    type Queue = ShardedQueue;
    fn queue(&self) -> ShardedQueue {
        self.queue.clone()
    }
    async fn teardown(self) {
        for keys in &self.shards {
            support::cleanup(&self.pools, keys).await;
        }
    }
}

/// A durable queue of its own on the real RabbitMQ, deleted after the test.
#[cfg(feature = "rabbitmq")]
struct RabbitMq(RabbitMqQueue);

#[cfg(feature = "rabbitmq")]
impl RabbitMq {
    async fn new() -> Self {
        RabbitMq(support::rabbitmq_queue(&support::unique_queue_name()).await)
    }
}

#[cfg(feature = "rabbitmq")]
impl Harness for RabbitMq {
    type Queue = RabbitMqQueue;
    fn queue(&self) -> RabbitMqQueue {
        self.0.clone()
    }
    async fn teardown(self) {
        self.0.delete().await.expect("delete the test queue");
        self.0.close().await;
    }
}

fn ids(names: &[&str]) -> Vec<JobId> {
    names.iter().map(|n| JobId::new(*n)).collect()
}

fn names(ds: &[runfleet_shared::queue::Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.job_id.to_string()).collect()
}

const SHORT: Duration = Duration::from_millis(50);

async fn fifo_order<Q: JobQueue + Capabilities>(q: Q) {
    let n = NodeId::new("n1");
    q.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    q.enqueue(&ids(&["d"])).await.unwrap();
    let got = q.claim(&n, 10, SHORT).await.unwrap();
    assert_claimed::<Q>(&got, &["a", "b", "c", "d"]);
    let got = q.claim(&n, 10, Duration::ZERO).await.unwrap();
    assert!(got.is_empty());
}

async fn claim_takes_at_most_max<Q: JobQueue + Capabilities>(q: Q) {
    let n = NodeId::new("n1");
    q.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    let first = q.claim(&n, 2, SHORT).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = q.claim(&n, 2, SHORT).await.unwrap();
    assert_claimed::<Q>(&[first, second].concat(), &["a", "b", "c"]);
    assert_eq!(q.depth().await.unwrap(), 0);
}

/// `claimer`, a claim waiting on the empty queue `q`, waits until a job arrives and returns it.
async fn wakes_when_a_job_arrives<Q: JobQueue>(
    q: &Q,
    claimer: tokio::task::JoinHandle<Result<Vec<Delivery>, QueueError>>,
) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !claimer.is_finished(),
        "claim returned before any job arrived"
    );
    q.enqueue(&ids(&["late"])).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(4), claimer)
        .await
        .expect("a blocked claim must wake when a job arrives")
        .unwrap()
        .unwrap();
    assert_eq!(names(&got), ["late"]);
}

async fn claim_blocks_until_a_job_arrives<Q: JobQueue + Clone>(q: Q) {
    let n = NodeId::new("n1");
    let claimer = {
        let q = q.clone();
        tokio::spawn(async move { q.claim(&n, 5, Duration::from_secs(5)).await })
    };
    wakes_when_a_job_arrives(&q, claimer).await;
}

async fn claim_returns_empty_when_its_wait_passes<Q: JobQueue>(q: Q) {
    let started = std::time::Instant::now();
    let got = q
        .claim(&NodeId::new("n1"), 5, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "claim did not wait"
    );
}

/// Waiting for the next job (a node whose store found the queue empty): a job already waiting
/// is taken at once, alone and oldest first, and invisible to others until acknowledged; with
/// none, the call waits for one and returns empty when its wait passes.
async fn claim_next_takes_one_job_or_waits_for_it<Q: JobQueue + Clone + Capabilities>(q: Q) {
    let n = NodeId::new("n1");
    q.enqueue(&ids(&["a", "b"])).await.unwrap();
    let started = std::time::Instant::now();
    let first = q.claim_next(&n, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 1, "one job");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited with a job there"
    );
    let second = q.claim(&NodeId::new("n2"), 10, SHORT).await.unwrap();
    assert_claimed::<Q>(&[first, second].concat(), &["a", "b"]);
    let started = std::time::Instant::now();
    assert!(
        q.claim_next(&n, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it did not wait"
    );
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.claim_next(&n, Duration::from_secs(5)).await })
    };
    wakes_when_a_job_arrives(&q, waiter).await;
}

async fn ack_removes<Q: JobQueue>(q: Q) {
    let n = NodeId::new("n1");
    q.enqueue(&ids(&["a", "b"])).await.unwrap();
    let got = q.claim(&n, 2, SHORT).await.unwrap();
    q.ack(&n, &got[..1]).await.unwrap();
    // Only the unacknowledged one comes back when the node is recovered.
    assert_eq!(q.recover(&n).await.unwrap(), 1);
    assert_eq!(names(&q.claim(&n, 5, SHORT).await.unwrap()), ["b"]);
}

async fn claimed_job_is_invisible_to_other_claimers<Q: JobQueue>(q: Q) {
    q.enqueue(&ids(&["a"])).await.unwrap();
    assert_eq!(
        q.claim(&NodeId::new("n1"), 1, SHORT).await.unwrap().len(),
        1
    );
    assert!(
        q.claim(&NodeId::new("n2"), 1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.depth().await.unwrap(), 0);
}

async fn queued_job_can_be_removed_by_id<Q: JobQueue + Capabilities>(q: Q) {
    q.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    if !Q::REMOVES_BY_ID {
        // The weaker guarantee: `remove` says it removed nothing and disturbs nothing; the job
        // is claimed like any other (and dropped by the store's claim script).
        assert!(!q.remove(&JobId::new("b")).await.unwrap());
        assert!(!q.remove(&JobId::new("nope")).await.unwrap());
        assert_eq!(q.depth().await.unwrap(), 3);
        assert_eq!(
            names(&q.claim(&NodeId::new("n1"), 5, SHORT).await.unwrap()),
            ["a", "b", "c"]
        );
        return;
    }
    assert!(q.remove(&JobId::new("b")).await.unwrap());
    assert!(!q.remove(&JobId::new("b")).await.unwrap());
    assert!(!q.remove(&JobId::new("nope")).await.unwrap());
    assert_eq!(q.depth().await.unwrap(), 2);
    assert_claimed::<Q>(
        &q.claim(&NodeId::new("n1"), 5, SHORT).await.unwrap(),
        &["a", "c"],
    );
}

async fn depth_is_exact<Q: JobQueue>(q: Q) {
    assert_eq!(q.depth().await.unwrap(), 0);
    let batch: Vec<JobId> = (0..37).map(|i| JobId::new(format!("j{i}"))).collect();
    q.enqueue(&batch).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 37);
    q.claim(&NodeId::new("n1"), 12, SHORT).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 25);
}

async fn dead_nodes_claims_return_to_the_queue<Q: JobQueue + Capabilities>(q: Q) {
    let dead = NodeId::new("dead");
    q.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    assert_eq!(q.claim(&dead, 2, SHORT).await.unwrap().len(), 2);
    assert_eq!(q.recover(&dead).await.unwrap(), 2);
    assert_eq!(q.recover(&dead).await.unwrap(), 0, "recover is idempotent");
    assert_eq!(q.depth().await.unwrap(), 3);
    // The recovered claims are first in line, in their original order.
    assert_claimed::<Q>(
        &q.claim(&NodeId::new("alive"), 5, SHORT).await.unwrap(),
        &["a", "b", "c"],
    );
}

async fn released_jobs_go_to_the_front<Q: JobQueue + Capabilities>(q: Q) {
    let n = NodeId::new("n1");
    q.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    let got = q.claim(&n, 2, SHORT).await.unwrap();
    q.release(&n, &got).await.unwrap();
    assert_eq!(
        q.recover(&n).await.unwrap(),
        0,
        "released claims are no longer the node's"
    );
    assert_claimed::<Q>(&q.claim(&n, 5, SHORT).await.unwrap(), &["a", "b", "c"]);
}

async fn concurrent_claimers_get_each_job_exactly_once<Q: JobQueue + Clone>(q: Q) {
    const JOBS: usize = 10_000;
    let all: Vec<JobId> = (0..JOBS)
        .map(|i| JobId::new(format!("job-{i:05}")))
        .collect();
    for chunk in all.chunks(1_000) {
        q.enqueue(chunk).await.unwrap();
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::with_capacity(JOBS)));
    let mut claimers = Vec::new();
    for c in 0..4 {
        let (q, seen) = (q.clone(), seen.clone());
        claimers.push(tokio::spawn(async move {
            let node = NodeId::new(format!("claimer-{c}"));
            loop {
                let got = q
                    .claim(&node, 25, Duration::from_millis(200))
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                q.ack(&node, &got).await.unwrap();
                seen.lock()
                    .unwrap()
                    .extend(got.into_iter().map(|d| d.job_id));
            }
        }));
    }
    for c in claimers {
        c.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let unique: HashSet<&JobId> = seen.iter().collect();
    assert_eq!(seen.len(), JOBS, "every job claimed once in total");
    assert_eq!(unique.len(), JOBS, "no job claimed twice");
    assert_eq!(q.depth().await.unwrap(), 0);
}

macro_rules! queue_conformance {
    ($module:ident => $backend:ident: $($test:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let harness = super::$backend::new().await;
                    super::$test(harness.queue()).await;
                    harness.teardown().await;
                }
            )*
        }
    };
}

macro_rules! conformance_for {
    ($($module:ident => $backend:ident),*) => {$(
        queue_conformance!($module => $backend:
            fifo_order,
            claim_takes_at_most_max,
            claim_blocks_until_a_job_arrives,
            claim_returns_empty_when_its_wait_passes,
            claim_next_takes_one_job_or_waits_for_it,
            ack_removes,
            claimed_job_is_invisible_to_other_claimers,
            queued_job_can_be_removed_by_id,
            depth_is_exact,
            dead_nodes_claims_return_to_the_queue,
            released_jobs_go_to_the_front,
            concurrent_claimers_get_each_job_exactly_once,
        );
    )*};
}

conformance_for!(
    memory => Memory,
    redis => Redis,
    redis_cluster => RedisCluster,
    redis_sharded => RedisSharded
);
#[cfg(feature = "rabbitmq")]
conformance_for!(rabbitmq => RabbitMq);
