//! The harness still runs: a tiny `--quick --only runfleet` run exits 0 and prints every row
//! with a figure for runfleet. No figure is checked (benchmarks report, tests check behaviour);
//! BullMQ's side needs `npm ci` and is run by hand (docs/benchmarks.md).

use std::process::Command;

#[test]
fn a_quick_runfleet_run_prints_every_row() {
    let out = Command::new(env!("CARGO_BIN_EXE_runfleet-bench"))
        .args(["--quick", "--only", "runfleet", "--starts", "100"])
        .args(["--bulk-batch", "100", "--bulk-batches", "1"])
        .args(["--pickup-samples", "5", "--running", "20"])
        .args([
            "--settle-secs",
            "0",
            "--window-secs",
            "1",
            "--stall-secs",
            "1",
        ])
        .output()
        .expect("runfleet-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "runfleet-bench exited {}:\n{stdout}\n{stderr}",
        out.status
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| measure"))
        .collect();
    for label in [
        "`POST /v1/runners` vs `queue.add`",
        "the admission script from a plain Redis client",
        "admissions in one round trip from a plain client vs `addBulk`",
        "runners per `POST /v1/runners/batch` vs `addBulk`",
        "Redis CPU per start",
        "the clients' CPU per start",
        "the orchestrator's CPU per HTTP start",
        "CPU per start of every process",
        "p50",
        "p99",
        "drain 20 queued",
        "Redis CPU over the drain of 20",
        "the worker nodes' CPU from their spawn to the drain's end",
        "per minute per 1,000 running runners",
        "per runner per heartbeat",
        "longest Redis stall (PING, ms) with",
        "while 20 queued drain",
        "worker memory per running runner",
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains(label))
            .unwrap_or_else(|| panic!("no row for {label:?} in:\n{stdout}"));
        let runfleet = row.split(" | ").nth(1).unwrap_or_default();
        assert!(
            !runfleet.is_empty() && runfleet != "—" && !runfleet.contains("NaN"),
            "no runfleet figure in {row:?}"
        );
    }
    assert_eq!(rows.len(), 18, "{stdout}");
    assert!(
        stdout.contains("Redis SLOWLOG"),
        "no slow-log report in:\n{stdout}"
    );
}
