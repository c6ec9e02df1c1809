//! BullMQ's side: `bench/bullmq/bench.mjs` run with Node on the same private Redis, one process
//! per phase; it prints JSON lines this side reads. Redis-side figures (CPU, bytes, stalls) are
//! measured here exactly as for runfleet.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::Sizes;
use crate::redis_server::BenchRedis;
use crate::report::{Row, Sample, quantile};
use crate::slowlog::{self, Slow};

/// BullMQ's default lock renewal interval: `lockDuration` (30 s) / 2.
const LOCK_RENEW_MS: u64 = 15_000;

/// Where the Node side lives.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bullmq")
}

/// Fails with the command to run when the Node side's packages are not installed.
pub fn check_installed(node: &str) -> anyhow::Result<()> {
    let dir = dir();
    ensure!(
        dir.join("node_modules/bullmq").is_dir(),
        "BullMQ is not installed: run `npm ci --prefix {}` (needs Node.js and npm)",
        dir.display()
    );
    let version = std::process::Command::new(node)
        .arg("--version")
        .output()
        .with_context(|| format!("the BullMQ side needs Node.js and `{node}` does not run"))?;
    ensure!(version.status.success(), "`{node} --version` failed");
    Ok(())
}

fn command(node: &str, redis: &BenchRedis, phase: &str, args: &[(&str, usize)]) -> Command {
    let mut cmd = Command::new(node);
    cmd.current_dir(dir())
        .args(["--expose-gc", "bench.mjs", phase])
        .args(["--redis-port", &redis.port.to_string()])
        .kill_on_drop(true);
    for (name, value) in args {
        cmd.arg(format!("--{name}")).arg(value.to_string());
    }
    cmd
}

/// Runs one phase to its end; its last JSON line.
async fn phase(
    node: &str,
    redis: &BenchRedis,
    phase: &str,
    args: &[(&str, usize)],
) -> anyhow::Result<Value> {
    let out = command(node, redis, phase, args).output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "bench.mjs {phase} exited {}:\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().context("bench.mjs printed nothing")?;
    Ok(serde_json::from_str(last)?)
}

fn number(v: &Value, field: &str) -> anyhow::Result<f64> {
    v[field]
        .as_f64()
        .with_context(|| format!("bench.mjs answered no {field}: {v}"))
}

async fn event(lines: &mut Lines<BufReader<ChildStdout>>, name: &str) -> anyhow::Result<Value> {
    while let Some(line) = lines.next_line().await? {
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["event"] == name
        {
            return Ok(v);
        }
    }
    bail!("bench.mjs ended before reporting {name}")
}

/// One repetition of every BullMQ phase.
pub async fn run(
    redis: &BenchRedis,
    sizes: &Sizes,
    node: &str,
) -> anyhow::Result<(Sample, Vec<Slow>)> {
    let mut sample = Sample::new();
    let mut slow = slowlog::take(redis, "before").await?;

    redis.flush().await?;
    let before = redis.probe().await?;
    let add = phase(
        node,
        redis,
        "add",
        &[("total", sizes.starts), ("concurrency", sizes.clients)],
    )
    .await?;
    let cost = redis.probe().await? - before;
    let adds_per_s = sizes.starts as f64 / number(&add, "seconds")?;
    sample.insert(Row::HttpStarts, adds_per_s);
    sample.insert(Row::ScriptStarts, adds_per_s);
    let redis_us = cost.cpu_ms * 1_000.0 / sizes.starts as f64;
    let client_us = number(&add, "cpuMicros")? / sizes.starts as f64;
    sample.insert(Row::CpuPerStart, redis_us);
    sample.insert(Row::ClientCpuPerStart, client_us);
    sample.insert(Row::MachineCpuPerStart, client_us + redis_us);
    eprintln!("  BullMQ: {adds_per_s:.0} queue.add/s");
    slow.extend(slowlog::take(redis, "queue.add").await?);

    redis.flush().await?;
    let total = sizes.bulk_batch * sizes.bulk_batches;
    let bulk = phase(
        node,
        redis,
        "bulk",
        &[("total", total), ("batch", sizes.bulk_batch)],
    )
    .await?;
    let bulk_per_s = total as f64 / number(&bulk, "seconds")?;
    sample.insert(Row::BulkStarts, bulk_per_s);
    // The same `addBulk` figure faces runfleet's batch endpoint.
    sample.insert(Row::BatchHttpStarts, bulk_per_s);
    slow.extend(slowlog::take(redis, "addBulk").await?);

    redis.flush().await?;
    let pickup = phase(
        node,
        redis,
        "pickup",
        &[("samples", sizes.pickup_samples + crate::WARMUP)],
    )
    .await?;
    let latencies: Vec<f64> = pickup["latencies_ms"]
        .as_array()
        .context("no latencies_ms")?
        .iter()
        .skip(crate::WARMUP)
        .filter_map(Value::as_f64)
        .collect();
    sample.insert(Row::PickupP50, quantile(&latencies, 0.5));
    sample.insert(Row::PickupP99, quantile(&latencies, 0.99));
    slow.extend(slowlog::take(redis, "pick-up").await?);

    redis.flush().await?;
    phase(
        node,
        redis,
        "bulk",
        &[("total", sizes.running), ("batch", sizes.bulk_batch)],
    )
    .await?;
    slow.extend(slowlog::take(redis, "queueing the drain").await?);
    // From the worker process' spawn (its start-up is idle for Redis) to every job active.
    let stalls = redis.watch_stalls().await?;
    let before = redis.probe().await?;
    let mut child: Child = command(node, redis, "steady", &[("jobs", sizes.running)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let running = event(&mut lines, "running").await?;
    let cost = redis.probe().await? - before;
    sample.insert(Row::Drain, number(&running, "drain_ms")?);
    sample.insert(Row::DrainRedisCpu, cost.cpu_ms);
    sample.insert(Row::DrainStall, stalls.stop().await?);
    slow.extend(slowlog::take(redis, "drain").await?);
    eprintln!("  BullMQ: {} jobs active", sizes.running);
    let (cpu, bytes, stall) = crate::steady(redis, sizes, LOCK_RENEW_MS).await?;
    sample.insert(Row::SteadyCpu, cpu);
    sample.insert(Row::BytesPerBeat, bytes);
    sample.insert(Row::Stall, stall);
    slow.extend(slowlog::take(redis, "steady").await?);
    stdin.write_all(b"memory\n").await?;
    let memory = event(&mut lines, "memory").await?;
    let grown = number(&memory, "rss_running")? - number(&memory, "rss_baseline")?;
    sample.insert(Row::MemoryPerRunner, grown / sizes.running as f64 / 1_024.0);
    stdin.write_all(b"stop\n").await?;
    event(&mut lines, "stopped").await?;
    let status = child.wait().await?;
    ensure!(status.success(), "bench.mjs steady exited {status}");
    redis.flush().await?;
    Ok((sample, slow))
}
