//! Issue 17, network partitions: a worker node that is alive but cut off from Redis. Node A
//! runs in a network namespace of its own and reaches a private redis-server over a veth link
//! that the test cuts (silently, or rejecting) and heals; the orchestrator, node B and the test
//! reach the same Redis on 127.0.0.1, a path that is never cut.
//!
//! Timing (chosen so one test takes about 15 s): lease 3 s, heartbeat 500 ms (six beats per
//! lease, so one lost beat is nothing), sweep 200 ms, restart delay 100 ms; Redis response,
//! connect and pool-wait timeouts 500 ms each, so that a call on a dead link fails well within
//! a lease, and a heartbeat caught by the heal succeeds again within about a second. A node
//! fences itself at the send of its last accepted heartbeat + lease - lease/10: 300 ms before
//! Redis can expire the lease, plus a sweep interval before another node may claim the job.
//! The long silent cut gives node A Redis timeouts of 5 s instead, longer than the lease: its
//! heartbeat hangs through the fence, which must not wait for it (A logs no heartbeat failure
//! before its fence), and the request may even reach Redis after the heal, where its stale
//! writes must be refused.
//!
//! These tests need root (network namespaces); without it they fail, never skip.

use std::collections::HashMap;
use std::time::Duration;

use runfleet_tests::{
    ADMIN_KEY, Api, Cut, Fleet, NetnsLink, PrivateRedis, Process, assert_one_live_epoch_at_a_time,
    eventually, free_port, log_events, ns_http, start_request, wall_ms,
};
use serde_json::{Value, json};

use crate::reliability::{all_running, node_of, start_runners};

/// Lease of these fleets.
const LEASE: Duration = Duration::from_secs(3);
/// Runners on the node that is cut off.
const RUNNERS: usize = 3;
const FENCED_RUNNER: &str = "runner fenced off: its lease is no longer ours";
const FENCED_NODE: &str = "leases lapsed; fencing every runner and taking a new node id";

/// A fleet on a private Redis that also listens on the far side of `link`, an orchestrator,
/// and node A inside `link`'s namespace.
struct Partitioned {
    fleet: Fleet,
    api: Api,
    a: Process,
    _orchestrator: Process,
    _redis: PrivateRedis,
}

/// `a_timeouts_ms`: node A's Redis response, connect and pool-wait timeouts.
async fn partitioned(name: &str, link: &NetnsLink, a_timeouts_ms: u64) -> Partitioned {
    let redis = PrivateRedis::start_also_on(&[&link.host_addr]).await;
    let mut fleet = Fleet::on(name, &redis.url());
    fleet
        .set("RUNFLEET__HEARTBEAT__INTERVAL_MS", "500")
        .set(
            "RUNFLEET__HEARTBEAT__LEASE_MS",
            LEASE.as_millis().to_string(),
        )
        .set("RUNFLEET__REDIS__RESPONSE_TIMEOUT_MS", "500")
        .set("RUNFLEET__REDIS__CONNECT_TIMEOUT_MS", "500")
        .set("RUNFLEET__REDIS__WAIT_TIMEOUT_MS", "500");
    let (orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let far_side = format!("redis://{}:{}", link.host_addr, redis.port);
    const TIMEOUTS: [&str; 3] = [
        "RUNFLEET__REDIS__RESPONSE_TIMEOUT_MS",
        "RUNFLEET__REDIS__CONNECT_TIMEOUT_MS",
        "RUNFLEET__REDIS__WAIT_TIMEOUT_MS",
    ];
    for t in TIMEOUTS {
        fleet.set(t, a_timeouts_ms.to_string());
    }
    let a = fleet.worker_in(link, &far_side, "worker-a", 8);
    for t in TIMEOUTS {
        fleet.set(t, "500");
    }
    Partitioned {
        fleet,
        api,
        a,
        _orchestrator: orchestrator,
        _redis: redis,
    }
}

/// Starts `RUNNERS` runners for `user`, all on node A; returns A's node id.
async fn runners_on_a(p: &Partitioned, user: &str) -> String {
    start_runners(&p.api, user, RUNNERS).await;
    let running = all_running(&p.api, user, RUNNERS, 0, Duration::from_secs(20)).await;
    let a_id = node_of(&running[0]);
    assert!(
        running.iter().all(|w| node_of(w) == a_id),
        "all on node A: {running:?}"
    );
    a_id
}

fn label(how: Cut) -> &'static str {
    match how {
        Cut::SilentDrop => "silent-drop",
        Cut::Reject => "reject",
    }
}

