//! Redis connections: one pool for short commands and one for blocking pops.
//!
//! redis-rs gives async connections a 500 ms response timeout by default, shorter than a claim
//! that blocks for a second or more; a blocking pop on a shared multiplexed connection would also
//! stall every command queued behind it. So blocking pops (BLMOVE, BLPOP) take a connection of
//! their own from a second pool whose response timeout exceeds the longest block.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

use crate::config::RedisSettings;

/// The longest any blocking pop in runfleet blocks. Callers clamp their waits to this.
pub const MAX_BLOCK: Duration = Duration::from_secs(10);

/// Why a Redis operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The command failed or the connection broke.
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    /// No pooled connection could be had in time (Redis down or overloaded).
    #[error("redis pool: {0}")]
    Pool(String),
    /// Redis answered something runfleet did not write (a bug or a foreign writer).
    #[error("unexpected data in redis: {0}")]
    Data(String),
}

impl From<deadpool_redis::PoolError> for RedisError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        RedisError::Pool(e.to_string())
    }
}

/// The two connection pools of a process.
#[derive(Clone)]
pub struct RedisPools {
    /// Short commands and scripts.
    pub commands: Pool,
    /// Blocking pops only.
    pub blocking: Pool,
}

impl std::fmt::Debug for RedisPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPools")
            .field("commands", &self.commands.status())
            .field("blocking", &self.blocking.status())
            .finish()
    }
}

impl RedisPools {
    /// Builds both pools. Connections open lazily, so this succeeds while Redis is down.
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisError> {
        let connect = Some(Duration::from_millis(settings.connect_timeout_ms));
        let short = AsyncConnectionConfig::new()
            .set_connection_timeout(connect)
            .set_response_timeout(Some(Duration::from_millis(settings.response_timeout_ms)));
        let long = AsyncConnectionConfig::new()
            .set_connection_timeout(connect)
            .set_response_timeout(Some(MAX_BLOCK + Duration::from_secs(5)));
        let wait = Some(Duration::from_millis(settings.wait_timeout_ms));
        let build = |config, size| -> Result<Pool, RedisError> {
            let manager = Manager::new_with_config(settings.url.as_str(), config)?;
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(wait)
                .create_timeout(connect)
                .recycle_timeout(connect)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| RedisError::Pool(e.to_string()))
        };
        Ok(Self {
            commands: build(short, settings.pool_size)?,
            blocking: build(long, settings.blocking_pool_size)?,
        })
    }

    /// Checks that Redis answers and is configured so that leases cannot be evicted.
    /// Returns the `maxmemory-policy` found, as a warning for the caller to log when it is
    /// not `noeviction`.
    pub async fn check(&self) -> Result<Option<String>, RedisError> {
        let mut conn = self.commands.get().await?;
        let (_, policy): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut *conn)
            .await
            .unwrap_or_default();
        Ok((policy != "noeviction" && !policy.is_empty()).then_some(policy))
    }
}

/// Seconds for a blocking Redis command, clamped to `(0.01 s, MAX_BLOCK]`.
pub fn block_seconds(wait: Duration) -> f64 {
    wait.clamp(Duration::from_millis(10), MAX_BLOCK)
        .as_secs_f64()
}
