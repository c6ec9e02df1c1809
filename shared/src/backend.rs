//! Connecting a process to the fleet's shared backend, the same way in every binary.
//!
//! [`run_on`] is the one place that matches `queue.backend`: it opens that backend's store and
//! queue and hands them to the process ([`OnBackend`]), generic over both, so neither binary
//! repeats the match (or its `rabbitmq` feature gates).

use std::future::Future;

use crate::config::{ConfigError, QueueBackend, Settings};
use crate::keys::Keys;
#[cfg(feature = "rabbitmq")]
use crate::queue::RabbitMqQueue;
use crate::queue::{JobQueue, MemoryQueue, RedisQueue, ShardedQueue};
use crate::redis_pool::{RedisError, RedisPools};
use crate::store::{FleetPolicy, FleetStore, MemoryStore, RedisStore, ShardedStore, shard_policy};
use crate::wake::LazyWake;

/// A process's work on the backend of its settings: [`run_on`] opens the store and the queue
/// and calls [`OnBackend::run`] with them. A trait rather than a closure, since the callback is
/// generic over the store and queue types.
pub trait OnBackend {
    /// What the work gives back.
    type Output;

    /// Does the work on `store` and `queue`.
    fn run<S: FleetStore, Q: JobQueue + Clone>(
        self,
        store: S,
        queue: Q,
    ) -> impl Future<Output = Self::Output>;
}

/// Opens the backend `settings.queue.backend` names and runs `process` on it: the in-memory
/// store and queue (the embedded mode), Redis, or RabbitMQ with state in Redis.
pub async fn run_on<P: OnBackend>(
    settings: &Settings,
    process: P,
) -> Result<P::Output, BackendError> {
    match settings.queue.backend {
        QueueBackend::Memory => {
            let store = MemoryStore::new(FleetPolicy::from_settings(settings));
            Ok(process.run(store, MemoryQueue::new()).await)
        }
        QueueBackend::Redis if settings.redis.shards > 1 => {
            let (store, queue) = open_sharded(settings).await?;
            Ok(process.run(store, queue).await)
        }
        QueueBackend::Redis => {
            let (store, queue) = open_redis(settings).await?;
            Ok(process.run(store, queue).await)
        }
        #[cfg(feature = "rabbitmq")]
        QueueBackend::Rabbitmq if settings.redis.shards > 1 => {
            let pools = open_pools(settings).await?;
            let policy = FleetPolicy::from_settings(settings);
            let (store, _) = sharded(&pools, &settings.redis, policy, &settings.queue.name, false);
            let queue = open_rabbitmq_queue(settings).await?;
            Ok(process.run(store, queue).await)
        }
        #[cfg(feature = "rabbitmq")]
        QueueBackend::Rabbitmq => {
            let (store, queue) = open_rabbitmq(settings).await?;
            Ok(process.run(store, queue).await)
        }
        #[cfg(not(feature = "rabbitmq"))]
        QueueBackend::Rabbitmq => Err(BackendError::NoRabbitmq),
    }
}

/// Opens the Redis store and Redis queue of `settings`. The store queues jobs onto the queue's
/// ready list itself, in the same script that makes them queued. Succeeds while Redis is down
/// (the connections open lazily and callers retry); logs a warning when Redis is unreachable or
/// its `maxmemory-policy` could evict leases. Fails when the first connection fails in a way
/// that waiting cannot heal ([`RedisError::is_permanent`]: TLS, credentials, permissions).
pub async fn open_redis(settings: &Settings) -> Result<(RedisStore, RedisQueue), RedisError> {
    let (store, pools) = open_store(settings).await?;
    let keys = store.keys().clone();
    let store = store.queuing_into(&settings.queue.name);
    Ok((
        store,
        RedisQueue::new(pools, keys, settings.queue.name.clone()),
    ))
}

/// The sharded store and queue of `settings` (`redis.shards > 1`): one [`RedisStore`] and
/// one [`RedisQueue`] per shard, each store queuing onto its shard's ready list and announcing
/// on the fleet's wake-up channel.
pub async fn open_sharded(settings: &Settings) -> Result<(ShardedStore, ShardedQueue), RedisError> {
    let pools = open_pools(settings).await?;
    let policy = FleetPolicy::from_settings(settings);
    Ok(sharded(
        &pools,
        &settings.redis,
        policy,
        &settings.queue.name,
        true,
    ))
}

