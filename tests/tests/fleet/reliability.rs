//! Issue 5: leases with fencing, crash detection in one sweep, restarts, self-fencing, Redis
//! outages. The real binaries; fault injection with signals and a private redis-server.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use runfleet_tests::{Api, Fleet, PrivateRedis, assert_one_live_epoch_at_a_time, eventually};
use serde_json::{Value, json};

/// Lease of test fleets (`RUNFLEET__HEARTBEAT__LEASE_MS`).
const LEASE: Duration = Duration::from_secs(3);

pub(crate) async fn workers_of(api: &Api, user: &str) -> Vec<Value> {
    api.status(user).await["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until every runner of `user` runs with an epoch above `min_epoch`; returns them.
pub(crate) async fn all_running(
    api: &Api,
    user: &str,
    count: usize,
    min_epoch: u64,
    within: Duration,
) -> Vec<Value> {
    eventually(
        within,
        &format!("{count} runners of {user} running with epoch > {min_epoch}"),
        || async {
            let ws = workers_of(api, user).await;
            let ok = ws.len() == count
                && ws.iter().all(|w| {
                    w["worker"]["status"] == "running"
                        && w["worker"]["epoch"].as_u64().unwrap_or(0) > min_epoch
                        && w["worker"]["lastHeartbeatAt"].as_u64()
                            > w["worker"]["startedAt"].as_u64()
                });
            ok.then_some(ws)
        },
    )
    .await
}

pub(crate) fn node_of(w: &Value) -> String {
    w["worker"]["nodeId"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub(crate) async fn start_runners(api: &Api, user: &str, n: usize) {
    api.grant(user, "pro").await;
    for i in 0..n {
        let (code, body) = api.start_runner(user, &format!("s{i}")).await;
        assert_eq!(code, 202, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_every_runner_runs_again_on_the_other_node() {
    kill_9_on(Fleet::new("kill9")).await;
}

/// A node of `fleet` killed with SIGKILL: its 3 runners run again on the other, none lost,
/// never two live epochs of one runner at a time.
pub(crate) async fn kill_9_on(fleet: Fleet) {
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let mut doomed = fleet.worker("worker-doomed", 8);
    start_runners(&api, "mara", 3).await;
    let before = all_running(&api, "mara", 3, 0, Duration::from_secs(15)).await;
    let dead_node = node_of(&before[0]);
    let _survivor = fleet.worker("worker-survivor", 8);

    let killed = Instant::now();
    doomed.signal("KILL");
    doomed
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
    let after = all_running(&api, "mara", 3, 1, LEASE + Duration::from_secs(10)).await;
    let took = killed.elapsed();
    println!(
        "kill -9 to all 3 runners running again elsewhere: {took:?} (lease {LEASE:?}, sweep 200 ms, restart delay 100 ms)"
    );
    for w in &after {
        assert_ne!(node_of(w), dead_node, "{w}");
        assert_eq!(w["worker"]["epoch"], 2, "claimed exactly once more: {w}");
        assert_eq!(w["worker"]["restarts"], 1);
        assert!(
            w["worker"]["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no heartbeat"),
            "{w}"
        );
    }
    let epochs = assert_one_live_epoch_at_a_time(&fleet.audit().await);
    assert_eq!(epochs.len(), 3, "none lost");
    assert!(epochs.values().all(|n| *n == 2), "{epochs:?}");
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_comes_back_to_find_its_runners_moved_and_its_writes_refused() {
    let fleet = Fleet::new("sigstop");
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let paused = fleet.worker("worker-paused", 8);
    start_runners(&api, "nils", 2).await;
    let before = all_running(&api, "nils", 2, 0, Duration::from_secs(15)).await;
    let paused_node = node_of(&before[0]);
    let _other = fleet.worker("worker-other", 8);

    paused.signal("STOP");
    tokio::time::sleep(LEASE * 2).await;
    let moved = all_running(&api, "nils", 2, 1, Duration::from_secs(10)).await;
    assert!(moved.iter().all(|w| node_of(w) != paused_node));
    paused.signal("CONT");
    // Give the paused node time to wake up, try its stale writes and fence its runners.
    let log = eventually(
        Duration::from_secs(10),
        "the paused node fences its runners",
        || async {
            let out = paused.output();
            (out.matches("runner fenced off").count() >= 2).then_some(out)
        },
    )
    .await;
    assert!(!log.contains("panicked"), "{log}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let audit = fleet.audit().await;
    let epochs = assert_one_live_epoch_at_a_time(&audit);
    assert!(epochs.values().all(|n| *n == 2), "{epochs:?}");
    // After the new claims, nothing written by the paused node was accepted.
    let first_new_claim = audit
        .iter()
        .position(|e| e.op == "claim" && e.epoch == 2)
        .expect("new claims");
    let late: Vec<_> = audit[first_new_claim..]
        .iter()
        .filter(|e| e.node == paused_node)
        .collect();
    assert!(
        late.is_empty(),
        "late writes of the paused node were accepted: {late:?}"
    );
    // The moved runners were not disturbed.
    let still = all_running(&api, "nils", 2, 1, Duration::from_secs(5)).await;
    assert_eq!(
        still
            .iter()
            .map(|w| w["worker"]["epoch"].as_u64())
            .collect::<Vec<_>>(),
        vec![Some(2), Some(2)]
    );
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_survived_and_the_fleet_converges() {
    let mut redis = PrivateRedis::start().await;
    let fleet = Fleet::on("outage", &redis.url());
    let (mut orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let mut w1 = fleet.worker("worker-1", 8);
    let mut w2 = fleet.worker("worker-2", 8);
    start_runners(&api, "omar", 4).await;
    all_running(&api, "omar", 4, 0, Duration::from_secs(15)).await;

    redis.stop();
    let down = Instant::now();
    let (code, body) = api.get("/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(api.get("/v1/users/omar/runners").await.0, 503);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    for p in [&mut orchestrator, &mut w1, &mut w2] {
        assert!(
            p.wait_exit(Duration::ZERO).await.is_none(),
            "{} exited during the outage:\n{}",
            p.name,
            p.output()
        );
    }
    redis.restart().await;
    let back = Instant::now();

    api.wait_healthy(Duration::from_secs(15))
        .await
        .expect("the orchestrator recovers by itself");
    let converged = all_running(&api, "omar", 4, 1, Duration::from_secs(30)).await;
    println!("fleet converged {:?} after Redis came back", back.elapsed());
    let nodes: HashMap<String, usize> = converged.iter().fold(HashMap::new(), |mut m, w| {
        *m.entry(node_of(w)).or_default() += 1;
        m
    });
    println!("runners per node after the outage: {nodes:?}");
    assert_one_live_epoch_at_a_time(&fleet.audit().await);
    for p in [&mut orchestrator, &mut w1, &mut w2] {
        assert!(
            p.wait_exit(Duration::ZERO).await.is_none(),
            "{} exited:\n{}",
            p.name,
            p.output()
        );
        assert!(
            !p.output().contains("panicked"),
            "{} panicked:\n{}",
            p.name,
            p.output()
        );
    }
    assert!(
        w1.output().contains("taking a new node id")
            || w2.output().contains("taking a new node id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_that_always_panics_is_restarted_a_bounded_number_of_times_then_cut_off() {
    let mut fleet = Fleet::new("panics");
    fleet
        .set("RUNFLEET__TESTING__TEST_STRATEGIES", "true")
        .set("RUNFLEET__BREAKER__FAILURES", "4");
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let _node = fleet.worker("worker", 8);

    let (code, body) = api.start_runner("vera", "steady").await;
    assert_eq!(code, 202, "{body}");
    let steady = all_running(&api, "vera", 1, 0, Duration::from_secs(15)).await;

    api.put_admin(
        "/v1/users/chaos/entitlement",
        &json!({"tier": "pro", "days": 1}),
    )
    .await;
    let mut boom = runfleet_tests::start_request("chaos", "boom");
    boom["config"]["type"] = json!("panic-test");
    boom["config"]["parameters"] = json!({"panicAfterTicks": 5});
    let (code, body) = api.post("/v1/runners", &boom).await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_str().unwrap().to_owned();

    let failed = eventually(
        Duration::from_secs(30),
        "the panicking job fails for good",
        || async {
            let ws = workers_of(&api, "chaos").await;
            let w = ws
                .into_iter()
                .find(|w| w["worker"]["jobId"] == job.as_str())?;
            (w["worker"]["status"] == "failed").then_some(w)
        },
    )
    .await;
    let error = failed["worker"]["error"].as_str().unwrap_or_default();
    println!(
        "panicking job: restarts {}, epoch {}, error: {error}",
        failed["worker"]["restarts"], failed["worker"]["epoch"]
    );
    assert_eq!(failed["worker"]["restarts"], 3, "{failed}");
    assert_eq!(failed["worker"]["epoch"], 4, "ran 1 + 3 times: {failed}");
    assert!(
        error.contains("panicked") && error.contains("3 restarts"),
        "{error}"
    );

    let (code, body) = api.post("/v1/runners", &boom).await;
    assert_eq!(code, 503, "the breaker refuses the strategy: {body}");
    assert_eq!(body["error"]["code"], "circuit_open");
    assert!(
        body["error"]["retryAfterSeconds"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
    let (code, body) = api.start_runner("chaos", "calm").await;
    assert_eq!(
        code, 202,
        "other strategies of the same user still start: {body}"
    );

    let after = all_running(&api, "vera", 1, 0, Duration::from_secs(5)).await;
    assert_eq!(
        after[0]["worker"]["epoch"], steady[0]["worker"]["epoch"],
        "other users' runners untouched"
    );
    assert_eq!(after[0]["worker"]["restarts"], 0);
    assert_one_live_epoch_at_a_time(&fleet.audit().await);
    fleet.cleanup().await;
}

/// A failover of Redis can lose a claim the old master acknowledged: the job is queued again
/// while its node runs it. When that same node claims it again, it keeps the runner it has (under
/// the new claim) instead of starting a second copy. The lost write is simulated on one Redis by
/// undoing the claim's effects by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_by_redis_and_made_again_by_the_same_node_starts_no_second_runner() {
    let fleet = Fleet::new("lost-claim");
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let node = fleet.worker("worker", 4);
    start_runners(&api, "lena", 1).await;
    let before = all_running(&api, "lena", 1, 0, Duration::from_secs(15)).await;
    let job = before[0]["worker"]["jobId"].as_str().unwrap().to_owned();
    let node_id = node_of(&before[0]);
    let keys = fleet.keys();
    let mut r = fleet.conn().await;
    let job_key = keys.job(&runfleet_shared::ids::JobId::new(job.clone()));
    // What the promoted replica would hold had the claim's write been lost.
    let () = redis::pipe()
        .hset(&job_key, "status", "queued")
        .hdel(&job_key, "node")
        .hincr(&job_key, "epoch", -1)
        .srem(
            keys.node_jobs(&runfleet_shared::ids::NodeId::new(node_id.clone())),
            &job,
        )
        .sadd(keys.queued(), &job)
        .lpush(keys.ready("jobs"), &job)
        .ignore()
        .query_async(&mut r)
        .await
        .expect("undo the claim");
    let again = eventually(
        Duration::from_secs(15),
        "the job claimed again by the same node, heartbeats landing",
        || async {
            let ws = workers_of(&api, "lena").await;
            let w = ws.first()?;
            (w["worker"]["status"] == "running"
                && node_of(w) == node_id
                && w["worker"]["lastHeartbeatAt"].as_u64()
                    > before[0]["worker"]["lastHeartbeatAt"].as_u64())
            .then(|| w.clone())
        },
    )
    .await;
    assert_eq!(again["worker"]["epoch"], 1, "{again}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = node.output();
    let started = log
        .lines()
        .filter(|l| l.contains("runner started") && l.contains(&job))
        .count();
    assert_eq!(started, 1, "one runner, not two:\n{log}");
    assert!(
        log.contains("claimed a runner this node already runs"),
        "{log}"
    );
    // The runner it kept is the one Redis knows: its reports are accepted.
    let later = all_running(&api, "lena", 1, 0, Duration::from_secs(10)).await;
    assert!(
        later[0]["worker"]["lastHeartbeatAt"].as_u64()
            > again["worker"]["lastHeartbeatAt"].as_u64(),
        "{later:?}"
    );
    fleet.cleanup().await;
}
