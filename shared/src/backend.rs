//! Connecting a process to the fleet's shared backend, the same way in every binary.

use crate::config::Settings;
use crate::keys::Keys;
use crate::queue::RedisQueue;
use crate::redis_pool::{RedisError, RedisPools};
use crate::store::RedisStore;

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
    let store = RedisStore::new(pools.clone(), keys.clone());
    Ok((
        store,
        RedisQueue::new(pools, keys, settings.queue.name.clone()),
    ))
}
