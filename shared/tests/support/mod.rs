//! Test support for tests that need real services: connection settings from the environment,
//! a unique key prefix or queue name per test, and a loud failure when the service is missing.

#![allow(dead_code)]

#[cfg(feature = "rabbitmq")]
use runfleet_shared::config::RabbitMqSettings;
use runfleet_shared::config::RedisSettings;
use runfleet_shared::keys::Keys;
#[cfg(feature = "rabbitmq")]
use runfleet_shared::queue::RabbitMqQueue;
use runfleet_shared::redis_pool::RedisPools;

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

/// The RabbitMQ the tests use: `RUNFLEET_TEST_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("RUNFLEET_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// RabbitMQ settings for tests: the test broker, short timeouts.
#[cfg(feature = "rabbitmq")]
pub fn rabbitmq_settings() -> RabbitMqSettings {
    RabbitMqSettings {
        url: amqp_url(),
        connect_timeout_ms: 3_000,
        ..RabbitMqSettings::default()
    }
}

/// A queue name no other test uses.
pub fn unique_queue_name() -> String {
    format!("rftest-{}", uuid::Uuid::new_v4().simple())
}

/// The queue `name` on the test RabbitMQ, connected and declared. Panics with a clear message
/// if the broker cannot be reached: these tests must never pass by skipping.
#[cfg(feature = "rabbitmq")]
pub async fn rabbitmq_queue(name: &str) -> RabbitMqQueue {
    let queue = RabbitMqQueue::new(&rabbitmq_settings(), name).expect("rabbitmq settings");
    if let Err(e) = queue.connect().await {
        panic!(
            "this test needs a real RabbitMQ at {} and could not reach it ({e}). Start one \
             (`scripts/test` does), or point RUNFLEET_TEST_AMQP_URL at one.",
            amqp_url().split('@').next_back().unwrap_or_default()
        );
    }
    queue
}

/// Runs `rabbitmqctl <args>` on the test broker, bounded to 60 s; returns its output. Panics
/// with a clear message when it fails. The command is `RUNFLEET_TEST_RABBITMQCTL` (split on
/// spaces, e.g. `sudo -n rabbitmqctl` or `docker compose exec -T rabbitmq rabbitmqctl`), else
/// `/usr/sbin/rabbitmqctl`, else `rabbitmqctl` on `PATH`.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let ctl = std::env::var("RUNFLEET_TEST_RABBITMQCTL").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/rabbitmqctl").exists() {
            "/usr/sbin/rabbitmqctl".into()
        } else {
            "rabbitmqctl".into()
        }
    });
    let out = std::process::Command::new("timeout")
        .arg("60")
        .args(ctl.split_whitespace())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {ctl}: {e}"));
    assert!(
        out.status.success(),
        "this test drives the local RabbitMQ with `{ctl} {}` and it failed ({}): {}{}; set \
         RUNFLEET_TEST_RABBITMQCTL to a working rabbitmqctl",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
