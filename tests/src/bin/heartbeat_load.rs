//! Benchmark: Redis round trips and bytes per heartbeat interval for one worker node holding
//! 1,000 runners, and the cost of its heartbeat script in Redis.
//!
//! `cargo run --release -p runfleet-tests --bin heartbeat-load [RUNNERS] [SECONDS] [busy|idle]`
//!
//! It starts a private redis-server, an orchestrator and one worker node (the real binaries),
//! starts RUNNERS runners (enterprise users of 50 each), stops the orchestrator so that the
//! node is Redis' only client, then measures for SECONDS and prints the figures, the node's
//! memory per running runner among them. `busy` runners (the default) scalp, trading on most
//! ticks; `idle` ones run an sma-cross of 100 and 500 candles, which holds nothing for its first
//! 500 ticks: a running runner waiting for its signal, the common case of a real fleet.
//!
//! Nothing is attached to Redis while it measures: `MONITOR` feeds every command, those run by
//! scripts included, to the monitoring client and inflated the script's cost about tenfold. The
//! node reaches Redis through a counting TCP proxy in this process instead, which reads the
//! commands it sends (the RESP request stream) without slowing Redis; the script's cost comes
//! from `INFO commandstats` and Redis' CPU from `INFO cpu`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runfleet_tests::{
    Fleet, PrivateRedis, eventually, free_port, idle_start_request, rss_bytes, start_request,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw the node send: commands by name and bytes.
#[derive(Debug, Default)]
struct Traffic {
    commands: BTreeMap<String, u64>,
    bytes: u64,
}

/// Splits a RESP request stream into commands, across reads.
#[derive(Debug, Default)]
struct RequestParser {
    pending: Vec<u8>,
}

impl RequestParser {
    /// Feeds `data`; returns the names (upper case) of the commands completed by it.
    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(data);
        let mut names = Vec::new();
        while let Some((name, used)) = Self::command(&self.pending) {
            names.push(name);
            self.pending.drain(..used);
        }
        names
    }

    /// The first complete command of `buf` (`*<n>` bulk strings, or an inline line): its
    /// name and its length in bytes.
    fn command(buf: &[u8]) -> Option<(String, usize)> {
        let line = |from: usize| -> Option<(&[u8], usize)> {
            let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
            Some((&buf[from..end], end + 2))
        };
        let number = |bytes: &[u8]| std::str::from_utf8(bytes).ok()?.parse::<usize>().ok();
        let (first, mut at) = line(0)?;
        if first.first() != Some(&b'*') {
            let name = first.split(|b| *b == b' ').next().unwrap_or_default();
            return Some((String::from_utf8_lossy(name).to_uppercase(), at));
        }
        let parts = number(&first[1..])?;
        let mut name = String::new();
        for i in 0..parts {
            let (header, body) = line(at)?;
            let len = number(header.strip_prefix(b"$")?)?;
            if buf.len() < body + len + 2 {
                return None;
            }
            if i == 0 {
                name = String::from_utf8_lossy(&buf[body..body + len]).to_uppercase();
            }
            at = body + len + 2;
        }
        Some((name, at))
    }
}

/// A TCP proxy to Redis on `127.0.0.1:<upstream>` that counts what clients send; its port.
async fn counting_proxy(upstream: u16, traffic: Arc<Mutex<Traffic>>) -> anyhow::Result<u16> {
    let port = free_port();
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let replies = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
                });
                let mut parser = RequestParser::default();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match client_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    {
                        let mut t = traffic.lock().unwrap_or_else(|p| p.into_inner());
                        t.bytes += n as u64;
                        for name in parser.feed(&buf[..n]) {
                            *t.commands.entry(name).or_default() += 1;
                        }
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                replies.abort();
            });
        }
    });
    Ok(port)
}

