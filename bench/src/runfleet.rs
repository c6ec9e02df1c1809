//! runfleet's side: the release orchestrator and worker nodes (spawned through the fleet-test
//! harness, which builds them for the profile this binary runs in) on the private Redis, at the
//! production defaults except where a phase needs otherwise (docs/benchmarks.md lists each).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::ids::JobId;
use runfleet_shared::job::{JobSpec, StartRunnerRequest};
use runfleet_shared::keys::Keys;
use runfleet_shared::redis_pool::RedisPools;
use runfleet_shared::store::{FleetPolicy, JobStore, RedisStore};
use runfleet_tests::{
    ADMIN_KEY, Api, Process, cpu_micros, free_port, idle_start_request, rss_bytes, start_request,
};
use serde_json::json;

use redis::aio::MultiplexedConnection;

use crate::redis_server::BenchRedis;
use crate::report::{Row, Sample, quantile};
use crate::slowlog::{self, Slow};
use crate::{Runners, Sizes};

/// The fleet's key prefix on the private Redis.
const PREFIX: &str = "bench";
/// The Redis-list queue's name (the default).
const QUEUE: &str = "jobs";
/// A fixed credentials key: the bench seals made-up credentials with it.
const CREDENTIALS_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// Runner slots per tier and fleet-wide: high enough that no start is refused.
const NO_LIMIT: u32 = 10_000_000;
/// The heartbeat interval the fleet runs at (the default, `heartbeat.interval_ms`).
pub const HEARTBEAT_MS: u64 = 5_000;

/// The settings the bench gives every runfleet process, as environment variables. Everything
/// not named keeps its production default (heartbeat 5 s, lease 30 s, sweep 5 s, log `info`).
fn env(redis_url: &str) -> Vec<(&'static str, String)> {
    let no_limit = NO_LIMIT.to_string();
    vec![
        ("RUNFLEET__REDIS__URL", redis_url.to_owned()),
        ("RUNFLEET__REDIS__KEY_PREFIX", PREFIX.into()),
        ("RUNFLEET__QUEUE__BACKEND", "redis".into()),
        ("RUNFLEET__QUEUE__NAME", QUEUE.into()),
        (
            "RUNFLEET__SECURITY__CREDENTIALS_KEY",
            CREDENTIALS_KEY.into(),
        ),
        ("RUNFLEET__SECURITY__ADMIN_KEY", ADMIN_KEY.into()),
        // The bench's 50 clients are one admin key: per-key limits would measure the limiter.
        ("RUNFLEET__RATE_LIMITS__ENABLED", "false".into()),
        ("RUNFLEET__TIERS__FREE", no_limit.clone()),
        ("RUNFLEET__TIERS__BASIC", no_limit.clone()),
        ("RUNFLEET__TIERS__PRO", no_limit.clone()),
        ("RUNFLEET__TIERS__ENTERPRISE", no_limit.clone()),
        ("RUNFLEET__LIMITS__MAX_RUNNERS", no_limit.clone()),
        ("RUNFLEET__LIMITS__MAX_QUEUED", no_limit),
        // The most idle trading runner there is: one simulated candle a second. Ticks cost
        // the node CPU, not Redis.
        ("RUNFLEET__MARKET__TICK_MS", "1000".into()),
        ("RUST_LOG", "info".into()),
    ]
}

/// The same settings as a [`Settings`], for the admission script's context arguments.
fn settings(redis_url: &str) -> Settings {
    let mut s = Settings::default();
    s.redis.url = redis_url.to_owned();
    s.redis.key_prefix = PREFIX.into();
    s.queue.name = QUEUE.into();
    s.tiers.free = NO_LIMIT;
    s.tiers.basic = NO_LIMIT;
    s.tiers.pro = NO_LIMIT;
    s.tiers.enterprise = NO_LIMIT;
    s.limits.max_runners = NO_LIMIT;
    s.limits.max_queued = NO_LIMIT;
    s
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1_000.0
}

