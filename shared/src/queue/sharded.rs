//! The Redis-list queue of a sharded fleet: one [`RedisQueue`] per shard ([`ShardedQueue`]).
//!
//! A job waits on its own shard's ready list (its id hashes to its user's shard). A claim looks
//! at the shards one after the other without blocking, from a shard that rotates from call to
//! call; a claim that found nothing and may wait listens for the fleet's wake-ups instead of
//! blocking on one list ([`crate::wake`]): a ready list that was empty announces its first job.
//! It looks at every shard again on a wake-up, after a resubscription, and at least every
//! [`SAFETY_SCAN`] (a wake-up lost in a cluster bus partition).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::try_join_all;

use super::{Delivery, JobQueue, QueueError, RedisQueue};
use crate::ids::{JobId, NodeId};
use crate::redis_pool::RedisPools;
use crate::shard::{group_by_shard, shard_of};
use crate::wake::{LazyWake, Listener, Listeners, WakeUp, ready_message, wait_for};

/// How often a waiting claim looks at every shard even without a wake-up.
pub const SAFETY_SCAN: Duration = Duration::from_secs(10);

/// A queue over every shard's ready list (see the module docs). Cloning shares it.
#[derive(Debug, Clone)]
pub struct ShardedQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pools: RedisPools,
    shards: Vec<RedisQueue>,
    /// Each shard's key prefix: what its wake-ups name.
    prefixes: Vec<String>,
    wake: LazyWake,
    next: AtomicUsize,
    listeners: Listeners,
}

impl ShardedQueue {
    /// The queue over `shards` (shard `n`'s queue under [`crate::keys::Keys::shard`] `n`, with
    /// its key prefix), waiting on `wake`.
    pub fn new(pools: RedisPools, shards: Vec<(RedisQueue, String)>, wake: LazyWake) -> Self {
        let (shards, prefixes) = shards.into_iter().unzip();
        Self {
            inner: Arc::new(Inner {
                pools,
                shards,
                prefixes,
                wake,
                next: AtomicUsize::new(0),
                listeners: Listeners::default(),
            }),
        }
    }

    fn count(&self) -> u32 {
        self.inner.shards.len() as u32
    }

    /// `items` grouped by the shard of their job id.
    fn by_shard<T: Clone>(&self, items: &[T], id: impl Fn(&T) -> &str) -> HashMap<usize, Vec<T>> {
        group_by_shard(items.iter().map(id), self.count())
            .into_iter()
            .map(|(shard, members)| {
                (
                    shard,
                    members.into_iter().map(|i| items[i].clone()).collect(),
                )
            })
            .collect()
    }

