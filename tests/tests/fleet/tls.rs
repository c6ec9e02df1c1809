//! Issue 17, Redis over TLS with least-privilege users: the skeleton scenario on a private
//! `redis-server` that speaks only TLS and requires client certificates, each process kind
//! logged in as its ACL user from docs/redis-schema.md; a wrong CA and a plaintext URL stop a
//! process at start-up with a clear message.

use std::time::Duration;

use runfleet_tests::{Fleet, PrivateRedis, TestCa};

use crate::walking_skeleton::scenario;

/// The `ACL SETUSER` lines of docs/redis-schema.md, for key prefix `prefix` (`K`) on one
/// Redis, unsharded (`P` is the key prefix too).
fn acl_lines(prefix: &str) -> Vec<Vec<String>> {
    acl_lines_for(prefix, prefix)
}

/// The same, with `P` (the keys' prefix, a glob for a sharded fleet) and `K`
/// (`redis.key_prefix`) apart.
fn acl_lines_for(keys: &str, prefix: &str) -> Vec<Vec<String>> {
    let doc = include_str!("../../../docs/redis-schema.md");
    let block = doc
        .split("<!-- acl-users: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- acl-users: end -->").next())
        .expect("docs/redis-schema.md has the ACL block");
    block
        .lines()
        .filter(|l| l.starts_with("ACL SETUSER"))
        .map(|l| {
            l.replace("ORCHESTRATOR_PASSWORD", "orch-pw-1")
                .replace("NODE_PASSWORD", "node-pw-1")
                .split_whitespace()
                .map(|w| {
                    // Patterns name the keys' prefix `P` or the key prefix `K`.
                    let named = |p: &str| w.split_once(p).filter(|(s, _)| s.ends_with(['~', '&']));
                    match (named("P:"), named("K:")) {
                        (Some((sigil, rest)), _) => format!("{sigil}{keys}:{rest}"),
                        (_, Some((sigil, rest))) => format!("{sigil}{prefix}:{rest}"),
                        _ => w.to_owned(),
                    }
                })
                .collect()
        })
        .collect()
}