/// Cut A off for longer than a lease: A fences its runners before B runs them, every job runs
/// on B exactly once more, none is lost; healed, A comes back under a new id and takes work.
async fn long_cut(how: Cut, a_timeouts_ms: u64) {
    let link = NetnsLink::create();
    let name = format!("partition-long-{}", label(how));
    let p = partitioned(&name, &link, a_timeouts_ms).await;
    let user = "pia";
    let a_id = runners_on_a(&p, user).await;
    // B can hold exactly A's runners, so that new work after the heal must go to A.
    let b = p.fleet.worker("worker-b", RUNNERS);
    eventually(Duration::from_secs(10), "node B started", || async {
        b.output().contains("worker node started").then_some(())
    })
    .await;

    let cut_at = wall_ms();
    link.cut(how);
    let moved = all_running(&p.api, user, RUNNERS, 1, LEASE + Duration::from_secs(15)).await;
    let elsewhere_seen = wall_ms();
    assert!(
        moved.iter().all(|w| node_of(w) != a_id),
        "every runner moved off A: {moved:?}"
    );
    let a_log = eventually(
        Duration::from_secs(5),
        "node A logs a fence for each runner",
        || async {
            let out = p.a.output();
            (log_events(&out, FENCED_RUNNER).len() >= RUNNERS).then_some(out)
        },
    )
    .await;
    let fenced: HashMap<String, u64> = log_events(&a_log, FENCED_RUNNER)
        .iter()
        .map(|e| {
            (
                e["job"].as_str().unwrap_or_default().to_owned(),
                e["fenced_at_ms"].as_u64().expect("fenced_at_ms"),
            )
        })
        .collect();
    let node_fences = log_events(&a_log, FENCED_NODE);
    assert_eq!(
        node_fences.len(),
        1,
        "A fenced itself once: {node_fences:?}"
    );
    assert_eq!(node_fences[0]["node"], a_id.as_str());
    let new_id = node_fences[0]["new_id"].as_str().unwrap().to_owned();
    if a_timeouts_ms > LEASE.as_millis() as u64 {
        // Every heartbeat since the cut was still hanging when A fenced itself.
        let lines: Vec<Value> = a_log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let fence = lines
            .iter()
            .position(|v| v["message"] == FENCED_NODE)
            .expect("fence line");
        let failed_beat = lines[..fence]
            .iter()
            .find(|v| v["runner"] == "heartbeat" || v["message"] == "runner error");
        assert!(
            failed_beat.is_none(),
            "a heartbeat failed before the fence, so it did not hang through it: {failed_beat:?}"
        );
    }

    // From the writes Redis accepted: one live epoch at a time, each job claimed once more,
    // and each claim on B after A's runner of that job had stopped.
    let audit = p.fleet.audit().await;
    let epochs = assert_one_live_epoch_at_a_time(&audit);
    assert_eq!(epochs.len(), RUNNERS, "none lost: {epochs:?}");
    assert!(epochs.values().all(|n| *n == 2), "{epochs:?}");
    let mut claimed_elsewhere = Vec::new();
    let mut gaps = Vec::new();
    for (job, fenced_at) in &fenced {
        let claim = audit
            .iter()
            .find(|e| e.op == "claim" && e.epoch == 2 && &e.job == job)
            .unwrap_or_else(|| panic!("no second claim of {job}"));
        assert_ne!(claim.node, a_id, "{claim:?}");
        assert!(
            *fenced_at < claim.at_ms,
            "{job}: A fenced its runner at {fenced_at} ms, but B claimed it at {} ms",
            claim.at_ms
        );
        claimed_elsewhere.push(claim.at_ms);
        gaps.push(claim.at_ms - fenced_at);
    }
    let first_new_claim = audit
        .iter()
        .position(|e| e.op == "claim" && e.epoch == 2)
        .expect("new claims");
    let late: Vec<_> = audit[first_new_claim..]
        .iter()
        .filter(|e| e.node == a_id)
        .collect();
    assert!(late.is_empty(), "writes of A's old id accepted: {late:?}");

    let fenced_last = fenced.values().max().copied().unwrap_or(0);
    let elsewhere_last = claimed_elsewhere.iter().max().copied().unwrap_or(0);
    eprintln!(
        "partition {}: cut->fenced {:.1} s, cut->running elsewhere {:.1} s (claimed; seen running through the API at {:.1} s; each job's fence to its new claim at least {} ms) [lease {:?}, heartbeat 500 ms, sweep 200 ms, A's Redis timeouts {a_timeouts_ms} ms]",
        label(how),
        fenced_last.saturating_sub(cut_at) as f64 / 1000.0,
        elsewhere_last.saturating_sub(cut_at) as f64 / 1000.0,
        elsewhere_seen.saturating_sub(cut_at) as f64 / 1000.0,
        gaps.iter().min().copied().unwrap_or(0),
        LEASE,
    );

    // Healed, A rejoins under its new id and takes new work (B is full).
    link.heal(how);
    let healed_at = wall_ms();
    start_runners(&p.api, "quin", 1).await;
    let after = all_running(&p.api, "quin", 1, 0, Duration::from_secs(20)).await;
    assert_eq!(
        node_of(&after[0]),
        new_id,
        "A runs new work under its new id"
    );
    eprintln!(
        "partition {}: heal->new work running on A (new id) {:.1} s",
        label(how),
        wall_ms().saturating_sub(healed_at) as f64 / 1000.0
    );
    // The moved runners were not disturbed by A's return.
    let still = all_running(&p.api, user, RUNNERS, 1, Duration::from_secs(5)).await;
    assert!(still.iter().all(|w| w["worker"]["epoch"] == 2), "{still:?}");
    let audit = p.fleet.audit().await;
    assert_one_live_epoch_at_a_time(&audit);
    assert!(
        audit.iter().all(|e| e.node != a_id || e.at_ms < healed_at),
        "nothing of A's old id accepted after the heal"
    );
    assert!(!p.a.output().contains("panicked"), "{}", p.a.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_silently_for_longer_than_a_lease_fences_before_its_runners_move() {
    // A's heartbeat hangs for longer than the lease: the fence must not wait for it.
    long_cut(Cut::SilentDrop, 5_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_link_rejects_for_longer_than_a_lease_fences_before_its_runners_move() {
    long_cut(Cut::Reject, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_for_less_than_a_lease_loses_nothing_and_restarts_nothing() {
    let link = NetnsLink::create();
    let p = partitioned("partition-short", &link, 500).await;
    let user = "rhea";
    let a_id = runners_on_a(&p, user).await;
    let _b = p.fleet.worker("worker-b", RUNNERS);

    for how in [Cut::SilentDrop, Cut::Reject] {
        link.cut(how);
        tokio::time::sleep(Duration::from_secs(1)).await;
        link.heal(how);
        // Beats go through again well within the lease.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
    }
    let cut_over = wall_ms();
    // Two leases after the last heal: nothing expired, nothing moved.
    tokio::time::sleep(LEASE * 2).await;
    let after = all_running(&p.api, user, RUNNERS, 0, Duration::from_secs(5)).await;
    for w in &after {
        assert_eq!(node_of(w), a_id, "still on A: {w}");
        assert_eq!(w["worker"]["epoch"], 1, "never claimed again: {w}");
        assert_eq!(w["worker"]["restarts"], 0, "{w}");
    }
    let out = p.a.output();
    assert!(log_events(&out, FENCED_RUNNER).is_empty(), "{out}");
    assert!(log_events(&out, FENCED_NODE).is_empty(), "{out}");
    let audit = p.fleet.audit().await;
    let epochs = assert_one_live_epoch_at_a_time(&audit);
    assert_eq!(epochs.len(), RUNNERS);
    assert!(epochs.values().all(|n| *n == 1), "{epochs:?}");
    let renewed_after: usize = audit
        .iter()
        .filter(|e| e.op == "renew" && e.node == a_id && e.at_ms > cut_over)
        .count();
    assert!(
        renewed_after >= RUNNERS,
        "A's heartbeats are accepted again"
    );
    eprintln!(
        "partition short cuts (1 s silent drop, then 1 s reject): 0 fenced, 0 restarts, {} runners on epoch 1",
        after.len()
    );
}

/// An orchestrator that reaches its clients but not Redis: each call answers at once (within
/// its Redis timeouts) with 503 `store_unavailable` and a Retry-After instead of hanging, its
/// `/healthz` answers 503 so a balancer routes around it, a refused start leaves nothing
/// behind (not even after the heal, when a stalled write could still reach Redis), another
/// orchestrator serves throughout, and once healed it serves again.
async fn orchestrator_cut(how: Cut) {
    let link = NetnsLink::create();
    let redis = PrivateRedis::start_also_on(&[&link.host_addr]).await;
    let mut fleet = Fleet::on(&format!("partition-orch-{}", label(how)), &redis.url());
    fleet
        .set("RUNFLEET__REDIS__RESPONSE_TIMEOUT_MS", "500")
        .set("RUNFLEET__REDIS__CONNECT_TIMEOUT_MS", "500")
        .set("RUNFLEET__REDIS__WAIT_TIMEOUT_MS", "500");
    let (_healthy, api) = fleet.orchestrator("orchestrator-ok").await;
    let _node = fleet.worker("worker", 4);
    let port = free_port();
    let far_side = format!("redis://{}:{}", link.host_addr, redis.port);
    let cut_off = fleet.orchestrator_in(&link, &far_side, "orchestrator-cut", port);
    let base = format!("http://127.0.0.1:{port}");
    let call = |method: &str, path: &str, body: Option<&Value>| {
        ns_http(
            &link.netns,
            method,
            &format!("{base}{path}"),
            ADMIN_KEY,
            body,
        )
    };
    eventually(
        Duration::from_secs(20),
        "the cut-off orchestrator serves",
        || async { (call("GET", "/healthz", None).status == 200).then_some(()) },
    )
    .await;
    let started = call("POST", "/v1/runners", Some(&start_request("olga", "s0")));
    assert_eq!(started.status, 202, "{:?}", started.body);

    link.cut(how);
    let refused = call("POST", "/v1/runners", Some(&start_request("pat", "s0")));
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(
        refused.body["error"]["code"], "store_unavailable",
        "{refused:?}"
    );
    assert!(refused.retry_after.is_some(), "{refused:?}");
    let health = call("GET", "/healthz", None);
    assert_eq!(health.status, 503, "{health:?}");
    let status = call("GET", "/v1/users/olga/runners", None);
    assert_eq!(status.status, 503, "{status:?}");
    // The other orchestrator serves throughout.
    let olga = api.status("olga").await;
    assert_eq!(olga["workers"].as_array().map(Vec::len), Some(1), "{olga}");

    link.heal(how);
    let healed_at = std::time::Instant::now();
    eventually(
        Duration::from_secs(20),
        "the healed orchestrator serves",
        || async { (call("GET", "/healthz", None).status == 200).then_some(()) },
    )
    .await;
    let back_in = healed_at.elapsed();
    // The refused start left nothing, even once a stalled write could have gone through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pat = api.status("pat").await;
    assert_eq!(
        pat["workers"],
        json!([]),
        "the refused start wrote nothing: {pat}"
    );
    let again = call("POST", "/v1/runners", Some(&start_request("pat", "s0")));
    assert_eq!(again.status, 202, "{again:?}");
    assert!(
        !cut_off.output().contains("panicked"),
        "{}",
        cut_off.output()
    );
    eprintln!(
        "partition orchestrator {}: start answered 503 store_unavailable in {} ms, /healthz 503 in {} ms, status 503 in {} ms; healed -> serving again in {:.1} s [Redis timeouts 500 ms]",
        label(how),
        refused.took.as_millis(),
        health.took.as_millis(),
        status.took.as_millis(),
        back_in.as_secs_f64(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_cut_off_silently_from_redis_answers_503_at_once_and_writes_nothing() {
    orchestrator_cut(Cut::SilentDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_whose_redis_link_rejects_answers_503_at_once_and_writes_nothing() {
    orchestrator_cut(Cut::Reject).await;
}