async fn redis_info(port: u16, section: &str) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", section])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "redis-cli INFO {section} failed");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn redis_cpu_ms(info: &str) -> f64 {
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .sum::<f64>()
        * 1_000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runners: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let idle = match args.next().as_deref() {
        None | Some("busy") => false,
        Some("idle") => true,
        Some(other) => anyhow::bail!("the runners are `busy` or `idle`, not {other:?}"),
    };
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
    let traffic = Arc::new(Mutex::new(Traffic::default()));
    let proxy = counting_proxy(redis.port, traffic.clone()).await?;
    fleet.set("RUNFLEET__REDIS__URL", format!("redis://127.0.0.1:{proxy}"));
    let node = fleet.worker("worker", runners);
    eventually(Duration::from_secs(30), "the node registered", || {
        let api = api.clone();
        async move {
            let (_, nodes) = api.get("/v1/nodes").await;
            nodes["nodes"]
                .as_array()
                .is_some_and(|n| n.len() == 1)
                .then_some(())
        }
    })
    .await;
    let idle_rss = rss_bytes(node.pid())?;

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
            let request = if idle {
                idle_start_request(&user, &format!("s{s}"))
            } else {
                start_request(&user, &format!("s{s}"))
            };
            let (code, body) = api.post("/v1/runners", &request).await;
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
    let reset = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "CONFIG", "RESETSTAT"])
        .output()
        .await?;
    anyhow::ensure!(reset.status.success(), "CONFIG RESETSTAT failed");
    let cpu_before = redis_cpu_ms(&redis_info(redis.port, "cpu").await?);
    *traffic.lock().unwrap_or_else(|p| p.into_inner()) = Traffic::default();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let Traffic { commands, bytes } =
        std::mem::take(&mut *traffic.lock().unwrap_or_else(|p| p.into_inner()));
    let elapsed_ms = window.elapsed().as_secs_f64() * 1_000.0;
    let cpu_ms = redis_cpu_ms(&redis_info(redis.port, "cpu").await?) - cpu_before;
    let total: u64 = commands.values().sum();
    // deadpool checks a pooled connection with UNWATCH and PING pipelined: one round trip.
    let round_trips = total - commands.get("UNWATCH").copied().unwrap_or(0);
    let intervals = elapsed_ms / interval_ms as f64;
    println!(
        "node commands over {:.1} s ({intervals:.1} heartbeat intervals of {interval_ms} ms): {commands:?}",
        elapsed_ms / 1_000.0
    );
    println!(
        "round trips per heartbeat interval, all of the node's traffic: {:.2} ({:.2} commands)",
        round_trips as f64 / intervals,
        total as f64 / intervals
    );
    println!(
        "heartbeat scripts per interval: {:.2}",
        commands.get("EVALSHA").copied().unwrap_or(0) as f64 / intervals
    );
    println!(
        "bytes the node sent to Redis per runner per heartbeat: {:.0}",
        bytes as f64 / intervals / runners as f64
    );
    println!(
        "Redis CPU per heartbeat interval: {:.2} ms ({:.3} ms per minute per runner)",
        cpu_ms / intervals,
        cpu_ms / (elapsed_ms / 60_000.0) / runners as f64
    );
    println!(
        "worker-node memory per running runner: {:.1} KiB (RSS {:.1} MiB idle, {:.1} MiB with {runners} running)",
        (rss_bytes(node.pid())? - idle_rss) / runners as f64 / 1_024.0,
        idle_rss / 1_048_576.0,
        rss_bytes(node.pid())? / 1_048_576.0,
    );
    let stats = redis_info(redis.port, "commandstats").await?;
    if let Some(line) = stats.lines().find(|l| l.starts_with("cmdstat_evalsha")) {
        println!("heartbeat script cost in Redis ({runners} runners): {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::RequestParser;

    #[test]
    fn commands_are_counted_across_reads_and_pipelines() {
        let mut p = RequestParser::default();
        let stream = b"*2\r\n$7\r\nUNWATCH\r\n$0\r\n\r\n*1\r\n$4\r\nping\r\n*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n";
        let (a, b) = stream.split_at(30);
        let mut names = p.feed(a);
        names.extend(p.feed(b));
        assert_eq!(names, ["UNWATCH", "PING", "EVALSHA"]);
        assert!(p.pending.is_empty());
        assert_eq!(p.feed(b"PING\r\n"), ["PING"]);
    }
}
