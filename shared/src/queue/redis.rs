//! Redis-list queue: `LPUSH` onto a ready list, claims move ids to a per-node processing list.
//!
//! A claim first runs [`queue_claim.lua`](../scripts/queue_claim.lua), which moves up to `max`
//! ids in one round trip. Only when that finds nothing does the node block, with `BLMOVE` on a
//! connection of its own (Lua cannot block); a job that arrives wakes it and is returned alone,
//! so that the caller starts it at once and claims again for the rest.
//!
//! A worker node whose store fills this queue itself (the Redis backend) takes from the ready
//! list through the store's claim script instead ([`crate::store::LeaseStore::claim_queued`]:
//! taken and claimed in one step, no processing list), and comes here only to block, with
//! [`JobQueue::claim_next`]: `BLMOVE` alone, since the store's claim has just found the list
//! empty (and `BLMOVE` returns at once if an id came since).
//!
//! Spreading a burst: the script gives a node at most its fair share of what waits (waiting ÷
//! claiming nodes). A node whose claim that share capped waits [`SHARE_PAUSE`] before its next
//! claim, so that the other nodes take their shares instead of the fastest loop coming back for
//! the rest. Outside bursts a claim is never capped and nothing waits.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use ::redis::Script;

use super::{Delivery, JobQueue, QueueError};
use crate::ids::{JobId, NodeId};
use crate::keys::Keys;
use crate::redis_pool::{RedisPools, block_seconds};

static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/queue_claim.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/queue_release.lua")));
static RECOVER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/queue_recover.lua")));

/// Job ids one claim script moves at most: bounds how long it holds Redis (a node with more
/// free slots claims again at once, without the share pause).
pub const CLAIM_BATCH_MAX: usize = 64;

/// How long a node whose claim was capped by its fair share waits before it claims again.
pub const SHARE_PAUSE: Duration = Duration::from_millis(50);

/// A queue in Redis lists. Cloning shares the pools (and the pause after a capped claim: one
/// queue value serves one node).
#[derive(Debug, Clone)]
pub struct RedisQueue {
    pools: RedisPools,
    keys: Keys,
    name: String,
    capped_at: Arc<Mutex<Option<Instant>>>,
}

impl RedisQueue {
    /// The queue `name` under the key prefix of `keys`.
    pub fn new(pools: RedisPools, keys: Keys, name: impl Into<String>) -> Self {
        Self {
            pools,
            keys,
            name: name.into(),
            capped_at: Arc::default(),
        }
    }

    fn ready(&self) -> String {
        self.keys.ready(&self.name)
    }

    fn processing(&self, node: &NodeId) -> String {
        self.keys.processing(&self.name, node)
    }

    async fn claim_now(&self, node: &NodeId, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut conn = self.pools.commands.get().await?;
        let (capped, ids): (u8, Vec<String>) = CLAIM
            .key(self.ready())
            .key(self.processing(node))
            .key(self.keys.claimers(&self.name))
            .arg(max.min(CLAIM_BATCH_MAX))
            .arg(node.as_str())
            .invoke_async::<Vec<::redis::Value>>(&mut *conn)
            .await
            .and_then(|mut v| {
                let flag = if v.is_empty() {
                    0
                } else {
                    ::redis::from_redis_value(v.remove(0))?
                };
                Ok((flag, ::redis::from_redis_value(::redis::Value::Array(v))?))
            })?;
        if capped == 1 {
            *self.capped_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        Ok(ids
            .into_iter()
            .map(|id| Delivery::untagged(JobId::new(id)))
            .collect())
    }

    /// Blocks up to `wait` for the next id and moves it to `node`'s processing list. With
    /// `register`, `node` is first recorded as a claimer in the same round trip (as the claim
    /// script does): the sweep forgets the claimers it finds without a live node, and recovers
    /// only the processing lists of claimers, so a node that only waits must record itself at
    /// every wait.
    async fn wait_for_one(
        &self,
        node: &NodeId,
        wait: Duration,
        register: bool,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut pipe = ::redis::pipe();
        if register {
            let mut sadd = ::redis::cmd("SADD");
            sadd.arg(self.keys.claimers(&self.name)).arg(node.as_str());
            if self.keys.is_clustered() {
                // Alone on a cluster: while the fleet's slot migrates, the cluster client sends
                // a redirected pipeline whole to the new master, where the SADD would create a
                // second claimers set beside the one not moved yet (found by the slow-migration
                // test: MIGRATE then fails with BUSYKEY).
                let () = sadd
                    .query_async(&mut *self.pools.commands.get().await?)
                    .await?;
            } else {
                pipe.add_command(sadd).ignore();
            }
        }
        pipe.cmd("BLMOVE")
            .arg(self.ready())
            .arg(self.processing(node))
            .arg("RIGHT")
            .arg("LEFT")
            .arg(block_seconds(wait));
        let (first,): (Option<String>,) = pipe
            .query_async(&mut self.pools.blocking(wait).await?)
            .await?;
        // The one that woke the node, alone: the caller records it at once (a pick-up waits for
        // nothing more) and claims again for whatever else arrived.
        Ok(first
            .map(|id| vec![Delivery::untagged(JobId::new(id))])
            .unwrap_or_default())
    }
}

impl JobQueue for RedisQueue {
    async fn enqueue(&self, jobs: &[JobId]) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut conn = self.pools.commands.get().await?;
        let ids: Vec<&str> = jobs.iter().map(JobId::as_str).collect();
        let () = ::redis::cmd("LPUSH")
            .arg(self.ready())
            .arg(&ids)
            .query_async(&mut *conn)
            .await
            .map(|_: i64| ())?;
        Ok(())
    }

