//! Benchmark: Redis round trips per heartbeat interval for one worker node holding 1,000
//! runners, and the cost of its one heartbeat script.
//!
//! `cargo run --release -p runfleet-fleet-tests --bin heartbeat-load [RUNNERS] [SECONDS]`
//!
//! It starts a private redis-server, an orchestrator and one worker node (the real binaries),
//! starts RUNNERS runners (20 enterprise users of 50), stops the orchestrator so that the node
//! is Redis' only client, then counts the node's commands with `MONITOR` for SECONDS and prints
//! the figures.

use std::process::Stdio;
use std::time::{Duration, Instant};

use runfleet_fleet_tests::{Fleet, PrivateRedis, eventually};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runners: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let interval_ms = 1_000u64;

    let redis = PrivateRedis::start().await;
    let mut fleet = Fleet::on("hbload", &redis.url());
    fleet
        .set("RUNFLEET__HEARTBEAT__INTERVAL_MS", interval_ms.to_string())
        .set("RUNFLEET__HEARTBEAT__LEASE_MS", "10000")
        .set("RUNFLEET__MARKET__TICK_MS", "1000")
        .set("RUNFLEET__TESTING__AUDIT", "false")
        .set("RUST_LOG", "warn");
    let (mut orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let _node = fleet.worker("worker", runners);

    let users = runners.div_ceil(50);
    let started = Instant::now();
    for u in 0..users {
        let user = format!("load-{u}");
        api.put_admin(
            &format!("/v1/users/{user}/entitlement"),
            &json!({"tier": "enterprise", "days": 1}),
        )
        .await;
        for s in 0..50.min(runners - u * 50) {
            let (code, body) = api.start_runner(&user, &format!("s{s}")).await;
            anyhow::ensure!(code == 202, "start refused: {body}");
        }
    }
    let running = eventually(Duration::from_secs(120), "all runners running", || {
        let api = api.clone();
        async move {
            let (_, nodes) = api.get("/v1/nodes").await;
            let n = nodes["nodes"][0]["runners"].as_u64().unwrap_or(0) as usize;
            (n == runners).then_some(n)
        }
    })
    .await;
    println!(
        "{running} runners running on one node after {:?}",
        started.elapsed()
    );

    orchestrator.signal("TERM");
    orchestrator.wait_exit(Duration::from_secs(10)).await;
    let mut redis_cli = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .arg("CONFIG")
        .args(["RESETSTAT"])
        .output()
        .await?;
    anyhow::ensure!(redis_cli.status.success(), "CONFIG RESETSTAT failed");
    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(monitor.stdout.take().expect("stdout")).lines();
    let mut by_command: std::collections::BTreeMap<String, u64> = Default::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        // `<time> [<db> <client>] "<COMMAND>" ...`; commands run by scripts show as `[0 lua]`.
        if line.contains(" lua]") || !line.contains('"') {
            continue;
        }
        let command = line.split('"').nth(1).unwrap_or("?").to_uppercase();
        *by_command.entry(command).or_default() += 1;
    }
    drop(lines);
    let total: u64 = by_command.values().sum();
    // deadpool checks a pooled connection with UNWATCH and PING pipelined: one round trip.
    let round_trips = total - by_command.get("UNWATCH").copied().unwrap_or(0);
    let intervals = (seconds * 1000 / interval_ms) as f64;
    println!(
        "node commands over {seconds} s ({intervals} heartbeat intervals of {interval_ms} ms): {by_command:?}"
    );
    println!(
        "round trips per heartbeat interval, all of the node's traffic: {:.2} ({:.2} commands)",
        round_trips as f64 / intervals,
        total as f64 / intervals
    );
    println!(
        "heartbeat scripts per interval: {:.2}",
        by_command.get("EVALSHA").copied().unwrap_or(0) as f64 / intervals
    );
    redis_cli = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "INFO", "commandstats"])
        .output()
        .await?;
    let stats = String::from_utf8_lossy(&redis_cli.stdout);
    if let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_evalsha")) {
        println!("heartbeat script cost in Redis ({runners} runners): {line}");
    }
    Ok(())
}
