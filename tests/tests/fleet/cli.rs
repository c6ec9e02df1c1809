//! The `runfleet` CLI, the real binary, against the embedded fleet (the orchestrator and a
//! worker pool in one process, in memory: no Redis needed): start, status, runner, events,
//! stop, nodes, entitlements and keys, their `--json` output read back into the API's own
//! types, every documented exit code, `top --once` and shell completions.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use runfleet_shared::api::{
    EntitlementGranted, ErrorBody, IssuedKey, KeyList, Nodes, Runner, RunnerEvents, StartAccepted,
    StopResult, UserRunners,
};
use runfleet_shared::job::JobStatus;
use runfleet_shared::store::RunnerEvent;
use runfleet_tests::{ADMIN_KEY, Api, Process, binary, free_port, log_dir, spawn};
use tokio::io::AsyncWriteExt;

/// An embedded fleet with the test admin key, and how to run the CLI against it.
struct Fleet {
    _process: Process,
    url: String,
    /// A config file path of this test's own, so the user's own config cannot leak in.
    config: PathBuf,
}

impl Fleet {
    async fn start(name: &str) -> Fleet {
        let port = free_port();
        let process = spawn(
            &log_dir(name),
            "embedded",
            "runfleet-orchestrator",
            &[
                "--embedded".into(),
                "--bind".into(),
                format!("127.0.0.1:{port}"),
            ],
            [("RUNFLEET__SECURITY__ADMIN_KEY", ADMIN_KEY.to_owned())],
        );
        let url = format!("http://127.0.0.1:{port}");
        Api::new(url.clone())
            .wait_healthy(Duration::from_secs(20))
            .await
            .expect("embedded fleet healthy");
        Fleet {
            _process: process,
            url,
            config: log_dir(name).join("config.toml"),
        }
    }

    /// `runfleet args…` with the admin key (or `key`), stdin from `input`.
    async fn run_with(&self, key: Option<&str>, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = tokio::process::Command::new(binary("runfleet"));
        cmd.args(args)
            .env("RUNFLEET_URL", &self.url)
            .env("RUNFLEET_CLI_CONFIG", &self.config)
            .env_remove("RUNFLEET_KEY")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(key) = key {
            cmd.env("RUNFLEET_KEY", key);
        }
        let mut child = cmd.spawn().expect("spawn runfleet");
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(input.as_bytes())
                .await
                .expect("write stdin");
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("runfleet finished in time")
            .expect("runfleet output")
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(Some(ADMIN_KEY), args, None).await
    }

