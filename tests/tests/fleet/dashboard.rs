//! Issue 12's dashboard in a real browser: Debian's chromium, driven by playwright-core
//! (tests/browser/dashboard.mjs), against a real fleet (one orchestrator, two worker nodes, the
//! test Redis). A user signs in with their key, sees their runner start and turn running
//! without a reload, opens its page, stops it with flatten and sees the final stats; a second
//! user sees none of it; the admin sees both nodes. Screenshots go to
//! target/<profile>/browser/dashboard/ (every page's on a failure).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use runfleet_tests::{ADMIN_KEY, Fleet, eventually, screenshot_dir, start_request};
use serde_json::json;

/// What the browser test needs, or a clear refusal naming how to get it (scripts/test installs
/// all of it).
fn browser_tools() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.exists(),
        "the dashboard test needs chromium at {} (Debian: apt-get install chromium; scripts/test installs it)",
        chromium.display()
    );
    assert!(
        Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the dashboard test needs Node.js (node) to drive the browser"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "the dashboard test needs playwright-core: npm ci --prefix {} (scripts/test runs it)",
        dir.display()
    );
    (dir, chromium)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_follows_and_stops_a_runner_in_the_browser_and_others_see_nothing() {
    let (dir, chromium) = browser_tools();
    let mut fleet = Fleet::new("dashboard");
    fleet.set("RUNFLEET__SWEEP__HISTORY_EVERY_MS", "1000");
    fleet.cleanup().await;
    let (_o, api) = fleet.orchestrator("orchestrator").await;
    let _n1 = fleet.worker("worker-1", 4);
    let _n2 = fleet.worker("worker-2", 4);
    let admin = api.with_key(Some(ADMIN_KEY));
    admin.grant("alice", "pro").await;
    admin.grant("carol", "pro").await;
    let (alice, bob) = (api.user_key("alice").await, api.user_key("bob").await);
    // Several runners on both nodes for the admin's overview.
    for strategy in ["c1", "c2", "c3", "c4", "c5"] {
        let (code, body) = admin.start_runner("carol", strategy).await;
        assert_eq!(code, 202, "{body}");
    }
    eventually(
        Duration::from_secs(20),
        "carol's 5 runners running",
        || async {
            (admin.status("carol").await["queueStats"]["runningWorkers"] == 5).then_some(())
        },
    )
    .await;

    let mut start = start_request("alice", "dash");
    // A hostile name: the page must show it as text, never run it.
    start["config"]["name"] = json!("Alice's <img src=x onerror=\"window.pwned=1\"> scalper");
    start["config"]["parameters"] = json!({"timeframe": "1s", "rsiPeriod": 5});
    let shots = screenshot_dir("dashboard");
    let run = tokio::task::spawn_blocking({
        let (dir, shots) = (dir.clone(), shots.clone());
        let base = api.base.clone();
        move || {
            Command::new("node")
                .arg(dir.join("dashboard.mjs"))
                .env("BASE", base)
                .env("ADMIN_KEY", ADMIN_KEY)
                .env("ALICE_KEY", alice)
                .env("BOB_KEY", bob)
                .env("START_BODY", start.to_string())
                .env("SHOTS", shots)
                .env("CHROMIUM", chromium)
                .output()
                .expect("node runs")
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the browser test finishes within 4 minutes")
        .expect("the browser test's task");
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && said.contains("all checks passed"),
        "the browser test failed (screenshots in {}):\n{said}",
        shots.display()
    );
    fleet.cleanup().await;
}

/// What the faces read beyond the seed's calls, through `runfleet-client` on a real fleet: who a
/// key is, runner lists filtered across users (and never across tenants), a runner's PnL
/// history growing with its trades, and the fleet's load history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_faces_read_runner_lists_pnl_and_load_history_through_the_client() {
    use runfleet_client::{JobId, JobStatus, RunnerFilter, UserId};

    let mut fleet = Fleet::new("faces");
    fleet.set("RUNFLEET__SWEEP__HISTORY_EVERY_MS", "300");
    fleet.cleanup().await;
    let (_o, api) = fleet.orchestrator("orchestrator").await;
    let _n = fleet.worker("worker", 4);
    let admin = api.with_key(Some(ADMIN_KEY));
    admin.grant("alice", "basic").await;
    let alice_key = api.user_key("alice").await;
    let alice = api.with_key(Some(&alice_key)).client();
    let admin_client = admin.client();

    let me = alice.me().await.unwrap();
    assert_eq!(
        (me.role.as_ref(), me.user_id.as_ref().map(UserId::as_str)),
        ("user", Some("alice"))
    );
    assert_eq!(admin_client.me().await.unwrap().role, "admin");

    let mut busy = start_request("alice", "fast");
    busy["config"]["parameters"] = json!({"timeframe": "1s", "rsiPeriod": 5});
    let (code, body) = admin.post("/v1/runners", &busy).await;
    assert_eq!(code, 202, "{body}");
    let job = JobId::new(body["jobId"].as_str().unwrap());
    let (code, body) = admin.start_runner("alice", "slow").await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = admin.start_runner("bob", "b1").await;
    assert_eq!(code, 202, "{body}");

    // Alice lists only her own runners; naming bob is refused, and filters narrow.
    let own = |filter: RunnerFilter| {
        let alice = alice.clone();
        async move { alice.runners(&filter).await }
    };
    let mine = own(RunnerFilter::default()).await.unwrap();
    assert_eq!(mine.workers.len(), 2);
    assert!(
        mine.workers
            .iter()
            .all(|w| w.record().user_id.as_str() == "alice")
    );
    let refused = own(RunnerFilter {
        user: Some(UserId::new("bob")),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");
    let fast = own(RunnerFilter {
        strategy_id: Some("fast".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(fast.workers.len(), 1);
    // The admin sees all three fleet-wide, and filters by user and status.
    eventually(Duration::from_secs(20), "3 runners running", || async {
        let all = admin_client.runners(&RunnerFilter::default()).await.ok()?;
        let running = all
            .workers
            .iter()
            .filter(|w| w.record().status == JobStatus::Running)
            .count();
        (running == 3).then_some(())
    })
    .await;
    let bobs = admin_client
        .runners(&RunnerFilter {
            user: Some(UserId::new("bob")),
            status: Some(JobStatus::Running),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bobs.workers.len(), 1);
    assert_eq!(bobs.workers[0].record().user_id.as_str(), "bob");

    // The busy runner's PnL history grows with its trades, oldest first, read by its owner.
    let points = eventually(Duration::from_secs(30), "PnL points", || async {
        let pnl = alice.runner_pnl(&job).await.ok()?;
        (pnl.points.len() >= 2).then_some(pnl.points)
    })
    .await;
    assert!(points.windows(2).all(|w| w[0].at <= w[1].at));
    let bob_key = api.user_key("bob").await;
    let bob = api.with_key(Some(&bob_key)).client();
    assert_eq!(
        bob.runner_pnl(&job).await.unwrap_err().status(),
        Some(403),
        "another user cannot read it"
    );

    // The load history has samples with the runners counted; a user key may not read it.
    let history = eventually(Duration::from_secs(10), "load samples", || async {
        let h = admin_client.fleet_history().await.ok()?;
        h.samples.iter().any(|s| s.running == 3).then_some(h)
    })
    .await;
    assert_eq!(history.every_ms, 300);
    assert!(history.samples.windows(2).all(|w| w[0].at < w[1].at));
    assert_eq!(alice.fleet_history().await.unwrap_err().status(), Some(403));
    fleet.cleanup().await;
}