/// A sharded fleet over `pools` (`redis.shards` shards of `redis`'s prefix) applying `policy`
/// (its fleet-wide limits divided among the shards, [`shard_policy`]): the store, queuing
/// onto the Redis-list queue `queue` itself when `inline` (else publishing is the caller's,
/// and the queue returned unused), and that queue.
pub fn sharded(
    pools: &RedisPools,
    redis: &crate::config::RedisSettings,
    policy: FleetPolicy,
    queue: &str,
    inline: bool,
) -> (ShardedStore, ShardedQueue) {
    let count = redis.shards.max(1);
    let policy = shard_policy(policy, count);
    let channel = Keys::wake_channel(redis);
    let keys: Vec<Keys> = (0..count as usize).map(|n| Keys::shard(redis, n)).collect();
    let wake = LazyWake::new(
        pools.seeds(),
        channel.clone(),
        keys.clone(),
        pools.response_timeout(),
    );
    let stores = keys
        .iter()
        .map(|k| {
            let store = RedisStore::new(pools.clone(), k.clone(), policy).announcing_on(&channel);
            if inline {
                store.queuing_into(queue)
            } else {
                store
            }
        })
        .collect();
    let queues = keys
        .into_iter()
        .map(|k| {
            let prefix = k.prefix().to_owned();
            (RedisQueue::new(pools.clone(), k, queue), prefix)
        })
        .collect();
    (
        ShardedStore::new(stores, wake.clone()),
        ShardedQueue::new(pools.clone(), queues, wake),
    )
}

/// Records the shard count the fleet's state is created with, or checks it against the one
/// recorded: a fleet read with another count would not find its users.
async fn check_shard_count(pools: &RedisPools, settings: &Settings) -> Result<(), RedisError> {
    let key = Keys::shard_count(&settings.redis);
    let wanted = settings.redis.shards;
    let mut conn = pools.commands.get().await?;
    let _: Option<String> = ::redis::cmd("SET")
        .arg(&key)
        .arg(wanted)
        .arg("NX")
        .query_async(&mut *conn)
        .await?;
    let recorded: Option<u32> = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut *conn)
        .await?;
    match recorded {
        Some(n) if n != wanted => Err(RedisError::Mode(format!(
            "the fleet's state under redis.key_prefix {:?} was created with {n} shard(s) \
             (recorded in {key}), but redis.shards = {wanted}: the shard count cannot change \
             (use another key_prefix for a new fleet)",
            settings.redis.key_prefix
        ))),
        _ => Ok(()),
    }
}

/// The Redis store alone, leaving the publishing of queued jobs to the caller.
async fn open_store(settings: &Settings) -> Result<(RedisStore, RedisPools), RedisError> {
    let pools = open_pools(settings).await?;
    let keys = Keys::of(&settings.redis);
    let store = RedisStore::new(pools.clone(), keys, FleetPolicy::from_settings(settings));
    Ok((store, pools))
}

/// The pools of `settings`, checked: the Redis answers as `redis.cluster` says, and the shard
/// count matches the fleet's (when Redis answers at all: a Redis that is down yet is retried).
async fn open_pools(settings: &Settings) -> Result<RedisPools, RedisError> {
    let pools = RedisPools::new(&settings.redis)?;
    match pools.check().await {
        Ok(Some(policy)) => tracing::warn!(
            policy,
            "redis maxmemory-policy is not noeviction: an evicted lease strands its job"
        ),
        Ok(None) => {}
        // A Redis that is not what redis.cluster says never heals either.
        Err(e @ RedisError::Mode(_)) => return Err(e),
        // A wrong CA, a plaintext/TLS mismatch or refused credentials never heal: stop here.
        Err(e) if e.is_permanent() => {
            return Err(RedisError::Tls(format!(
                "cannot use the Redis at {} ({e}); check the URL's scheme (rediss:// for a TLS \
                 port), redis.tls_ca_file, the client certificate, and the ACL user and password",
                crate::config::redact_url(&settings.redis.url)
            )));
        }
        Err(e) => {
            tracing::warn!(error = %e, "redis is not reachable yet; retrying until it is");
            return Ok(pools);
        }
    }
    match check_shard_count(&pools, settings).await {
        Err(e @ RedisError::Mode(_)) => Err(e),
        Err(e) => {
            tracing::warn!(error = %e, "cannot check the fleet's shard count");
            Ok(pools)
        }
        Ok(()) => Ok(pools),
    }
}

/// Why a backend could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Redis settings are unusable.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// Queue settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `queue.backend = rabbitmq` in a build without the `rabbitmq` feature.
    #[error(
        "queue.backend = rabbitmq: this build has no RabbitMQ support (the `rabbitmq` cargo \
         feature is off)"
    )]
    NoRabbitmq,
}

#[cfg(feature = "rabbitmq")]
/// Opens the Redis store and the RabbitMQ queue of `settings` (`queue.backend = "rabbitmq"`:
/// jobs travel through RabbitMQ; their state, leases and heartbeats stay in Redis). Fails only on
/// invalid settings; succeeds while the broker is down (the queue reconnects on use, with
/// backoff) and logs a warning.
pub async fn open_rabbitmq(
    settings: &Settings,
) -> Result<(RedisStore, RabbitMqQueue), BackendError> {
    let (store, _) = open_store(settings).await?;
    Ok((store, open_rabbitmq_queue(settings).await?))
}

#[cfg(feature = "rabbitmq")]
async fn open_rabbitmq_queue(settings: &Settings) -> Result<RabbitMqQueue, BackendError> {
    let queue = RabbitMqQueue::new(&settings.rabbitmq, settings.queue.name.clone())?;
    if let Err(e) = queue.connect().await {
        tracing::warn!(error = %e, "rabbitmq is not reachable yet; retrying until it is");
    }
    Ok(queue)
}
