//! Issue 2's scenario: two orchestrators and two worker nodes on one Redis. Runners started
//! through one orchestrator are seen running (spread over both nodes, positions and stats
//! moving) through the other, and stopped through it; nothing is left in the queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use runfleet_tests::{Api, Fleet, eventually};
use serde_json::{Value, json};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn workers(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_started_on_one_orchestrator_are_seen_and_stopped_through_another() {
    let fleet = Fleet::new("skeleton");
    fleet.cleanup().await;
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let _n1 = fleet.worker("worker-1", 3);
    let _n2 = fleet.worker("worker-2", 3);
    scenario(&api_a, &api_b).await;
    assert_eq!(
        fleet.queue_lengths().await,
        (0, 0),
        "queue and processing lists are empty"
    );
    fleet.cleanup().await;
}

/// The scenario on a running fleet of two orchestrators (`api_a`, `api_b`) and two nodes of
/// capacity 3 (also run over TLS with ACL users, tls.rs).
pub async fn scenario(api_a: &Api, api_b: &Api) {
    // Two runners per user needs more than the free tier's one.
    for user in USERS {
        let (code, body) = api_a
            .put_admin(
                &format!("/v1/users/{user}/entitlement"),
                &json!({"tier": "basic", "days": 30}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let mut jobs: HashMap<String, &str> = HashMap::new();
    for user in USERS {
        for strategy in ["s1", "s2"] {
            let (code, body) = api_a.start_runner(user, strategy).await;
            assert_eq!(code, 202, "{body}");
            assert_eq!(body["success"], true);
            jobs.insert(body["jobId"].as_str().unwrap().to_owned(), user);
        }
    }
    assert_eq!(jobs.len(), 6);

    // Through B: all six running, over both nodes, with heartbeats landing.
    let first = eventually(Duration::from_secs(20), "all 6 runners running", || async {
        let mut all = Vec::new();
        for user in USERS {
            let s = api_b.status(user).await;
            if s["queueStats"]["runningWorkers"] != 2 {
                return None;
            }
            all.extend(workers(&s));
        }
        Some(all)
    })
    .await;
    let nodes: HashSet<&str> = first
        .iter()
        .filter_map(|w| w["worker"]["nodeId"].as_str())
        .collect();
    assert_eq!(nodes.len(), 2, "runners spread over both nodes: {nodes:?}");

    // Positions and stats move: every runner's heartbeat advances, and trading happens.
    let before: HashMap<String, u64> = first
        .iter()
        .map(|w| {
            (
                w["worker"]["jobId"].as_str().unwrap().to_owned(),
                w["worker"]["lastHeartbeatAt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let moved = eventually(
        Duration::from_secs(20),
        "heartbeats advance and trades happen",
        || async {
            let mut all = Vec::new();
            for user in USERS {
                all.extend(workers(&api_b.status(user).await));
            }
            let advanced = all.iter().all(|w| {
                let id = w["worker"]["jobId"].as_str().unwrap();
                w["worker"]["lastHeartbeatAt"].as_u64().unwrap_or(0) > before[id]
            });
            let traded = all
                .iter()
                .filter(|w| w["stats"]["totalTrades"].as_u64().unwrap_or(0) > 0)
                .count();
            (advanced && traded == all.len()).then_some(all)
        },
    )
    .await;
    assert_eq!(moved.len(), 6);
    let with_positions = moved
        .iter()
        .filter(|w| !w["positions"].as_array().unwrap().is_empty())
        .count();
    println!("runners with open positions before stop: {with_positions}/6");

    // Stop all through B, flattening.
    let mut flattened_total = 0;
    for (job, user) in &jobs {
        let (code, body) = api_b
            .post(
                &format!("/v1/runners/{job}/stop"),
                &json!({"userId": user, "flattenPositions": true}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "stopped", "{body}");
        assert_eq!(
            body["positions"],
            json!([]),
            "flatten leaves nothing open: {body}"
        );
        flattened_total += body["flattenedPositions"].as_u64().unwrap();
    }
    println!("positions flattened at stop: {flattened_total}");

    for user in USERS {
        let s = api_a.status(user).await;
        for w in workers(&s) {
            assert_eq!(w["worker"]["status"], "stopped", "{w}");
        }
        assert_eq!(s["queueStats"]["runningWorkers"], 0);
        let (_, ent) = api_a.get(&format!("/v1/users/{user}/entitlement")).await;
        assert_eq!(ent["currentWorkers"], 0, "slots freed: {ent}");
    }
}
