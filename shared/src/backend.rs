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
use crate::queue::{JobQueue, MemoryQueue, RedisQueue};
use crate::redis_pool::{RedisError, RedisPools};
use crate::store::{FleetPolicy, FleetStore, MemoryStore, RedisStore};

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
        QueueBackend::Redis => {
            let (store, queue) = open_redis(settings).await?;
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

/// The Redis store alone, leaving the publishing of queued jobs to the caller.
async fn open_store(settings: &Settings) -> Result<(RedisStore, RedisPools), RedisError> {
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
        Err(e) => tracing::warn!(error = %e, "redis is not reachable yet; retrying until it is"),
    }
    let keys = Keys::of(&settings.redis);
    let store = RedisStore::new(pools.clone(), keys, FleetPolicy::from_settings(settings));
    Ok((store, pools))
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
    let queue = RabbitMqQueue::new(&settings.rabbitmq, settings.queue.name.clone())?;
    if let Err(e) = queue.connect().await {
        tracing::warn!(error = %e, "rabbitmq is not reachable yet; retrying until it is");
    }
    Ok((store, queue))
}
