//! Connecting a process to the fleet's shared backend, the same way in every binary.

use crate::config::{ConfigError, Settings};
use crate::keys::Keys;
use crate::queue::{RabbitMqQueue, RedisQueue};
use crate::redis_pool::{RedisError, RedisPools};
use crate::store::{FleetPolicy, RedisStore};

/// Opens the Redis store and Redis queue of `settings`. Succeeds while Redis is down (the
/// connections open lazily and callers retry); logs a warning when Redis is unreachable or its
/// `maxmemory-policy` could evict leases.
pub async fn open_redis(settings: &Settings) -> Result<(RedisStore, RedisQueue), RedisError> {
    let pools = RedisPools::new(&settings.redis)?;
    match pools.check().await {
        Ok(Some(policy)) => tracing::warn!(
            policy,
            "redis maxmemory-policy is not noeviction: an evicted lease strands its job"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "redis is not reachable yet; retrying until it is"),
    }
    let keys = Keys::new(settings.redis.key_prefix.clone());
    let store = RedisStore::new(
        pools.clone(),
        keys.clone(),
        FleetPolicy::from_settings(settings),
    );
    Ok((
        store,
        RedisQueue::new(pools, keys, settings.queue.name.clone()),
    ))
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
}

/// Opens the Redis store and the RabbitMQ queue of `settings` (`queue.backend = "rabbitmq"`:
/// jobs travel through RabbitMQ; their state, leases and heartbeats stay in Redis). Fails only on
/// invalid settings; succeeds while the broker is down (the queue reconnects on use, with
/// backoff) and logs a warning.
pub async fn open_rabbitmq(
    settings: &Settings,
) -> Result<(RedisStore, RabbitMqQueue), BackendError> {
    let (store, _) = open_redis(settings).await?;
    let queue = RabbitMqQueue::new(&settings.rabbitmq, settings.queue.name.clone())?;
    if let Err(e) = queue.connect().await {
        tracing::warn!(error = %e, "rabbitmq is not reachable yet; retrying until it is");
    }
    Ok((store, queue))
}