async fn query(
    conn: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<redis::Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skeleton_runs_over_mutual_tls_with_least_privilege_users() {
    let ca = TestCa::new("tls");
    let redis = PrivateRedis::start_tls(&ca).await;
    let mut fleet = Fleet::on("tls", &redis.url());
    let prefix = fleet.prefix.clone();

    // Set up the users as an operator would, then turn the default user off.
    let mut admin = redis
        .client(&redis.url())
        .get_multiplexed_async_connection()
        .await
        .expect("TLS connection with the test CA and client certificate");
    let lines = acl_lines(&prefix);
    assert_eq!(lines.len(), 2, "an orchestrator user and a node user");
    for line in &lines {
        let args: Vec<&str> = line.iter().map(String::as_str).collect();
        query(&mut admin, &args)
            .await
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    query(
        &mut admin,
        &[
            "ACL",
            "SETUSER",
            "test-admin",
            "on",
            ">admin-pw-1",
            "~*",
            "&*",
            "+@all",
        ],
    )
    .await
    .unwrap();
    query(&mut admin, &["ACL", "SETUSER", "default", "off"])
        .await
        .unwrap();
    let url_of = |user: &str, pw: &str| format!("rediss://{user}:{pw}@127.0.0.1:{}", redis.port);

    fleet
        .set("RUNFLEET__REDIS__TLS_CA_FILE", ca.file("ca.crt"))
        .set("RUNFLEET__REDIS__TLS_CERT_FILE", ca.file("client.crt"))
        .set("RUNFLEET__REDIS__TLS_KEY_FILE", ca.file("client.key"))
        .set(
            "RUNFLEET__REDIS__URL",
            url_of("runfleet-orchestrator", "orch-pw-1"),
        );
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    fleet.set("RUNFLEET__REDIS__URL", url_of("runfleet-node", "node-pw-1"));
    let n1 = fleet.worker("worker-1", 3);
    let n2 = fleet.worker("worker-2", 3);
    scenario(&api_a, &api_b).await;
    for n in [&n1, &n2] {
        assert!(!n.output().contains("NOPERM"), "{}", n.output());
        assert!(!n.output().contains("node-pw-1"), "no password in logs");
    }

    // What the node user may not do, tried by hand.
    let mut node = redis
        .client(&url_of("runfleet-node", "node-pw-1"))
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = |k: &str| format!("{prefix}:{k}");
    let apikey = key("apikey:0123456789abcdef01234567");
    let subscription = key("user:alice:subscription");
    for (what, args) in [
        ("read an API key hash", vec!["HGETALL", apikey.as_str()]),
        (
            "change a tier",
            vec!["HSET", subscription.as_str(), "tier", "enterprise"],
        ),
        ("read the admin trail", vec!["XLEN", &*key("admin-audit")]),
        ("run CONFIG", vec!["CONFIG", "GET", "maxmemory"]),
        ("touch another prefix", vec!["GET", "other:job:x"]),
    ] {
        let err = query(&mut node, &args).await.expect_err(what);
        assert_eq!(err.code(), Some("NOPERM"), "{what}: {err}");
    }
    let tier: redis::Value = query(&mut node, &["HGET", &subscription, "tier"])
        .await
        .expect("a node reads tiers");
    assert_eq!(
        tier,
        redis::Value::BulkString(b"basic".to_vec()),
        "the scenario made alice basic"
    );

    // A wrong CA and a plaintext URL: the process stops at start-up, saying why.
    let wrong = TestCa::new("tls-wrong");
    let mut wrong_ca = Fleet::on("tls-wrong-ca", &url_of("runfleet-node", "node-pw-1"));
    wrong_ca
        .set("RUNFLEET__REDIS__TLS_CA_FILE", wrong.file("ca.crt"))
        .set("RUNFLEET__REDIS__TLS_CERT_FILE", ca.file("client.crt"))
        .set("RUNFLEET__REDIS__TLS_KEY_FILE", ca.file("client.key"));
    let plain_url = format!("redis://runfleet-node:node-pw-1@127.0.0.1:{}", redis.port);
    let plaintext = Fleet::on("tls-plaintext", &plain_url);
    for (name, f, expected) in [
        ("wrong-ca", &wrong_ca, "certificate"),
        ("plaintext", &plaintext, "rediss:// for a TLS port"),
    ] {
        let started = std::time::Instant::now();
        let mut p = f.worker(name, 1);
        let status = p.wait_exit(Duration::from_secs(15)).await;
        let out = p.output();
        println!(
            "--- {name}: {status:?} after {:?}\n{out}",
            started.elapsed()
        );
        assert!(
            status.is_some_and(|s| !s.success()),
            "{name}: must exit, not hang: {out}"
        );
        assert!(out.contains(expected), "{name}: says why: {out}");
        assert!(!out.contains("node-pw-1"), "no password in logs: {out}");
    }
}

/// A sharded fleet (4 shards, on one private Redis) with the same least-privilege users: `P`
/// is the documented glob over every shard's tag, and the wake-up channel is allowed. The
/// skeleton runs, no process is refused anything, and idle nodes are woken (their wait is on
/// the channel, so a start that reached no node would time the scenario out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_fleet_runs_with_least_privilege_users() {
    let redis = runfleet_tests::PrivateRedis::start().await;
    let mut fleet = Fleet::on("acl-sharded", &redis.url());
    fleet.set("RUNFLEET__REDIS__SHARDS", "4");
    let prefix = fleet.prefix.clone();
    let mut admin = redis
        .client(&redis.url())
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    for line in acl_lines_for(&format!("{prefix}:{{{prefix}.*}}"), &prefix) {
        let args: Vec<&str> = line.iter().map(String::as_str).collect();
        query(&mut admin, &args)
            .await
            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
    }
    let url_of = |user: &str, pw: &str| format!("redis://{user}:{pw}@127.0.0.1:{}", redis.port);
    fleet.set(
        "RUNFLEET__REDIS__URL",
        url_of("runfleet-orchestrator", "orch-pw-1"),
    );
    let (a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (b, api_b) = fleet.orchestrator("orchestrator-b").await;
    fleet.set("RUNFLEET__REDIS__URL", url_of("runfleet-node", "node-pw-1"));
    let n1 = fleet.worker("worker-1", 3);
    let n2 = fleet.worker("worker-2", 3);
    scenario(&api_a, &api_b).await;
    for p in [&a, &b, &n1, &n2] {
        let out = p.output();
        assert!(!out.contains("NOPERM"), "{out}");
        assert!(
            !out.contains("cannot check the fleet's shard count"),
            "{out}"
        );
    }
    let shards: redis::Value = query(&mut admin, &["GET", &format!("{prefix}:shards")])
        .await
        .unwrap();
    assert_eq!(shards, redis::Value::BulkString(b"4".to_vec()), "recorded");
}
