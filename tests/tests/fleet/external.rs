//! Issue 14 through the API on real fleets: external strategies registered in a settings file
//! (`RUNFLEET_CONFIG`) that the orchestrator and the worker nodes share.
//!
//! - the Python sma-cross and scalping of sdk/python/examples, started like built-in ones, end
//!   with the built-in ones' stats on the EUR-USD replay;
//! - a strategy that breaks the protocol crashes, is restarted as the policy says and then
//!   fails, while another runner on the same node keeps trading;
//! - kill -9 of a node running 10 external runners leaves no child process on the machine,
//!   and the runners resume on another node from their saved state.
//!
//! Needs python3 on PATH: fails, never skips, without it.

use std::path::PathBuf;
use std::time::Duration;

use runfleet_tests::{Api, Fleet, eventually};
use serde_json::{Value, json};

/// The python3 interpreter's real path (the child's environment is empty).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("these tests need python3 on PATH (apt-get install python3)");
    assert!(out.status.success(), "python3 does not run: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// A unique marker put in every external child's argv, to find them in /proc.
fn marker(test: &str) -> String {
    format!("--runfleet-fleet-marker={test}-{}", std::process::id())
}

/// Writes a settings file registering `py-sma-cross`, `py-scalping` and `misbehave` (in `mode`), each child
/// carrying `marker`; returns its path.
fn settings_file(test: &str, mode: &str, marker: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runfleet-ext-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("settings.toml");
    let py = python();
    let sma = repo("sdk/python/examples/sma_cross.py");
    let scalping = repo("sdk/python/examples/scalping.py");
    let bad = repo("trading/tests/strategies/misbehave.py");
    let toml = format!(
        r#"
[[external_strategies]]
type = "py-sma-cross"
command = "{py}"
args = ["{sma}", "{marker}"]
default_instruments = ["BTC-PERPETUAL"]
answer_deadline_ms = 2000
parameters = {{ type = "object", required = ["fastPeriod", "slowPeriod"], additionalProperties = false, properties = {{ fastPeriod = {{ type = "integer", minimum = 1, maximum = 200 }}, slowPeriod = {{ type = "integer", minimum = 2, maximum = 500 }}, timeframe = {{ type = "string", default = "1m" }} }} }}

[[external_strategies]]
type = "py-scalping"
command = "{py}"
args = ["{scalping}", "{marker}"]
default_instruments = ["BTC-PERPETUAL"]
answer_deadline_ms = 2000
parameters = {{ type = "object", additionalProperties = false, properties = {{ rsiPeriod = {{ type = "integer", minimum = 2, maximum = 100, default = 14 }}, timeframe = {{ type = "string", default = "1m" }} }} }}

[[external_strategies]]
type = "misbehave"
command = "{py}"
args = ["{bad}", "{mode}", "{marker}"]
default_instruments = ["BTC-PERPETUAL"]
answer_deadline_ms = 500
"#
    );
    std::fs::write(&path, toml).unwrap();
    path
}

fn request(user: &str, strategy: &str, kind: &str, parameters: Value, instruments: Value) -> Value {
    json!({
        "userId": user, "strategyId": strategy, "brokerId": "deribit",
        "credentials": {"apiKey": format!("key-{user}"), "apiSecret": format!("secret-{user}")},
        "config": {"name": format!("{kind} {strategy}"), "type": kind, "parameters": parameters,
            "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 0.5, "takeProfitPercent": 1},
            "instruments": instruments}
    })
}

fn workers(status: &Value) -> Vec<Value> {
    status["workers"].as_array().cloned().unwrap_or_default()
}

async fn start(api: &Api, body: &Value) -> String {
    let (code, started) = api.post("/v1/runners", body).await;
    assert_eq!(code, 202, "{started}");
    started["jobId"].as_str().unwrap().to_owned()
}

async fn worker_of(api: &Api, user: &str, job: &str) -> Option<Value> {
    workers(&api.status(user).await)
        .into_iter()
        .find(|w| w["worker"]["jobId"] == job)
}

/// Processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sma_cross_and_scalping_through_the_api_end_with_the_built_ins_stats() {
    let tag = marker("equal");
    let mut fleet = Fleet::new("ext-equal");
    fleet
        .set(
            "RUNFLEET_CONFIG",
            settings_file("equal", "garbage", &tag)
                .display()
                .to_string(),
        )
        .set("RUNFLEET__MARKET__FEED", "replay")
        .set(
            "RUNFLEET__MARKET__REPLAY_FILE",
            repo("trading/tests/data/{index}.csv"),
        )
        .set("RUNFLEET__MARKET__REPLAY_SPEED", "0");
    fleet.cleanup().await;
    let (_o, api) = fleet.orchestrator("orchestrator").await;
    let _w = fleet.worker("worker", 4);
    for user in ["rust-user", "python-user"] {
        api.grant(user, "basic").await;
    }
    // Validated against the registered schema before anything is written, the field named.
    let (code, refused) = api
        .post(
            "/v1/runners",
            &request(
                "python-user",
                "bad",
                "py-sma-cross",
                json!({"fastPeriod": 0, "slowPeriod": 30}),
                json!(["EUR-USD"]),
            ),
        )
        .await;
    assert_eq!(code, 400, "{refused}");
    assert_eq!(
        refused["error"]["field"], "config.parameters.fastPeriod",
        "{refused}"
    );
    assert!(
        workers(&api.status("python-user").await).is_empty(),
        "nothing written"
    );
    // Each built-in beside its Python twin, on the same replay.
    let pairs = [
        (
            "sma-cross",
            "py-sma-cross",
            json!({"fastPeriod": 10, "slowPeriod": 30, "timeframe": "1h"}),
        ),
        (
            "scalping",
            "py-scalping",
            json!({"rsiPeriod": 14, "timeframe": "1h"}),
        ),
    ];
    let mut jobs = Vec::new();
    for (builtin, twin, params) in &pairs {
        let one = |user, kind| request(user, builtin, kind, params.clone(), json!(["EUR-USD"]));
        jobs.push((
            *builtin,
            start(&api, &one("rust-user", builtin)).await,
            start(&api, &one("python-user", twin)).await,
        ));
    }
    let api = &api;
    for (kind, builtin, external) in &jobs {
        // The replay plays as fast as each runner can, then holds: wait until the built-in
        // one's stats no longer move, then for the external one's to be the same.
        let builtin_stats = eventually(
            Duration::from_secs(60),
            "the built-in replay done",
            || async {
                let w = worker_of(api, "rust-user", builtin).await?;
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                let again = worker_of(api, "rust-user", builtin).await?;
                (w["stats"] == again["stats"] && again["stats"]["totalTrades"].as_u64()? > 10)
                    .then_some(again["stats"].clone())
            },
        )
        .await;
        let external_stats = eventually(
            Duration::from_secs(120),
            "the external replay done",
            || async {
                let w = worker_of(api, "python-user", external).await?;
                (w["stats"] == builtin_stats).then_some(w["stats"].clone())
            },
        )
        .await;
        println!("built-in {kind}: {builtin_stats}\npython {kind}:   {external_stats}");
        assert_eq!(external_stats, builtin_stats, "{kind}");
        for (user, job) in [("rust-user", builtin), ("python-user", external)] {
            let (code, stopped) = api
                .post(
                    &format!("/v1/runners/{job}/stop"),
                    &json!({"userId": user, "flattenPositions": true}),
                )
                .await;
            assert_eq!(code, 200, "{stopped}");
        }
        let b = worker_of(api, "rust-user", builtin).await.unwrap();
        let e = worker_of(api, "python-user", external).await.unwrap();
        assert_eq!(
            b["stats"], e["stats"],
            "{kind}: the same after the flatten too"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        processes_with(&tag),
        Vec::<u32>::new(),
        "children left after the stop"
    );
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_breaking_the_protocol_fails_by_the_policy_and_its_node_goes_on() {
    let tag = marker("garbage");
    let mut fleet = Fleet::new("ext-garbage");
    fleet.set(
        "RUNFLEET_CONFIG",
        settings_file("garbage", "garbage", &tag)
            .display()
            .to_string(),
    );
    fleet.cleanup().await;
    let (_o, api) = fleet.orchestrator("orchestrator").await;
    let mut node = fleet.worker("worker", 4);
    api.grant("good", "basic").await;
    api.grant("bad", "basic").await;
    let good = start(
        &api,
        &request(
            "good",
            "steady",
            "py-sma-cross",
            json!({"fastPeriod": 2, "slowPeriod": 5}),
            json!(["BTC-PERPETUAL"]),
        ),
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "the good runner trades",
        || async {
            let w = worker_of(&api, "good", &good).await?;
            (w["stats"]["totalTrades"].as_u64()? > 0).then_some(())
        },
    )
    .await;
    let bad = start(
        &api,
        &request(
            "bad",
            "garbage",
            "misbehave",
            json!({}),
            json!(["BTC-PERPETUAL"]),
        ),
    )
    .await;
    let failed = eventually(Duration::from_secs(60), "the bad runner fails", || async {
        let w = worker_of(&api, "bad", &bad).await?;
        (w["worker"]["status"] == "failed").then_some(w)
    })
    .await;
    let error = failed["worker"]["error"].as_str().unwrap_or_default();
    println!(
        "misbehaving runner: restarts {}, error: {error}",
        failed["worker"]["restarts"]
    );
    // Crashes count against the restart budget (3) and the strategy's breaker (3 failures
    // open it): the third crash opens the breaker, which fails the job after 2 restarts, as
    // for a panicking built-in strategy.
    assert_eq!(
        failed["worker"]["restarts"], 2,
        "the restart policy ran: {failed}"
    );
    assert_eq!(failed["worker"]["epoch"], 3, "ran 1 + 2 times: {failed}");
    assert!(
        error.contains("protocol error") && error.contains("circuit breaker is open"),
        "{error}"
    );
    // Its stderr is in the node's logs, with its job id.
    let logs = node.output();
    assert!(
        logs.lines()
            .any(|l| l.contains("misbehave: mode garbage") && l.contains(bad.as_str())),
        "the child's stderr in the node's logs with the job id"
    );
    // The node and its other runner are untouched: still running, still trading.
    assert!(
        node.wait_exit(Duration::from_millis(10)).await.is_none(),
        "the node lives"
    );
    let before = worker_of(&api, "good", &good).await.unwrap();
    assert_eq!(before["worker"]["status"], "running");
    assert_eq!(before["worker"]["restarts"], 0);
    let trades = before["stats"]["totalTrades"].as_u64().unwrap();
    eventually(
        Duration::from_secs(30),
        "the good runner trades on",
        || async {
            let w = worker_of(&api, "good", &good).await?;
            (w["stats"]["totalTrades"].as_u64()? > trades).then_some(())
        },
    )
    .await;
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_leaves_no_child_and_its_external_runners_resume_elsewhere() {
    let tag = marker("kill9");
    let mut fleet = Fleet::new("ext-kill9");
    fleet.set(
        "RUNFLEET_CONFIG",
        settings_file("kill9", "garbage", &tag)
            .display()
            .to_string(),
    );
    fleet.cleanup().await;
    let (_o, api) = fleet.orchestrator("orchestrator").await;
    let mut a = fleet.worker("worker-a", 10);
    api.grant("many", "pro").await;
    let mut jobs = Vec::new();
    for n in 0..10 {
        jobs.push(
            start(
                &api,
                &request(
                    "many",
                    &format!("s{n}"),
                    "py-sma-cross",
                    json!({"fastPeriod": 2, "slowPeriod": 5}),
                    json!(["BTC-PERPETUAL"]),
                ),
            )
            .await,
        );
    }
    // All ten running on node A, each with a closed trade (so a saved state to resume from).
    let before = eventually(
        Duration::from_secs(60),
        "ten runners trading on A",
        || async {
            let ws = workers(&api.status("many").await);
            let ok = ws.len() == 10
                && ws.iter().all(|w| {
                    w["worker"]["status"] == "running"
                        && w["stats"]["totalTrades"].as_u64().unwrap_or(0) > 0
                });
            ok.then_some(ws)
        },
    )
    .await;
    let children = processes_with(&tag);
    assert_eq!(children.len(), 10, "one child per runner: {children:?}");
    let node_a = before[0]["worker"]["nodeId"].as_str().unwrap().to_owned();

    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5))
        .await
        .expect("node A died");
    let orphans = eventually(Duration::from_secs(5), "no child of A left", || async {
        let left = processes_with(&tag);
        left.is_empty().then_some(left)
    })
    .await;
    assert!(orphans.is_empty());

    let _b = fleet.worker("worker-b", 10);
    let after = eventually(
        Duration::from_secs(60),
        "ten runners resumed on B",
        || async {
            let ws = workers(&api.status("many").await);
            let ok = ws.len() == 10
                && ws.iter().all(|w| {
                    w["worker"]["status"] == "running"
                        && w["worker"]["nodeId"].as_str().is_some_and(|n| n != node_a)
                });
            ok.then_some(ws)
        },
    )
    .await;
    for w in &after {
        let job = w["worker"]["jobId"].as_str().unwrap();
        let was = before
            .iter()
            .find(|b| b["worker"]["jobId"] == job)
            .expect("the same job");
        let (then, now) = (
            was["stats"]["totalTrades"].as_u64().unwrap(),
            w["stats"]["totalTrades"].as_u64().unwrap(),
        );
        assert!(
            now >= then,
            "{job} resumed from its saved state: {then} trades then, {now} now"
        );
    }
    // A runner shows running once claimed; its child starts right after (an interpreter's
    // start takes a moment on a loaded machine).
    eventually(
        Duration::from_secs(30),
        "one child per runner again",
        || async { (processes_with(&tag).len() == 10).then_some(()) },
    )
    .await;
    fleet.cleanup().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}