    /// `runfleet args… --json`, which must succeed, its answer read as `T`.
    async fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all).await;
        assert_ok(&out, args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output, args: &[&str]) {
    assert!(out.status.success(), "runfleet {args:?}: {}", text(out));
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", text(out));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A start request as a user's JSON file would hold it.
fn job_json(user: &str, strategy: &str) -> String {
    serde_json::json!({
        "userId": user, "strategyId": strategy, "brokerId": "paper",
        "credentials": {"apiKey": "k", "apiSecret": "s"},
        "config": {"name": strategy, "type": "scalping", "parameters": {"rsiPeriod": 14}}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_starts_watches_and_stops_a_runner() {
    let fleet = Fleet::start("cli-flow").await;

    let granted: EntitlementGranted = fleet
        .json(&["entitlement", "set", "cli-u1", "basic", "--days", "30"])
        .await;
    assert_eq!((granted.tier.as_str(), granted.max_workers), ("basic", 3));

    // Flags and --wait: the answer is the runner, running.
    let running: Runner<'static> = fleet
        .json(&[
            "start",
            "--user",
            "cli-u1",
            "--strategy",
            "s1",
            "--type",
            "scalping",
            "--param",
            "rsiPeriod=10",
            "--wait",
        ])
        .await;
    let record = running.view.record();
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!(record.config.parameters["rsiPeriod"], 10);
    let job = record.job_id.to_string();

    // --file, and the seed's JSON on stdin.
    let file = log_dir("cli-flow").join("job.json");
    std::fs::write(&file, job_json("cli-u1", "s2")).unwrap();
    let from_file: StartAccepted = fleet
        .json(&["start", "--file", file.to_str().unwrap()])
        .await;
    let out = fleet
        .run_with(
            Some(ADMIN_KEY),
            &["start", "--json"],
            Some(&job_json("cli-u1", "s3")),
        )
        .await;
    assert_ok(&out, &["start (stdin)"]);
    let from_stdin: StartAccepted = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(from_file.job_id, from_stdin.job_id);

    // Status, as JSON and as a table.
    let status: UserRunners<'static> = fleet.json(&["status", "cli-u1"]).await;
    assert_eq!(status.workers.len(), 3);
    assert_eq!(status.queue_stats.total_workers, 3);
    assert!(
        status
            .workers
            .iter()
            .any(|w| w.record().job_id.as_str() == job)
    );
    let table = stdout(&fleet.run(&["status", "cli-u1"]).await);
    assert!(table.contains(&job) && table.contains("running"), "{table}");
    assert!(table.contains("user cli-u1: 3 runners"), "{table}");

    let detail = stdout(&fleet.run(&["runner", &job]).await);
    for needle in [
        "status",
        "running",
        "stats",
        "PROFIT FACTOR",
        "positions",
        " BTC",
    ] {
        assert!(detail.contains(needle), "{needle:?} not in\n{detail}");
    }

    // The history, then the live events of a stop, followed until two have come.
    let history: RunnerEvents = fleet.json(&["events", &job]).await;
    let kinds: Vec<&str> = history.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[..2], ["admitted", "claimed"], "{kinds:?}");
    let follow = {
        let mut cmd = tokio::process::Command::new(binary("runfleet"));
        cmd.args(["events", &job, "--follow", "--limit", "2", "--json"])
            .env("RUNFLEET_URL", &fleet.url)
            .env("RUNFLEET_KEY", ADMIN_KEY)
            .env("RUNFLEET_CLI_CONFIG", &fleet.config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn().expect("spawn events --follow")
    };
    // The follower prints the history first: once it has, it is connected.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stopped: StopResult = fleet.json(&["stop", &job]).await;
    assert_eq!(stopped.status, JobStatus::Stopped);
    assert!(stopped.positions.is_empty(), "flattened: {stopped:?}");

    let followed = tokio::time::timeout(Duration::from_secs(30), follow.wait_with_output())
        .await
        .expect("events --follow --limit 2 ends")
        .expect("output");
    assert_ok(&followed, &["events --follow"]);
    let lines: Vec<RunnerEvent> = stdout(&followed)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["admitted", "claimed", "stop_requested", "stopped"],
        "history, then live, without gap or duplicate"
    );

    // A hold stop of another runner, answered as a table.
    let out = fleet
        .run(&["stop", from_file.job_id.as_str(), "--hold"])
        .await;
    assert_ok(&out, &["stop --hold"]);
    assert!(stdout(&out).contains("stopped"), "{}", text(&out));

    let nodes: Nodes = fleet.json(&["nodes"]).await;
    assert_eq!(nodes.queued_jobs, 0);

    // One frame of top: its sections and this fleet's numbers.
    let out = fleet.run(&["top", "--once"]).await;
    assert_ok(&out, &["top --once"]);
    let frame = stdout(&out);
    for needle in [
        "runfleet top",
        "Queue depth: 0",
        "Starts/s:",
        "3 in 48 s",
        "Runners by status",
        "running",
        "holding slots",
        "Nodes:",
        "Last events",
        "stopped",
        &job[..20],
    ] {
        assert!(frame.contains(needle), "{needle:?} not in\n{frame}");
    }
    let running_line = frame
        .lines()
        .find(|l| l.contains("│running"))
        .expect("a running line");
    assert!(
        running_line.split_whitespace().any(|w| w == "1"),
        "one runner left running: {running_line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_tell_refusals_apart() {
    let fleet = Fleet::start("cli-exit").await;
    let start = [
        "start",
        "--user",
        "cli-free",
        "--strategy",
        "s",
        "--type",
        "scalping",
    ];

    // A free user has one slot: the second start is refused (403 runner_limit_reached) -> 3.
    assert_ok(&fleet.run(&start).await, &start);
    let refused = fleet.run(&[&start[..], &["--json"]].concat()).await;
    assert_exit(&refused, 3, "limit reached");
    let body: ErrorBody = serde_json::from_slice(&refused.stdout).expect("the API's refusal");
    assert_eq!(body.error.code, "runner_limit_reached");
    assert_eq!(body.error.max_workers, Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("runner_limit_reached"));

    // An invalid request is refused too (3), naming its field.
    let bad = fleet
        .run(&[
            "start",
            "--user",
            "cli-bad",
            "--strategy",
            "s",
            "--type",
            "no-such-type",
        ])
        .await;
    assert_exit(&bad, 3, "invalid request");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid_request"));

    assert_exit(
        &fleet.run(&["runner", "job-unknown"]).await,
        4,
        "unknown job",
    );
    assert_exit(
        &fleet.run_with(Some("wrong-key"), &["nodes"], None).await,
        5,
        "bad key",
    );
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    assert_exit(
        &fleet.run(&["--url", &nowhere, "status", "u"]).await,
        6,
        "nothing listening",
    );
    // Usage: clap's own (an unknown command), and a start without its flags.
    assert_exit(&fleet.run(&["no-such-command"]).await, 2, "unknown command");
    assert_exit(
        &fleet
            .run(&["start", "--user", "u", "--strategy", "s"])
            .await,
        2,
        "start without --type",
    );

    // Keys: issue one, use it for its own user, not for admin calls; revoke it: 5.
    let issued: IssuedKey = fleet.json(&["keys", "issue", "cli-free"]).await;
    let own = fleet
        .run_with(Some(&issued.api_key), &["status", "cli-free"], None)
        .await;
    assert_ok(&own, &["status with a user key"]);
    assert_exit(
        &fleet
            .run_with(Some(&issued.api_key), &["nodes"], None)
            .await,
        3,
        "a user key on an admin endpoint (403)",
    );
    let list: KeyList = fleet.json(&["keys", "list", "cli-free"]).await;
    assert!(list.keys.iter().any(|k| k.key_id == issued.key_id));
    assert_ok(
        &fleet
            .run(&["keys", "revoke", "cli-free", &issued.key_id])
            .await,
        &["keys revoke"],
    );
    assert_exit(
        &fleet
            .run_with(Some(&issued.api_key), &["status", "cli-free"], None)
            .await,
        5,
        "a revoked key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reads_its_config_file_and_generates_completions() {
    let fleet = Fleet::start("cli-config").await;
    let config = log_dir("cli-config").join("config.toml");
    let _ = std::fs::remove_file(&config);
    let set = fleet
        .run_with(
            None,
            &[
                "--config",
                config.to_str().unwrap(),
                "config",
                "set",
                "--server",
                &fleet.url,
                "--api-key",
                ADMIN_KEY,
            ],
            None,
        )
        .await;
    assert_ok(&set, &["config set"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the file holding a key is its owner's only"
        );
    }
    // No --url, no RUNFLEET_URL, no key in the environment: the file serves both.
    let out = tokio::process::Command::new(binary("runfleet"))
        .args(["--config", config.to_str().unwrap(), "nodes", "--json"])
        .env_remove("RUNFLEET_URL")
        .env_remove("RUNFLEET_KEY")
        .env_remove("RUNFLEET_CLI_CONFIG")
        .output()
        .await
        .expect("runfleet");
    assert_ok(&out, &["nodes from the config file"]);
    let _: Nodes = serde_json::from_slice(&out.stdout).expect("nodes");
    let shown = stdout(
        &fleet
            .run_with(
                None,
                &["--config", config.to_str().unwrap(), "config", "show"],
                None,
            )
            .await,
    );
    assert!(shown.contains("key: set (from the config file)"), "{shown}");
    assert!(
        !shown.contains(ADMIN_KEY),
        "config show never prints the key"
    );

    for shell in ["bash", "zsh", "fish"] {
        let out = fleet.run(&["completions", shell]).await;
        assert_ok(&out, &["completions", shell]);
        let script = stdout(&out);
        assert!(
            script.contains("runfleet") && script.contains("entitlement"),
            "{shell}: {script}"
        );
    }
    assert!(stdout(&fleet.run(&["completions", "bash"]).await).contains("complete -F _runfleet"));
}
