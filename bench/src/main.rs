//! `runfleet-bench`: runfleet against BullMQ 5 on one private Redis, alternating the two over
//! several repetitions, printing a markdown table of min/median/max per system and the ratio
//! of the medians (runfleet ÷ BullMQ). docs/benchmarks.md describes every row.
//!
//! ```sh
//! npm ci --prefix bench/bullmq && cargo run --release -p runfleet-bench
//! ```
//!
//! Run from `target/release` it builds and spawns the release orchestrator and worker node
//! (through the fleet-test harness). Figures are printed, never asserted: benchmarks report,
//! tests check behaviour.

mod bullmq;
mod redis_server;
mod report;
mod runfleet;
mod slowlog;

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::redis_server::BenchRedis;
use crate::report::Sample;

/// Pick-up samples taken first and thrown away on both sides (connections, first script loads).
const WARMUP: usize = 5;

/// runfleet vs BullMQ on one private Redis (docs/benchmarks.md).
#[derive(Debug, Parser)]
#[command(name = "runfleet-bench", version)]
struct Cli {
    /// Small sizes and short windows: a smoke run of every phase (figures not meaningful).
    #[arg(long)]
    quick: bool,
    /// Repetitions per system; the two alternate (default 3, quick 1).
    #[arg(long)]
    repetitions: Option<usize>,
    /// Concurrent clients for the single-start rows.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Single starts per repetition (default 10,000, quick 500).
    #[arg(long)]
    starts: Option<usize>,
    /// Jobs per bulk call.
    #[arg(long, default_value_t = 1_000)]
    bulk_batch: usize,
    /// Bulk calls per repetition (default 10, quick 2).
    #[arg(long)]
    bulk_batches: Option<usize>,
    /// Pick-up samples, one start at a time (default 200, quick 20).
    #[arg(long)]
    pickup_samples: Option<usize>,
    /// Runners (jobs) queued, drained and then held running (default 5,000, quick 200).
    #[arg(long)]
    running: Option<usize>,
    /// Worker nodes sharing the runners.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// What the runners held running do: `busy` ones scalp on every tick (nearly every beat
    /// carries a fill), `idle` ones wait for their signal (an sma-cross of 100 and 500 candles
    /// that holds nothing for its first 500 ticks). BullMQ's active jobs do nothing either way.
    #[arg(long, value_enum, default_value_t = Runners::Busy)]
    runners: Runners,
    /// Seconds to let the running fleet settle before measuring (default 10, quick 2).
    #[arg(long)]
    settle_secs: Option<u64>,
    /// Seconds of steady state measured for CPU and bytes (default 60, quick 6).
    #[arg(long)]
    window_secs: Option<u64>,
    /// Seconds of the PING loop looking for stalls (default 30, quick 3).
    #[arg(long)]
    stall_secs: Option<u64>,
    /// Run only one system (a smoke run, or to profile one side).
    #[arg(long, value_enum)]
    only: Option<System>,
    /// The Node.js executable for BullMQ's side.
    #[arg(long, default_value = "node")]
    node: String,
}

/// What the runners held running do (`--runners`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runners {
    /// Scalping on every tick.
    Busy,
    /// Waiting for their signal.
    Idle,
}

/// One of the two systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    Runfleet,
    Bullmq,
}

/// The sizes and windows of a run, resolved from the flags.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Concurrent clients for single starts.
    pub clients: usize,
    /// Single starts per repetition.
    pub starts: usize,
    /// Jobs per bulk call.
    pub bulk_batch: usize,
    /// Bulk calls per repetition.
    pub bulk_batches: usize,
    /// Pick-up samples.
    pub pickup_samples: usize,
    /// Runners held running.
    pub running: usize,
    /// Worker nodes.
    pub nodes: usize,
    /// What the runners held running do.
    pub runners: Runners,
    /// Settling time before the steady-state window.
    pub settle: Duration,
    /// The steady-state window.
    pub window: Duration,
    /// The PING loop's length.
    pub stall_window: Duration,
}