    async fn claim(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let capped_at = self
            .capped_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(at) = capped_at {
            tokio::time::sleep_until((at + SHARE_PAUSE).into()).await;
        }
        let got = self.claim_now(node, max).await?;
        if !got.is_empty() || wait.is_zero() {
            return Ok(got);
        }
        self.wait_for_one(node, wait, false).await
    }

    async fn claim_next(&self, node: &NodeId, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        // BLMOVE returns at once when an id waits, and moves it as the claim script would (the
        // fair share does not apply to one job): one round trip whatever the queue holds.
        self.wait_for_one(node, wait, true).await
    }

    async fn ack(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let key = self.processing(node);
        let mut pipe = ::redis::pipe();
        for d in deliveries {
            // From the tail: claims push at the head, so the oldest unacknowledged ids sit at
            // the tail and a scan from the head would cross every newer claim (O(n²) to ack n).
            pipe.cmd("LREM")
                .arg(&key)
                .arg(-1)
                .arg(d.job_id.as_str())
                .ignore();
        }
        let mut conn = self.pools.commands.get().await?;
        let () = pipe.query_async(&mut *conn).await?;
        Ok(())
    }

    async fn release(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut conn = self.pools.commands.get().await?;
        let mut invocation = RELEASE.key(self.ready());
        invocation.key(self.processing(node));
        for d in deliveries {
            invocation.arg(d.job_id.as_str());
        }
        let _: i64 = invocation.invoke_async(&mut *conn).await?;
        Ok(())
    }

    async fn remove(&self, job: &JobId) -> Result<bool, QueueError> {
        let mut conn = self.pools.commands.get().await?;
        let removed: i64 = ::redis::cmd("LREM")
            .arg(self.ready())
            .arg(0)
            .arg(job.as_str())
            .query_async(&mut *conn)
            .await?;
        Ok(removed > 0)
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let mut conn = self.pools.commands.get().await?;
        let n: u64 = ::redis::cmd("LLEN")
            .arg(self.ready())
            .query_async(&mut *conn)
            .await?;
        Ok(n)
    }

    async fn claimers(&self) -> Result<Vec<NodeId>, QueueError> {
        let mut conn = self.pools.commands.get().await?;
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(self.keys.claimers(&self.name))
            .query_async(&mut *conn)
            .await?;
        Ok(ids.into_iter().map(NodeId::new).collect())
    }

    async fn recover(&self, node: &NodeId) -> Result<u64, QueueError> {
        let mut conn = self.pools.commands.get().await?;
        let n: u64 = RECOVER
            .key(self.ready())
            .key(self.processing(node))
            .key(self.keys.claimers(&self.name))
            .arg(node.as_str())
            .invoke_async(&mut *conn)
            .await?;
        Ok(n)
    }
}
