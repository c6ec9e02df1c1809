//! Test support for tests that need real services: connection settings from the environment,
//! a unique key prefix per test, and a loud failure when the service is missing.

#![allow(dead_code)]

use runfleet::config::RedisSettings;
use runfleet::keys::Keys;
use runfleet::redis_pool::RedisPools;

/// The Redis the tests use: `RUNFLEET_TEST_REDIS_URL`, or the local default.
pub fn redis_url() -> String {
    std::env::var("RUNFLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Pools on the test Redis, after checking it answers. Panics with a clear message if not:
/// these tests must never pass by skipping.
pub async fn redis_pools() -> RedisPools {
    let settings = RedisSettings {
        url: redis_url(),
        ..RedisSettings::default()
    };
    let pools = RedisPools::new(&settings).expect("redis pool settings");
    if let Err(e) = pools.check().await {
        panic!(
            "this test needs a real Redis at {} and could not reach it ({e}). Start one \
             (`scripts/test` does), or point RUNFLEET_TEST_REDIS_URL at one.",
            settings.url
        );
    }
    pools
}

/// A key prefix no other test uses.
pub fn unique_keys() -> Keys {
    Keys::new(format!("rftest-{}", uuid::Uuid::new_v4().simple()))
}

/// Deletes every key under `keys`' prefix.
pub async fn cleanup(pools: &RedisPools, keys: &Keys) {
    let mut conn = pools.commands.get().await.expect("redis connection");
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", keys.prefix()))
        .query_async(&mut *conn)
        .await
        .expect("KEYS");
    if !found.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&found)
            .query_async(&mut *conn)
            .await
            .expect("DEL");
    }
}