impl Cli {
    fn sizes(&self) -> Sizes {
        let pick = |set: Option<usize>, full: usize, quick: usize| {
            set.unwrap_or(if self.quick { quick } else { full })
        };
        let secs = |set: Option<u64>, full: u64, quick: u64| {
            Duration::from_secs(set.unwrap_or(if self.quick { quick } else { full }))
        };
        Sizes {
            clients: self.clients.max(1),
            starts: pick(self.starts, 10_000, 500),
            bulk_batch: self.bulk_batch.max(1),
            bulk_batches: pick(self.bulk_batches, 10, 2),
            pickup_samples: pick(self.pickup_samples, 200, 20),
            running: pick(self.running, 5_000, 200).max(1),
            nodes: self.nodes.max(1),
            runners: self.runners,
            settle: secs(self.settle_secs, 10, 2),
            window: secs(self.window_secs, 60, 6),
            stall_window: secs(self.stall_secs, 30, 3),
        }
    }
}

/// Settles, then measures Redis CPU per minute per 1,000 running and bytes received per
/// running item per beat (`beat_ms`: runfleet's heartbeat interval, BullMQ's lock renewal) over
/// the window, then the longest `PING` stall. The same for both systems.
pub async fn steady(
    redis: &BenchRedis,
    sizes: &Sizes,
    beat_ms: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    tokio::time::sleep(sizes.settle).await;
    let before = redis.probe().await?;
    tokio::time::sleep(sizes.window).await;
    let d = redis.probe().await? - before;
    let window_ms = sizes.window.as_secs_f64() * 1_000.0;
    let per_minute_per_1000 = d.cpu_ms * (60_000.0 / window_ms) * (1_000.0 / sizes.running as f64);
    let beats = sizes.running as f64 * window_ms / beat_ms as f64;
    let stall = redis.longest_stall(sizes.stall_window).await?;
    Ok((per_minute_per_1000, d.net_in_bytes / beats, stall))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sizes = cli.sizes();
    let repetitions = cli.repetitions.unwrap_or(if cli.quick { 1 } else { 3 });
    let systems: Vec<System> = match cli.only {
        Some(s) => vec![s],
        None => vec![System::Runfleet, System::Bullmq],
    };
    if systems.contains(&System::Bullmq) {
        bullmq::check_installed(&cli.node)?;
    }
    let redis = BenchRedis::start().await?;
    slowlog::enable(&redis).await?;
    let logs = runfleet_tests::log_dir(&format!("bench-{}", std::process::id()));
    eprintln!(
        "runfleet-bench: {sizes:?}, {repetitions} repetition(s), private Redis on port {}, \
         fleet logs in {}",
        redis.port,
        logs.display()
    );
    let (mut runfleet, mut bullmq): (Vec<Sample>, Vec<Sample>) = (Vec::new(), Vec::new());
    let (mut runfleet_slow, mut bullmq_slow) = (Vec::new(), Vec::new());
    for rep in 0..repetitions {
        // Alternate which system goes first, so neither always runs on a warmer machine.
        let mut order = systems.clone();
        if rep % 2 == 1 {
            order.reverse();
        }
        for system in order {
            eprintln!("repetition {}/{repetitions}: {system:?}", rep + 1);
            match system {
                System::Runfleet => {
                    let logs = logs.join(format!("rep-{rep}"));
                    let (sample, slow) = runfleet::run(&redis, &sizes, logs).await?;
                    runfleet.push(sample);
                    runfleet_slow.extend(slow);
                }
                System::Bullmq => {
                    let (sample, slow) = bullmq::run(&redis, &sizes, &cli.node).await?;
                    bullmq.push(sample);
                    bullmq_slow.extend(slow);
                }
            }
        }
    }
    println!("{}", report::table(&sizes, &runfleet, &bullmq));
    // What held Redis, from its SLOWLOG: the commands behind a stall in the table.
    println!("Redis SLOWLOG, every repetition (docs/benchmarks.md):\n");
    if systems.contains(&System::Runfleet) {
        println!("{}", slowlog::report("runfleet", &runfleet_slow));
    }
    if systems.contains(&System::Bullmq) {
        println!("{}", slowlog::report("BullMQ", &bullmq_slow));
    }
    Ok(())
}
