//! Issue 6: limits that hold across orchestrators under concurrent starts, and credentials that
//! never appear in Redis, logs or answers.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use runfleet_tests::{Fleet, eventually, start_request};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_through_two_orchestrators_never_exceed_a_limit() {
    concurrent_starts_on(Fleet::new("concurrent"), 10).await;
}

/// `rounds` rounds of 200 + 200 concurrent starts, for a free and a basic user, through two
/// orchestrators of `fleet`: exactly the tier's limit is admitted each time.
pub(crate) async fn concurrent_starts_on(fleet: Fleet, rounds: usize) {
    let _heavy = runfleet_tests::heavy().await;
    fleet.cleanup().await;
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    const STARTS: usize = 200;
    for round in 0..rounds {
        let (free, basic) = (format!("free-{round}"), format!("basic-{round}"));
        let (code, body) = api_a
            .put_admin(
                &format!("/v1/users/{basic}/entitlement"),
                &json!({"tier": "basic", "days": 1}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let requests = (0..STARTS).flat_map(|i| {
            [(free.clone(), i), (basic.clone(), i)]
                .into_iter()
                .map(|(user, i)| {
                    let api = if i % 2 == 0 {
                        api_a.clone()
                    } else {
                        api_b.clone()
                    };
                    async move {
                        (
                            user.clone(),
                            api.start_runner(&user, &format!("s{i}")).await,
                        )
                    }
                })
        });
        let mut accepted: HashMap<String, usize> = HashMap::new();
        let mut other = Vec::new();
        for (user, (code, body)) in join_all(requests).await {
            match code {
                202 => *accepted.entry(user).or_default() += 1,
                403 if body["error"]["code"] == "runner_limit_reached" => {}
                _ => other.push((code, body)),
            }
        }
        assert!(
            other.is_empty(),
            "round {round}: unexpected answers {other:?}"
        );
        println!(
            "round {round}: {STARTS}+{STARTS} concurrent starts over 2 orchestrators, accepted {accepted:?}"
        );
        assert_eq!(accepted.get(&free), Some(&1), "free: exactly 1");
        assert_eq!(accepted.get(&basic), Some(&3), "basic: exactly 3");
        for (user, limit) in [(&free, 1), (&basic, 3)] {
            let (_, ent) = api_b.get(&format!("/v1/users/{user}/entitlement")).await;
            assert_eq!(ent["currentWorkers"], limit, "{ent}");
            assert_eq!(
                api_b.status(user).await["workers"]
                    .as_array()
                    .unwrap()
                    .len(),
                limit,
                "nothing else was written"
            );
        }
    }
    fleet.cleanup().await;
}

/// Every value of every key in the Redis, as text.
async fn dump_redis(r: &mut redis::aio::MultiplexedConnection) -> String {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(r).await.unwrap();
    let mut out = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(r).await.unwrap();
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).query_async(r).await.unwrap(),
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(r)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(r)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(r)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(r)
                .await
                .unwrap(),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(r)
                .await
                .unwrap(),
            _ => redis::Value::Nil, // the key expired between KEYS and TYPE
        };
        out.push_str(&key);
        out.push_str(&format!("{value:?}"));
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_redis_logs_or_answers() {
    const API_KEY: &str = "AKIA-SCANME-7f3c2b";
    const SECRET: &str = "SECRET-SCANME-91ab4e";
    let mut fleet = Fleet::new("secrets");
    fleet.set("RUST_LOG", "debug");
    fleet.cleanup().await;
    let (orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let worker = fleet.worker("worker", 4);
    let user_api = api.with_key(Some(&api.user_key("sam").await));

    let mut request = start_request("sam", "s1");
    request["credentials"] = json!({"apiKey": API_KEY, "apiSecret": SECRET});
    let (code, started) = user_api.post("/v1/runners", &request).await;
    assert_eq!(code, 202, "{started}");
    let job = started["jobId"].as_str().unwrap().to_owned();
    let status = eventually(Duration::from_secs(15), "runner running", || async {
        let s = user_api.status("sam").await;
        (s["workers"][0]["worker"]["status"] == "running").then_some(s)
    })
    .await;
    let (_, one) = user_api.get(&format!("/v1/runners/{job}")).await;
    let (_, stopped) = user_api
        .post(
            &format!("/v1/runners/{job}/stop"),
            &json!({"flattenPositions": true}),
        )
        .await;
    let answers = format!("{started}{status}{one}{stopped}");

    let mut r = fleet.redis().await;
    // The scan finds a secret when there is one: plant a canary, then take it away.
    let canary = format!("{}:canary", fleet.prefix);
    let _: () = redis::cmd("SET")
        .arg(&canary)
        .arg(format!("x{SECRET}x"))
        .query_async(&mut r)
        .await
        .unwrap();
    assert!(
        dump_redis(&mut r).await.contains(SECRET),
        "the scan must see a planted secret"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&canary)
        .query_async(&mut r)
        .await
        .unwrap();

    let stored = dump_redis(&mut r).await;
    assert!(
        stored.contains(&job) && stored.contains("ciphertext"),
        "the job and its sealed credentials are stored"
    );
    let logs = format!("{}{}", orchestrator.output(), worker.output());
    assert!(logs.contains(&job), "the logs were captured");
    for secret in [API_KEY, SECRET] {
        assert!(!stored.contains(secret), "{secret} found in Redis");
        assert!(!logs.contains(secret), "{secret} found in the logs");
        assert!(!answers.contains(secret), "{secret} found in an API answer");
    }
    println!(
        "scanned {} bytes of Redis values and {} bytes of debug logs: no credentials",
        stored.len(),
        logs.len()
    );
    fleet.cleanup().await;
}