/// Admits starts through runfleet's store the way the orchestrator does, without HTTP: the
/// admission script (a Redis Function; store_admit.lua) per start, or the batch admission script
/// (store_admit_many.lua, 64 starts per call, pipelined) per bulk.
struct Admitter {
    store: RedisStore,
    cipher: CredentialCipher,
}

/// One admission: the job spec the orchestrator would make.
struct Admission {
    id: JobId,
    spec: JobSpec,
}

impl Admitter {
    async fn new(redis: &BenchRedis) -> anyhow::Result<Self> {
        let settings = settings(&redis.url());
        let pools = RedisPools::new(&settings.redis)?;
        let store = RedisStore::new(
            pools,
            Keys::new(PREFIX),
            FleetPolicy::from_settings(&settings),
        )
        .queuing_into(QUEUE);
        Ok(Self {
            store,
            cipher: CredentialCipher::from_base64(CREDENTIALS_KEY)?,
        })
    }

    /// The job spec the orchestrator would make for start `i` of `clients` users, of a runner
    /// that does what `runners` says.
    fn admission(&self, i: usize, clients: usize, runners: Runners) -> anyhow::Result<Admission> {
        let request = match runners {
            Runners::Busy => start_request,
            Runners::Idle => idle_start_request,
        };
        let mut req: StartRunnerRequest =
            serde_json::from_value(request(&format!("user-{}", i % clients), &format!("s{i}")))?;
        runfleet_trading::validate::apply_defaults(&mut req.config);
        let spec = JobSpec::sealed(JobId::generate(), req, &self.cipher)?;
        Ok(Admission {
            id: spec.id.clone(),
            spec,
        })
    }

    /// Admits one start (one script call, one round trip).
    async fn admit(&self, a: &Admission) -> anyhow::Result<()> {
        ensure_admitted(self.store.admit(&a.spec).await?)
    }

    /// Admits every one of `batch` in one round trip.
    async fn admit_pipelined(&self, batch: &[Admission]) -> anyhow::Result<()> {
        let specs: Vec<JobSpec> = batch.iter().map(|a| a.spec.clone()).collect();
        for admission in self.store.admit_many(&specs).await? {
            ensure_admitted(admission)?;
        }
        Ok(())
    }
}

fn ensure_admitted(admission: runfleet_shared::store::Admission) -> anyhow::Result<()> {
    match admission {
        runfleet_shared::store::Admission::Admitted { .. } => Ok(()),
        other => bail!("the admission script refused a start: {other:?}"),
    }
}

