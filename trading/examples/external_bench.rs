//! Measures what an external strategy costs against a built-in one (docs/benchmarks.md,
//! "External strategies"):
//!
//! 1. the per-candle round trip: one session step over the EUR-USD replay with the built-in
//!    sma-cross and with the Python one of sdk/python/examples (same decisions), p50 and p99;
//! 2. the memory of one external runner's child (RSS and PSS, from /proc/PID/smaps_rollup);
//! 3. how many external runners one node sustains at one candle a second each: N runners
//!    stepping every second for a while, with the step latency (p50, p99, max) and the CPU the
//!    node and its children used, per runner.
//!
//! Run: `cargo run --release -p runfleet-trading --example external_bench [N...]` (needs
//! python3; the runner counts default to 50 100 200).

use std::time::{Duration, Instant};

use runfleet_shared::config::{ExternalStrategySettings, FeedKind, MarketSettings};
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::ids::JobId;
use runfleet_shared::job::{JobSpec, StartRunnerRequest};
use runfleet_trading::external::ExternalStrategies;
use runfleet_trading::feed::ReplayCache;
use runfleet_trading::runner as trading;
use serde_json::json;

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 on PATH");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn spec(job: &str, kind: &str) -> JobSpec {
    let request: StartRunnerRequest = serde_json::from_value(json!({
        "userId": "bench", "strategyId": "bench", "brokerId": "paper",
        "credentials": {"apiKey": "key", "apiSecret": "secret"},
        "config": {
            "name": "bench", "type": kind,
            "parameters": {"fastPeriod": 10, "slowPeriod": 30, "timeframe": "1h"},
            "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 0.5, "takeProfitPercent": 1},
            "instruments": ["EUR-USD"]
        }
    }))
    .unwrap();
    JobSpec::sealed(JobId::new(job), request, &CredentialCipher::ephemeral()).unwrap()
}

fn market() -> MarketSettings {
    MarketSettings {
        feed: FeedKind::Replay,
        replay_file: repo("trading/tests/data/EURUSD.csv"),
        replay_speed: 0,
        ..MarketSettings::default()
    }
}

fn externals() -> ExternalStrategies {
    let mut e = ExternalStrategySettings::new("py-sma-cross", python());
    e.args = vec![repo("sdk/python/examples/sma_cross.py")];
    ExternalStrategies::new(&[e]).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Step durations over the whole replay.
async fn steps(kind: &str, externals: &ExternalStrategies) -> Vec<Duration> {
    let spec = spec(&format!("bench-{kind}"), kind);
    let (mut session, mut feed) =
        trading::start_with(&spec, &market(), externals, None, &ReplayCache::default())
            .await
            .unwrap();
    session.start_strategy().await.unwrap();
    let mut out = Vec::new();
    while let Some(bars) = feed.next_bars() {
        let t = Instant::now();
        session.step(&bars).await;
        out.push(t.elapsed());
    }
    assert_eq!(session.crashed(), None);
    session
        .stop_strategy("requested", Duration::from_secs(1))
        .await;
    out.sort();
    out
}

/// `Rss` and `Pss` of a process, kB.
fn rss_pss(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

/// CPU time (user + system) of a process and its reaped children, seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields after the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14).
    let ticks = f.get(11..15).map_or(0, |t| t.iter().sum::<u64>());
    ticks as f64 / 100.0
}

async fn sustain(n: usize, seconds: u64, externals: &ExternalStrategies) {
    let mut sessions = Vec::new();
    for i in 0..n {
        let spec = spec(&format!("bench-sustain-{i}"), "py-sma-cross");
        let (mut session, feed) =
            trading::start_with(&spec, &market(), externals, None, &ReplayCache::default())
                .await
                .unwrap();
        session.start_strategy().await.unwrap();
        sessions.push((session, feed));
    }
    let pids: Vec<i32> = sessions
        .iter()
        .filter_map(|(s, _)| s.strategy().pid())
        .collect();
    let cpu_before: f64 =
        cpu_seconds(std::process::id() as i32) + pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let started = Instant::now();
    let mut handles = Vec::new();
    // Each runner steps once a second, the runners spread over the second as a node's are.
    for (i, (mut session, mut feed)) in sessions.into_iter().enumerate() {
        let offset = Duration::from_millis((i as u64 * 1000) / n as u64);
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut next = tokio::time::Instant::now() + offset;
            let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
            while next < end {
                tokio::time::sleep_until(next).await;
                let Some(bars) = feed.next_bars() else { break };
                let t = tokio::time::Instant::now();
                session.step(&bars).await;
                // Late: from when the candle was due to when the step ended.
                lat.push(t.elapsed() + (t - next));
                next += Duration::from_secs(1);
            }
            let crashed = session.crashed().map(str::to_owned);
            (lat, crashed, session)
        }));
    }
    let mut lat = Vec::new();
    let mut crashes = 0;
    let mut done = Vec::new();
    for h in handles {
        let (l, crashed, session) = h.await.unwrap();
        lat.extend(l);
        crashes += usize::from(crashed.is_some());
        done.push(session);
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu_after: f64 =
        cpu_seconds(std::process::id() as i32) + pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (rss, pss): (u64, u64) = pids
        .iter()
        .map(|p| rss_pss(*p))
        .fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
    for s in &mut done {
        s.stop_strategy("requested", Duration::ZERO).await;
    }
    lat.sort();
    let cores = (cpu_after - cpu_before) / wall;
    println!(
        "{n:>4} runners at 1 candle/s for {seconds} s: step latency p50 {}, p99 {}, max {}; \
         {crashes} crashed; CPU {:.2} cores ({:.2} % of a core per runner); children RSS {} MiB, PSS {} MiB in all",
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
        us(*lat.last().unwrap_or(&Duration::ZERO)),
        cores,
        cores * 100.0 / n as f64,
        rss / 1024,
        pss / 1024
    );
}

#[tokio::main]
async fn main() {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![50, 100, 200]
    } else {
        counts
    };
    let ext = externals();
    let none = ExternalStrategies::default();
    let built_in = steps("sma-cross", &none).await;
    let external = steps("py-sma-cross", &ext).await;
    println!(
        "per-candle step over {} EUR-USD candles: built-in p50 {} p99 {}; external (Python) p50 {} p99 {}; overhead p50 {} p99 {}",
        built_in.len(),
        us(percentile(&built_in, 0.5)),
        us(percentile(&built_in, 0.99)),
        us(percentile(&external, 0.5)),
        us(percentile(&external, 0.99)),
        us(percentile(&external, 0.5).saturating_sub(percentile(&built_in, 0.5))),
        us(percentile(&external, 0.99).saturating_sub(percentile(&built_in, 0.99))),
    );

    // One runner's child, after a whole replay (its state at its largest).
    let spec = spec("bench-memory", "py-sma-cross");
    let (mut session, mut feed) =
        trading::start_with(&spec, &market(), &ext, None, &ReplayCache::default())
            .await
            .unwrap();
    session.start_strategy().await.unwrap();
    while let Some(bars) = feed.next_bars() {
        session.step(&bars).await;
    }
    let pid = session.strategy().pid().unwrap();
    let (rss, pss) = rss_pss(pid);
    println!("one external runner's child (python3 sma_cross.py): RSS {rss} kB, PSS {pss} kB");
    session.stop_strategy("requested", Duration::ZERO).await;

    for n in counts {
        sustain(n, 20, &ext).await;
    }
}
