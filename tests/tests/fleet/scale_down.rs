//! Issue 11: the scale-down drill. What Kubernetes (or `docker compose up --scale`) does to a
//! worker node on every scale-down: SIGTERM to a node that runs many runners. It must hand every
//! one back within its shutdown deadline, and the nodes that remain must take them all, each as
//! a fresh claim (epoch + 1) that is not counted as a restart, with nothing lost.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use runfleet_tests::{Api, Fleet, assert_one_live_epoch_at_a_time, eventually};
use serde_json::{Value, json};

/// `shutdown.deadline_ms` of test fleets.
const DEADLINE: Duration = Duration::from_secs(5);

/// Runners on the node that is scaled down.
const RUNNERS: usize = 20;

fn node_of(w: &Value) -> String {
    w["worker"]["nodeId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Every runner of `user`, once all `RUNNERS` of them run with `epoch` and have heartbeated
/// since they started.
async fn all_running_with_epoch(api: &Api, user: &str, epoch: u64, within: Duration) -> Vec<Value> {
    eventually(
        within,
        &format!("{RUNNERS} runners of {user} running with epoch {epoch}, heartbeating"),
        || async {
            let ws = api.status(user).await["workers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ok = ws.len() == RUNNERS
                && ws.iter().all(|w| {
                    w["worker"]["status"] == "running"
                        && w["worker"]["epoch"] == epoch
                        && w["worker"]["lastHeartbeatAt"].as_u64()
                            > w["worker"]["startedAt"].as_u64()
                });
            ok.then_some(ws)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_scaled_down_with_20_runners_hands_all_back_to_the_remaining_nodes() {
    let fleet = Fleet::new("scale-down");
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let user = "sela";
    let (code, body) = api
        .put_admin(
            &format!("/v1/users/{user}/entitlement"),
            &json!({"tier": "enterprise", "days": 1}),
        )
        .await;
    assert_eq!(code, 200, "{body}");

    // Every runner on one node first: the other two start only once it holds all of them.
    let mut leaving = fleet.worker("worker-leaving", RUNNERS);
    for i in 0..RUNNERS {
        let (code, body) = api.start_runner(user, &format!("s{i}")).await;
        assert_eq!(code, 202, "{body}");
    }
    let before = all_running_with_epoch(&api, user, 1, Duration::from_secs(30)).await;
    let leaving_node = node_of(&before[0]);
    assert!(
        before.iter().all(|w| node_of(w) == leaving_node),
        "all {RUNNERS} on one node"
    );
    // Room for exactly all of them between the two that remain.
    let staying_a = fleet.worker("worker-staying-a", RUNNERS / 2);
    let staying_b = fleet.worker("worker-staying-b", RUNNERS / 2);
    // Both have registered (heartbeated) before the scale-down, as in a running fleet.
    eventually(
        Duration::from_secs(15),
        "the two remaining nodes are up",
        || async {
            let logs = [&staying_a, &staying_b];
            logs.iter()
                .all(|p| p.output().contains("worker node started"))
                .then_some(())
        },
    )
    .await;

    let sent = Instant::now();
    leaving.signal("TERM");
    let status = leaving.wait_exit(DEADLINE).await.unwrap_or_else(|| {
        panic!(
            "not exited within the shutdown deadline\n{}",
            leaving.output()
        )
    });
    let exited = sent.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        leaving.output()
    );
    let after = all_running_with_epoch(&api, user, 2, Duration::from_secs(30)).await;
    let took = sent.elapsed();

    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for w in &after {
        assert_ne!(node_of(w), leaving_node, "{w}");
        assert_eq!(w["worker"]["restarts"], 0, "a hand-back is no crash: {w}");
        assert!(w["worker"]["error"].is_null(), "{w}");
        *per_node.entry(node_of(w)).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        2,
        "both remaining nodes took some: {per_node:?}"
    );
    println!(
        "scale-down of a node running {RUNNERS} runners: exited 0 after {exited:?} (deadline \
         {DEADLINE:?}); all {RUNNERS} running elsewhere {took:?} after SIGTERM, split \
         {:?} (claim wait 200 ms, heartbeat 200 ms)",
        per_node.values().collect::<Vec<_>>()
    );

    // Handed back one by one, not left to expire: the node said so for each, Redis recorded a
    // hand-back for each, and nothing is left in any queue list.
    let log = leaving.output();
    assert_eq!(
        log.matches("job handed back to the queue").count(),
        RUNNERS,
        "{log}"
    );
    let audit = fleet.audit().await;
    let handed_back: HashSet<&str> = audit
        .iter()
        .filter(|e| e.op == "hand_back" && e.node == leaving_node && e.epoch == 1)
        .map(|e| e.job.as_str())
        .collect();
    assert_eq!(handed_back.len(), RUNNERS, "{audit:?}");
    let epochs = assert_one_live_epoch_at_a_time(&audit);
    assert_eq!(epochs.len(), RUNNERS, "none lost: {epochs:?}");
    assert!(epochs.values().all(|n| *n == 2), "{epochs:?}");
    assert_eq!(fleet.queue_lengths().await, (0, 0));
    fleet.cleanup().await;
}
