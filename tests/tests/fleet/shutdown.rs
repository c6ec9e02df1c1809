//! Graceful shutdown of the real binaries: SIGTERM stops each within its deadline with exit code
//! 0, and a worker node hands its runners back to the queue, where another node takes them.

use std::time::{Duration, Instant};

use runfleet_tests::{Fleet, eventually};

/// `shutdown.deadline_ms` of test fleets.
const DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_exits_cleanly_on_sigterm_within_its_deadline() {
    let fleet = Fleet::new("sigterm-orch");
    let (mut orchestrator, api) = fleet.orchestrator("orchestrator").await;
    assert_eq!(api.get("/healthz").await.0, 200);
    let sent = Instant::now();
    orchestrator.signal("TERM");
    let status = orchestrator
        .wait_exit(DEADLINE)
        .await
        .expect("exited within the deadline");
    println!("orchestrator exited {:?} after SIGTERM", sent.elapsed());
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        orchestrator.output()
    );
    assert!(orchestrator.output().contains("SIGTERM received"));
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_node_hands_its_runners_back_on_sigterm() {
    hand_back_on_sigterm_on(Fleet::new("sigterm-worker")).await;
}

/// A node of `fleet` stopped with SIGTERM hands its runner back; another node takes it.
pub(crate) async fn hand_back_on_sigterm_on(fleet: Fleet) {
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let mut first = fleet.worker("worker-1", 4);
    let (code, body) = api.start_runner("dora", "s1").await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    let running = |want_epoch: u64| {
        let api = api.clone();
        let job = job.clone();
        async move {
            let s = api.status("dora").await;
            let w = s["workers"]
                .as_array()?
                .iter()
                .find(|w| w["worker"]["jobId"] == job.as_str())?
                .clone();
            (w["worker"]["status"] == "running"
                && w["worker"]["epoch"] == want_epoch
                && w["worker"]["lastHeartbeatAt"].as_u64() > w["worker"]["startedAt"].as_u64())
            .then_some(w)
        }
    };
    let before = eventually(
        Duration::from_secs(15),
        "runner running on worker-1, having traded",
        || {
            let running = running(1);
            async move {
                running
                    .await
                    .filter(|w| w["stats"]["totalTrades"].as_u64().unwrap_or(0) > 0)
            }
        },
    )
    .await;

    let sent = Instant::now();
    first.signal("TERM");
    let status = first
        .wait_exit(DEADLINE)
        .await
        .expect("worker exited within the deadline");
    println!("worker node exited {:?} after SIGTERM", sent.elapsed());
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        first.output()
    );
    let s = api.status("dora").await;
    assert_eq!(
        s["workers"][0]["worker"]["status"], "queued",
        "handed back, not crashed: {s}"
    );
    assert_eq!(s["workers"][0]["worker"]["restarts"], 0);
    assert_eq!(
        fleet.queue_lengths().await,
        (1, 0),
        "back in the ready list, nothing left in processing"
    );

    let _second = fleet.worker("worker-2", 4);
    let after = eventually(
        Duration::from_secs(15),
        "runner running again on worker-2",
        || running(2),
    )
    .await;
    assert_ne!(after["worker"]["nodeId"], before["worker"]["nodeId"]);
    // The paper account travelled with the job: the new run resumed its trade history.
    let handed_back = &s["workers"][0];
    let trades = |w: &serde_json::Value| w["stats"]["totalTrades"].as_u64().unwrap_or(0);
    assert!(
        trades(handed_back) >= trades(&before) && trades(&after) >= trades(handed_back),
        "{before}\n{handed_back}\n{after}"
    );
    fleet.cleanup().await;
}
