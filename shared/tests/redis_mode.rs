//! `redis.cluster` must say what the server is: a cluster node used as one Redis, or one Redis
//! used as a cluster, is refused at start-up with a message naming the setting (real servers: the
//! test Redis and the test Redis Cluster).

mod support;

use runfleet_shared::config::RedisSettings;
use runfleet_shared::redis_pool::{RedisError, RedisPools};

async fn check(url: String, cluster: bool) -> Result<Option<String>, RedisError> {
    let settings = RedisSettings {
        url,
        cluster,
        ..RedisSettings::default()
    };
    RedisPools::new(&settings).expect("settings").check().await
}

/// A permanent refusal whose message names the setting to change as `fix`.
fn assert_refused(checked: Result<Option<String>, RedisError>, fix: &str) {
    match checked {
        Err(e @ RedisError::Mode(_)) => {
            assert!(e.is_permanent());
            assert!(e.to_string().contains(fix), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cluster_node_used_as_one_redis_is_refused() {
    // The cluster must be up for the refusal to mean anything.
    support::cluster_pools().await;
    let node = support::cluster_url().split(',').next().unwrap().to_owned();
    assert_refused(check(node, false).await, "redis.cluster = true");
}

#[tokio::test]
async fn one_redis_used_as_a_cluster_is_refused() {
    support::redis_pools().await;
    assert_refused(
        check(support::redis_url(), true).await,
        "redis.cluster = false",
    );
}

#[tokio::test]
async fn each_as_it_is_is_accepted() {
    assert!(check(support::redis_url(), false).await.is_ok());
    assert!(check(support::cluster_url(), true).await.is_ok());
}
