//! The benchmark's private `redis-server` (no persistence, on a free port) and the probes read
//! from it: Redis' own CPU time and received bytes (`INFO`), and the longest stall a client sees
//! (a `PING` loop). Nothing here attaches `MONITOR`, which would slow Redis down many times over.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use redis::aio::MultiplexedConnection;

/// A private `redis-server`, killed on drop.
#[derive(Debug)]
pub struct BenchRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Child,
    client: redis::Client,
}

impl BenchRedis {
    /// Starts one (`--save "" --appendonly no`, `noeviction`) and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        let port = runfleet_tests::free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory-policy", "noeviction"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("the benchmark starts its own redis-server; install redis-server")?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let redis = Self {
            port,
            child,
            client,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis.conn().await {
                Ok(_) => return Ok(redis),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).context("the private redis-server did not answer");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new connection of its own.
    pub async fn conn(&self) -> anyhow::Result<MultiplexedConnection> {
        // No short response timeout: a stall is what the PING loop is there to measure, and the
        // drain's pipelines of thousands of scripts may take seconds.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(Duration::from_secs(120)));
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(c)
    }

    /// Deletes every key (scripts stay loaded) so that the next phase starts empty.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let mut c = self.conn().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
        Ok(())
    }

    /// Redis' counters now.
    pub async fn probe(&self) -> anyhow::Result<Probe> {
        let mut c = self.conn().await?;
        let info: String = redis::cmd("INFO").arg("all").query_async(&mut c).await?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let prefix = format!("{name}:");
            let line = info
                .lines()
                .find(|l| l.starts_with(&prefix))
                .with_context(|| format!("INFO lacks {name}"))?;
            Ok(line[prefix.len()..].trim().parse()?)
        };
        Ok(Probe {
            cpu_ms: (field("used_cpu_sys")? + field("used_cpu_user")?) * 1_000.0,
            net_in_bytes: field("total_net_input_bytes")?,
        })
    }

    /// The longest round trip of back-to-back `PING`s on one connection for `window`, in ms.
    pub async fn longest_stall(&self, window: Duration) -> anyhow::Result<f64> {
        let watch = self.watch_stalls().await?;
        tokio::time::sleep(window).await;
        watch.stop().await
    }

    /// Back-to-back `PING`s on a connection of their own until [`StallWatch::stop`]: the
    /// longest stall of a phase that ends when something happens (the drain).
    pub async fn watch_stalls(&self) -> anyhow::Result<StallWatch> {
        let mut c = self.conn().await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut pings = 0u64;
            loop {
                let t = Instant::now();
                let _: String = redis::cmd("PING").query_async(&mut c).await?;
                longest = longest.max(t.elapsed());
                pings += 1;
                if stopped.try_recv().is_ok() {
                    break;
                }
            }
            if pings == 0 {
                bail!("no PING answered");
            }
            Ok(longest.as_secs_f64() * 1_000.0)
        });
        Ok(StallWatch { stop, task })
    }
}

/// A running `PING` loop ([`BenchRedis::watch_stalls`]).
#[derive(Debug)]
pub struct StallWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<f64>>,
}

impl StallWatch {
    /// Ends the loop; the longest round trip it saw, in ms.
    pub async fn stop(self) -> anyhow::Result<f64> {
        let _ = self.stop.send(());
        self.task.await?
    }
}

impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cumulative Redis counters, read with `INFO`; subtract two to measure a window.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// `used_cpu_sys + used_cpu_user` of the redis-server process, in ms.
    pub cpu_ms: f64,
    /// `total_net_input_bytes`: everything every client sent.
    pub net_in_bytes: f64,
}

impl std::ops::Sub for Probe {
    type Output = Probe;

    fn sub(self, earlier: Probe) -> Probe {
        Probe {
            cpu_ms: self.cpu_ms - earlier.cpu_ms,
            net_in_bytes: self.net_in_bytes - earlier.net_in_bytes,
        }
    }
}
