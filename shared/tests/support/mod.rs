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
    redis_pools_at(&redis_url()).await
}

/// Pools on the Redis at `url`, after checking it answers (as [`redis_pools`]).
pub async fn redis_pools_at(url: &str) -> RedisPools {
    let settings = RedisSettings {
        url: url.to_owned(),
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

/// The test Redis Cluster's seed nodes: `RUNFLEET_TEST_CLUSTER_URL` (comma-separated), or the
/// one `scripts/test` starts (`scripts/redis-cluster start 7101 target/redis-cluster`).
pub fn cluster_url() -> String {
    std::env::var("RUNFLEET_TEST_CLUSTER_URL").unwrap_or_else(|_| {
        "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".into()
    })
}

/// Pools on the test Redis Cluster, after checking it answers. Panics with a clear message if
/// not: these tests must never pass by skipping.
pub async fn cluster_pools() -> RedisPools {
    let settings = RedisSettings {
        url: cluster_url(),
        cluster: true,
        ..RedisSettings::default()
    };
    let pools = RedisPools::new(&settings).expect("redis cluster settings");
    if let Err(e) = pools.check().await {
        panic!(
            "this test needs a real Redis Cluster at {} and could not reach it ({e}). Start one \
             (`scripts/test` does: `scripts/redis-cluster start 7101 target/redis-cluster`), or \
             point RUNFLEET_TEST_CLUSTER_URL at one.",
            settings.url
        );
    }
    pools
}

/// A clustered key prefix (one hash tag) no other test uses.
pub fn unique_cluster_keys() -> Keys {
    Keys::clustered(&format!("rftest-{}", uuid::Uuid::new_v4().simple()))
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

/// A private `redis-server` of one test, killed (with its data) when dropped.
pub struct PrivateServer {
    child: std::process::Child,
    /// Its URL.
    pub url: String,
}

impl PrivateServer {
    /// One without Redis Functions (`FCALL` and `FUNCTION` renamed away), as Redis 6.2 and
    /// some compatible services are: the store must run its scripts with EVAL there.
    pub async fn without_functions() -> Self {
        Self::start(&[
            "--rename-command",
            "FCALL",
            "",
            "--rename-command",
            "FUNCTION",
            "",
        ])
        .await
    }

    /// Starts one on a free loopback port with `extra` arguments, and waits until it answers.
    /// Panics with a clear message when `redis-server` is not installed: these tests never pass
    /// by skipping.
    // The child is killed and waited for in `Drop`, which the lint cannot see.
    #[allow(clippy::zombie_processes)]
    pub async fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test starts its own redis-server and could not ({e}): install Redis")
            });
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("a redis URL");
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Self { child, url };
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("the private redis-server on port {port} did not answer within 5 s");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
