//! Issue 7's whole-fleet scenario: the walking skeleton's start/status/stop flow with
//! `queue.backend = rabbitmq`. Two orchestrators and two worker nodes; jobs travel through a
//! RabbitMQ queue of the test's own, state stays in Redis. A job stopped while it waits in the
//! broker (which cannot remove a message) is dropped when a node claims it and never runs. The
//! queue depth is read from the broker, through the API and directly.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use runfleet_shared::config::RabbitMqSettings;
use runfleet_shared::ids::JobId;
use runfleet_shared::queue::{JobQueue, RabbitMqQueue};
use runfleet_tests::{Fleet, eventually};
use serde_json::{Value, json};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

/// The RabbitMQ the tests use: `RUNFLEET_TEST_AMQP_URL`, or the local default.
pub fn amqp_url() -> String {
    std::env::var("RUNFLEET_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The fleet's queue on the test broker, connected; a clear panic when there is no broker.
pub async fn broker_queue(name: &str) -> RabbitMqQueue {
    let settings = RabbitMqSettings {
        url: amqp_url(),
        ..RabbitMqSettings::default()
    };
    let queue = RabbitMqQueue::new(&settings, name).expect("rabbitmq settings");
    if let Err(e) = queue.connect().await {
        panic!(
            "this test needs a real RabbitMQ and could not reach it ({e}). Run `scripts/test`, \
             which starts one, or set RUNFLEET_TEST_AMQP_URL."
        );
    }
    queue
}

fn workers(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skeleton_scenario_runs_with_rabbitmq_selected() {
    skeleton_on(Fleet::new("rabbitmq")).await;
}

/// The skeleton scenario with RabbitMQ as the queue of `fleet` (its state stays in Redis, one
/// server's or a cluster's).
pub(crate) async fn skeleton_on(mut fleet: Fleet) {
    let queue_name = format!("{}-jobs", fleet.prefix);
    fleet
        .set("RUNFLEET__QUEUE__BACKEND", "rabbitmq")
        .set("RUNFLEET__QUEUE__NAME", queue_name.clone())
        .set("RUNFLEET__RABBITMQ__URL", amqp_url());
    fleet.cleanup().await;
    let broker = broker_queue(&queue_name).await;
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let mut n1 = fleet.worker("worker-1", 3);
    let mut n2 = fleet.worker("worker-2", 3);

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
            jobs.insert(body["jobId"].as_str().unwrap().to_owned(), user);
        }
    }

    // Through B: all six running, over both nodes (3 + 3: their whole capacity).
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

    // Heartbeats land and trades happen.
    let before: HashMap<String, u64> = first
        .iter()
        .map(|w| {
            (
                w["worker"]["jobId"].as_str().unwrap().to_owned(),
                w["worker"]["lastHeartbeatAt"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    eventually(
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
            (advanced && traded == all.len()).then_some(())
        },
    )
    .await;

    // Every slot of the fleet is taken: a seventh job waits in the broker, and the depth the
    // orchestrator reports comes from there.
    let (code, body) = api_a.start_runner("dave", "s1").await;
    assert_eq!(code, 202, "{body}");
    let waiting = body["jobId"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "one job waits in the broker",
        || async {
            let (code, body) = api_b.get("/v1/nodes").await;
            (code == 200 && body["queuedJobs"] == 1).then_some(())
        },
    )
    .await;
    assert_eq!(broker.depth().await.unwrap(), 1);

    // Stopped while queued: answered at once; the broker still holds the message.
    let (code, body) = api_b
        .post(
            &format!("/v1/runners/{waiting}/stop"),
            &json!({"userId": "dave", "flattenPositions": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "stopped", "{body}");
    assert_eq!(broker.depth().await.unwrap(), 1, "AMQP cannot remove it");

    // Stop the six through B, flattening.
    for (job, user) in &jobs {
        let (code, body) = api_b
            .post(
                &format!("/v1/runners/{job}/stop"),
                &json!({"userId": user, "flattenPositions": true}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["status"], "stopped", "{body}");
        assert_eq!(body["positions"], json!([]), "{body}");
    }
    for user in USERS {
        let s = api_a.status(user).await;
        for w in workers(&s) {
            assert_eq!(w["worker"]["status"], "stopped", "{w}");
        }
        assert_eq!(s["queueStats"]["runningWorkers"], 0);
        let (_, ent) = api_a.get(&format!("/v1/users/{user}/entitlement")).await;
        assert_eq!(ent["currentWorkers"], 0, "slots freed: {ent}");
    }

    // With slots free, a node claims the stopped job's message and drops it unrun.
    eventually(
        Duration::from_secs(10),
        "the stopped job's message is consumed",
        || async { (broker.depth().await.ok()? == 0).then_some(()) },
    )
    .await;
    let record: HashMap<String, String> = ::redis::cmd("HGETALL")
        .arg(fleet.keys_of(&waiting).job(&JobId::new(waiting.clone())))
        .query_async(&mut fleet.conn().await)
        .await
        .unwrap();
    assert_eq!(record.get("status").map(String::as_str), Some("stopped"));
    assert!(
        record.get("epoch").is_none_or(|e| e == "0"),
        "the stopped job was never claimed: {record:?}"
    );
    let dave = api_a.status("dave").await;
    assert_eq!(dave["queueStats"]["runningWorkers"], 0, "{dave}");

    // The nodes leave nothing behind: once they are gone (a node's unacked deliveries would
    // go back to the queue when its connection closes), the broker's queue is empty.
    n1.signal("TERM");
    n2.signal("TERM");
    assert!(n1.wait_exit(Duration::from_secs(10)).await.is_some());
    assert!(n2.wait_exit(Duration::from_secs(10)).await.is_some());
    let (code, body) = api_a.get("/v1/nodes").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["queuedJobs"], 0, "{body}");
    assert_eq!(broker.depth().await.unwrap(), 0);
    println!("rabbitmq scenario: 6 runners over 2 nodes, 1 stopped while queued and dropped");

    broker.delete().await.unwrap();
    broker.close().await;
    fleet.cleanup().await;
}