/// One repetition of every runfleet phase.
pub async fn run(
    redis: &BenchRedis,
    sizes: &Sizes,
    logs: PathBuf,
) -> anyhow::Result<(Sample, Vec<Slow>)> {
    let mut sample = Sample::new();
    let mut slow = slowlog::take(redis, "before").await?;
    let url = redis.url();
    redis.flush().await?;
    let (orchestrator, api) = orchestrator(&logs, &url).await?;
    let admitter = Admitter::new(redis).await?;

    // Single starts over HTTP, with every process's CPU: the bench's own (its HTTP clients
    // are all it runs meanwhile), the orchestrator's, Redis'.
    let cpu = || -> anyhow::Result<[f64; 2]> {
        Ok([
            cpu_micros(std::process::id())?,
            cpu_micros(orchestrator.pid())?,
        ])
    };
    let (before, [client, api_cpu]) = (redis.probe().await?, cpu()?);
    let secs = http_starts(&api, sizes).await?;
    let cost = redis.probe().await? - before;
    let [client_after, api_after] = cpu()?;
    let per_start = |us: f64| us / sizes.starts as f64;
    let redis_us = per_start(cost.cpu_ms * 1_000.0);
    let (client_us, api_us) = (
        per_start(client_after - client),
        per_start(api_after - api_cpu),
    );
    sample.insert(Row::HttpStarts, sizes.starts as f64 / secs);
    sample.insert(Row::CpuPerStart, redis_us);
    sample.insert(Row::ClientCpuPerStart, client_us);
    sample.insert(Row::ApiCpuPerStart, api_us);
    sample.insert(Row::MachineCpuPerStart, client_us + api_us + redis_us);
    eprintln!("  runfleet: {} HTTP starts in {secs:.2} s", sizes.starts);
    slow.extend(slowlog::take(redis, "HTTP starts").await?);

    // The admission script from a plain client: one multiplexed connection, like ioredis in
    // BullMQ's Queue, with `clients` calls in flight.
    redis.flush().await?;
    let batch: Vec<Admission> = (0..sizes.starts)
        .map(|i| admitter.admission(i, sizes.clients, Runners::Busy))
        .collect::<anyhow::Result<_>>()?;
    let batch = Arc::new(batch);
    let admitter = Arc::new(admitter);
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..sizes.clients)
        .map(|_| {
            let (batch, admitter, next) = (batch.clone(), admitter.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(a) = batch.get(i) else { break };
                    admitter.admit(a).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    sample.insert(
        Row::ScriptStarts,
        sizes.starts as f64 / t.elapsed().as_secs_f64(),
    );
    slow.extend(slowlog::take(redis, "script starts").await?);

    // Bulk starts.
    redis.flush().await?;
    let total = sizes.bulk_batch * sizes.bulk_batches;
    let batches: Vec<Vec<Admission>> = (0..sizes.bulk_batches)
        .map(|b| {
            (0..sizes.bulk_batch)
                .map(|k| admitter.admission(b * sizes.bulk_batch + k, sizes.clients, Runners::Busy))
                .collect()
        })
        .collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    for batch in &batches {
        admitter.admit_pipelined(batch).await?;
    }
    sample.insert(Row::BulkStarts, total as f64 / t.elapsed().as_secs_f64());
    slow.extend(slowlog::take(redis, "bulk starts").await?);

    // Bulk starts through the batch endpoint: the same number of runners, each batch one
    // request (its JSON made before the clock starts).
    redis.flush().await?;
    let bodies: Vec<serde_json::Value> = (0..sizes.bulk_batches)
        .map(|b| batch_body(b, sizes))
        .collect();
    let t = Instant::now();
    for body in &bodies {
        http_batch(&api, body).await?;
    }
    sample.insert(
        Row::BatchHttpStarts,
        total as f64 / t.elapsed().as_secs_f64(),
    );
    slow.extend(slowlog::take(redis, "batch endpoint").await?);

    // Pick-up latency, one start at a time, with one idle node waiting.
    redis.flush().await?;
    let mut c = redis.conn().await?;
    let capacity = sizes.pickup_samples + crate::WARMUP + 1;
    let pickup_node = node(&logs, "pickup-node", &url, capacity);
    wait_for_nodes(&api, 1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_bytes(pickup_node.pid())?;
    let keys = Keys::new(PREFIX);
    // Running is seen by a blocking read of the fleet's event stream: the claim script adds the
    // job's `claimed` event in the step that marks it running, and the read wakes then (the
    // job hash's `started` is whole ms, too coarse for sub-ms pick-ups).
    // The read waits from before the start is sent, as BullMQ's processor does: the measure
    // ends when the claim is seen, whether or not the start's answer has arrived yet (one
    // start at a time, so the next `claimed` event is this start's; checked below).
    let mut events = Some(redis.conn().await?);
    let mut last_event = "0-0".to_owned();
    let mut latencies = Vec::new();
    for i in 0..crate::WARMUP + sizes.pickup_samples {
        let conn = events.take().context("the event connection")?;
        let reading = tokio::spawn(claimed_event(conn, keys.events(), last_event.clone()));
        tokio::task::yield_now().await;
        let t0 = now_ms();
        let (code, body) = api
            .post(
                "/v1/runners",
                &start_request("pickup-user", &format!("p{i}")),
            )
            .await;
        ensure!(code == 202, "start refused: {code} {body}");
        let id = body["jobId"].as_str().context("jobId")?.to_owned();
        let (running, claimed, conn, last) = reading.await??;
        ensure!(
            claimed == id,
            "job {claimed} was claimed while {id} was awaited"
        );
        (events, last_event) = (Some(conn), last);
        if i >= crate::WARMUP {
            latencies.push(running - t0);
        }
    }
    drop(pickup_node);
    sample.insert(Row::PickupP50, quantile(&latencies, 0.5));
    sample.insert(Row::PickupP99, quantile(&latencies, 0.99));
    slow.extend(slowlog::take(redis, "pick-up").await?);

    // Drain: `running` jobs queued, then the nodes started.
    redis.flush().await?;
    let mut ids = Vec::with_capacity(sizes.running);
    for chunk_start in (0..sizes.running).step_by(1_000) {
        let batch: Vec<Admission> = (chunk_start..sizes.running.min(chunk_start + 1_000))
            .map(|i| admitter.admission(i, sizes.clients, sizes.runners))
            .collect::<anyhow::Result<_>>()?;
        admitter.admit_pipelined(&batch).await?;
        ids.extend(batch.into_iter().map(|a| keys.job(&a.id)));
    }
    let per_node = sizes.running.div_ceil(sizes.nodes);
    slow.extend(slowlog::take(redis, "queueing the drain").await?);
    let stalls = redis.watch_stalls().await?;
    let before = redis.probe().await?;
    let t0 = now_ms();
    let nodes: Vec<Process> = (0..sizes.nodes)
        .map(|n| node(&logs, &format!("node-{n}"), &url, per_node))
        .collect();
    // Running means claimed: the claim script takes a job out of the `queued` set in the step
    // that marks it running. (The job hashes' `started` is the claim script's `TIME`, taken
    // when the script begins, so it cannot tell when a claim of thousands ends.)
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    let all_running = loop {
        let queued: u64 = redis::cmd("SCARD")
            .arg(keys.queued())
            .query_async(&mut c)
            .await?;
        if queued == 0 {
            break now_ms();
        }
        ensure!(
            Instant::now() < drain_deadline,
            "the nodes did not start every queued runner within 300 s (logs in {})",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let cost = redis.probe().await? - before;
    sample.insert(Row::DrainRedisCpu, cost.cpu_ms);
    let mut node_cpu = 0.0;
    for n in &nodes {
        node_cpu += cpu_micros(n.pid())? / 1_000.0;
    }
    sample.insert(Row::DrainNodeCpu, node_cpu);
    let mut pipe = redis::pipe();
    for k in &ids {
        pipe.cmd("HGET").arg(k).arg("status");
    }
    let statuses: Vec<Option<String>> = pipe.query_async(&mut c).await?;
    let not_running = statuses
        .iter()
        .filter(|s| s.as_deref() != Some("running"))
        .count();
    ensure!(
        not_running == 0,
        "{not_running} of {} drained jobs are not running (logs in {})",
        ids.len(),
        logs.display()
    );
    sample.insert(Row::Drain, all_running - t0);
    sample.insert(Row::DrainStall, stalls.stop().await?);
    slow.extend(slowlog::take(redis, "drain").await?);
    eprintln!(
        "  runfleet: {} runners running on {} node(s)",
        sizes.running, sizes.nodes
    );

    // Steady state: every runner running, default timings.
    let (cpu, bytes, stall) = crate::steady(redis, sizes, HEARTBEAT_MS).await?;
    sample.insert(Row::SteadyCpu, cpu);
    sample.insert(Row::BytesPerBeat, bytes);
    sample.insert(Row::Stall, stall);
    slow.extend(slowlog::take(redis, "steady").await?);
    let mut grown = 0.0;
    for n in &nodes {
        grown += rss_bytes(n.pid())? - idle_rss;
    }
    sample.insert(Row::MemoryPerRunner, grown / sizes.running as f64 / 1_024.0);
    drop(nodes);
    redis.flush().await?;
    Ok((sample, slow))
}

/// Blocks on the fleet's event stream `stream` from `last` (moved on past what was read) until
/// job `id`'s `claimed` event; the wall clock (ms, µs resolution) when it was read.
async fn claimed_event(
    mut c: MultiplexedConnection,
    stream: String,
    mut last: String,
) -> anyhow::Result<(f64, String, MultiplexedConnection, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ensure!(Instant::now() < deadline, "no job was claimed within 30 s");
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(1_000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(last.as_str())
            .query_async(&mut c)
            .await?;
        let seen = now_ms();
        let mut claimed = None;
        for (entry_id, fields) in stream_entries(&reply) {
            last = entry_id;
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|kv| kv[0] == name)
                    .and_then(|kv| kv.get(1).cloned())
                    .unwrap_or_default()
            };
            if claimed.is_none() && field("type") == "claimed" {
                claimed = Some(field("job"));
            }
        }
        if let Some(job) = claimed {
            return Ok((seen, job, c, last));
        }
    }
}

/// The entries of an `XREAD` reply of one stream (RESP2 or RESP3): id and flat field list.
fn stream_entries(reply: &redis::Value) -> Vec<(String, Vec<String>)> {
    use redis::Value;
    let text = |v: &Value| redis::from_redis_value::<String>(v.clone()).unwrap_or_default();
    // RESP2: [[name, entries]]; RESP3: {name: entries}.
    let per_stream: Vec<&Value> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    per_stream
        .into_iter()
        .filter_map(|entries| match entries {
            Value::Array(e) => Some(e),
            _ => None,
        })
        .flatten()
        .filter_map(|entry| match entry {
            Value::Array(pair) if pair.len() == 2 => match &pair[1] {
                Value::Array(fields) => Some((text(&pair[0]), fields.iter().map(text).collect())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn orchestrator(logs: &std::path::Path, url: &str) -> anyhow::Result<(Process, Api)> {
    let port = free_port();
    let p = runfleet_tests::spawn(
        logs,
        "orchestrator",
        "runfleet-orchestrator",
        &["--bind".into(), format!("127.0.0.1:{port}")],
        env(url),
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    if let Err(e) = api.wait_healthy(Duration::from_secs(30)).await {
        bail!(
            "the orchestrator did not become healthy: {e}\n--- its output ---\n{}",
            p.output()
        );
    }
    Ok((p, api))
}

fn node(logs: &std::path::Path, name: &str, url: &str, capacity: usize) -> Process {
    runfleet_tests::spawn(
        logs,
        name,
        "runfleet-worker-node",
        &["--capacity".into(), capacity.to_string()],
        env(url),
    )
}

async fn wait_for_nodes(api: &Api, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = api.get("/v1/nodes").await;
        if body["nodes"].as_array().is_some_and(|a| a.len() >= n) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no worker node registered in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `sizes.starts` `POST /v1/runners` from `sizes.clients` concurrent clients; the seconds taken.
async fn http_starts(api: &Api, sizes: &Sizes) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = (0..sizes.clients)
        .map(|client| {
            let (api, next, total) = (api.clone(), next.clone(), sizes.starts);
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let body = start_request(&format!("user-{client}"), &format!("s{i}"));
                    let (code, reply) = api.try_post("/v1/runners", &body).await?;
                    ensure!(code == 202, "start refused: {code} {reply}");
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task??;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// The hook for the bulk start endpoint (issue 15): batch `b` as one `POST /v1/runners/batch`.
/// The body's shape is the one the issue proposes; adjust it here when the endpoint lands.
/// The body of bulk call `b`: `bulk_batch` start requests.
fn batch_body(b: usize, sizes: &Sizes) -> serde_json::Value {
    let runners: Vec<_> = (0..sizes.bulk_batch)
        .map(|k| {
            let i = b * sizes.bulk_batch + k;
            start_request(&format!("user-{}", i % sizes.clients), &format!("s{i}"))
        })
        .collect();
    json!({ "runners": runners })
}

/// One `POST /v1/runners/batch`; every runner in it must be accepted.
async fn http_batch(api: &Api, body: &serde_json::Value) -> anyhow::Result<()> {
    let (code, reply) = api.try_post("/v1/runners/batch", body).await?;
    ensure!(
        code == 200,
        "POST /v1/runners/batch answered {code}: {reply}"
    );
    let accepted = reply["accepted"].as_u64();
    ensure!(
        accepted == reply["results"].as_array().map(|r| r.len() as u64),
        "POST /v1/runners/batch refused some runners: {reply}"
    );
    Ok(())
}