    /// Announces that `shards`' ready lists got jobs (pushed outside the store's scripts).
    async fn announce(&self, shards: impl IntoIterator<Item = usize>) -> Result<(), QueueError> {
        let mut conn = self.inner.pools.commands.get().await?;
        for shard in shards {
            let _: i64 = ::redis::cmd("PUBLISH")
                .arg(self.inner.wake.channel())
                .arg(ready_message(&self.inner.prefixes[shard]))
                .query_async(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Up to `max` jobs from the shards' ready lists, without waiting, starting at `first` (or
    /// at a rotating shard, which counts as looking everywhere).
    async fn scan(
        &self,
        listener: &mut Listener,
        node: &NodeId,
        max: usize,
        first: Option<usize>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let n = self.inner.shards.len();
        let start = first.unwrap_or_else(|| {
            listener.looked = Some(Instant::now());
            self.inner.next.fetch_add(1, Ordering::Relaxed)
        });
        let mut got = Vec::new();
        for k in 0..n {
            let want = max.saturating_sub(got.len());
            if want == 0 {
                break;
            }
            let shard = &self.inner.shards[(start + k) % n];
            match shard.claim(node, want, Duration::ZERO).await {
                Ok(d) => got.extend(d),
                // What was claimed is returned (it must be recorded or released); the error
                // comes next time.
                Err(_) if !got.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// A claim with `node`'s kept receiver: it looks first when `look` (or something was
    /// announced since its last wait, or it is due a look), then waits for wake-ups.
    async fn claim_with(
        &self,
        listener: &mut Listener,
        node: &NodeId,
        max: usize,
        wait: Duration,
        look: bool,
    ) -> Result<Vec<Delivery>, QueueError> {
        let first = match listener.pending(|w| matches!(w, WakeUp::Ready(_))) {
            Some(WakeUp::Ready(shard)) => Some(Some(shard)),
            Some(_) => Some(None),
            None if look || listener.due(SAFETY_SCAN) => Some(None),
            None => None,
        };
        if let Some(first) = first {
            let got = self.scan(listener, node, max, first).await?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(Vec::new());
            }
            let woken = wait_for(&mut listener.rx, left, |w| matches!(w, WakeUp::Ready(_))).await;
            let got = match woken {
                Some(WakeUp::Ready(shard)) => self.scan(listener, node, max, Some(shard)).await?,
                Some(_) => self.scan(listener, node, max, None).await?,
                None if listener.due(SAFETY_SCAN) => {
                    return self.scan(listener, node, max, None).await;
                }
                None => return Ok(Vec::new()),
            };
            if !got.is_empty() {
                return Ok(got);
            }
        }
    }

    async fn claim_as(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
        look: bool,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut listener = self.inner.listeners.take(self.inner.wake.get(), node);
        let got = self.claim_with(&mut listener, node, max, wait, look).await;
        self.inner.listeners.put(node, listener);
        got
    }
}

impl JobQueue for ShardedQueue {
    async fn enqueue(&self, jobs: &[JobId]) -> Result<(), QueueError> {
        let groups = self.by_shard(jobs, JobId::as_str);
        let shards: Vec<usize> = groups.keys().copied().collect();
        try_join_all(
            groups
                .into_iter()
                .map(|(shard, ids)| async move { self.inner.shards[shard].enqueue(&ids).await }),
        )
        .await?;
        self.announce(shards).await
    }

    async fn claim(
        &self,
        node: &NodeId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.claim_as(node, max, wait, true).await
    }

    /// The node's store has just looked at every shard's ready list (its claim found them
    /// empty): this looks again only if something was announced since the node's last wait (its
    /// receiver is kept between waits, so nothing announced while it claimed is missed), or a
    /// look is due; otherwise it only waits.
    async fn claim_next(&self, node: &NodeId, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.claim_as(node, 1, wait, false).await
    }

    async fn ack(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        try_join_all(
            self.by_shard(deliveries, |d| d.job_id.as_str())
                .into_iter()
                .map(|(shard, d)| async move { self.inner.shards[shard].ack(node, &d).await }),
        )
        .await?;
        Ok(())
    }

    async fn release(&self, node: &NodeId, deliveries: &[Delivery]) -> Result<(), QueueError> {
        let groups = self.by_shard(deliveries, |d| d.job_id.as_str());
        let shards: Vec<usize> = groups.keys().copied().collect();
        try_join_all(
            groups
                .into_iter()
                .map(|(shard, d)| async move { self.inner.shards[shard].release(node, &d).await }),
        )
        .await?;
        self.announce(shards).await
    }

    async fn remove(&self, job: &JobId) -> Result<bool, QueueError> {
        self.inner.shards[shard_of(job.as_str(), self.count())]
            .remove(job)
            .await
    }

    async fn depth(&self) -> Result<u64, QueueError> {
        let depths = try_join_all(self.inner.shards.iter().map(|s| s.depth())).await?;
        Ok(depths.into_iter().sum())
    }

    async fn recover(&self, node: &NodeId) -> Result<u64, QueueError> {
        let counts = try_join_all(self.inner.shards.iter().map(|s| s.recover(node))).await?;
        let returned: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0).collect();
        self.announce(returned).await?;
        Ok(counts.into_iter().sum())
    }

    async fn claimers(&self) -> Result<Vec<NodeId>, QueueError> {
        let all = try_join_all(self.inner.shards.iter().map(|s| s.claimers())).await?;
        let mut nodes: Vec<NodeId> = all.into_iter().flatten().collect();
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }
}
