//! Harness for whole-fleet tests: builds and spawns the real `runfleet-orchestrator` and
//! `runfleet-worker-node` binaries against the real Redis, each fleet under a key prefix of its
//! own, and talks to them over HTTP. Processes are killed when their handle drops; their output
//! goes to `target/fleet-logs/<fleet>/<process>.log`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// The Redis the tests use.
pub fn redis_url() -> String {
    std::env::var("RUNFLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The test Redis Cluster's seed nodes: `RUNFLEET_TEST_CLUSTER_URL` (comma-separated), or the
/// one `scripts/test` starts (`scripts/redis-cluster start 7101 target/redis-cluster`).
pub fn cluster_url() -> String {
    std::env::var("RUNFLEET_TEST_CLUSTER_URL").unwrap_or_else(|_| {
        "redis://127.0.0.1:7101,redis://127.0.0.1:7102,redis://127.0.0.1:7103".into()
    })
}

/// A Redis connection, or a panic saying clearly that the test needs a real Redis.
pub async fn redis() -> redis::aio::MultiplexedConnection {
    redis_at(&redis_url()).await
}

/// A connection to the Redis at `url`, or a clear panic.
pub async fn redis_at(url: &str) -> redis::aio::MultiplexedConnection {
    let attempt = async {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match attempt.await {
        Ok(c) => c,
        Err(e) => panic!(
            "whole-fleet tests need a real Redis at {url} and could not reach it ({e}). \
             Run `scripts/test`, which starts one, or set RUNFLEET_TEST_REDIS_URL."
        ),
    }
}

fn target_dir() -> PathBuf {
    // Tests run from target/<profile>/deps/, bench binaries from target/<profile>/.
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary, built once per test process so it is never stale.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = target_dir();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "runfleet-orchestrator",
            "-p",
            "runfleet-worker-node",
            "-p",
            "runfleet-cli",
        ]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build of the fleet binaries failed: {s}")),
            Err(e) => Err(format!("cannot run cargo to build the fleet binaries: {e}")),
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    dir.join(name)
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Resident memory of a process (`VmRSS`), in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/<pid>/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024.0)
}

/// CPU time a process has used so far (user + system, every thread), in microseconds, at the
/// resolution of `/proc/<pid>/stat` (Linux reports it in USER_HZ, 100 per second).
pub fn cpu_micros(pid: u32) -> anyhow::Result<f64> {
    use anyhow::Context as _;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After the command name (which may hold spaces, in parentheses): state is field 3, utime
    // and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').context("no ) in /proc/<pid>/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).context("a short /proc/<pid>/stat")?.parse()?)
    };
    Ok((ticks(11)? + ticks(12)?) * 10_000.0)
}

/// A spawned fleet process, killed on drop.
#[derive(Debug)]
pub struct Process {
    /// Name used in logs.
    pub name: String,
    child: Child,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Process {
    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, `"STOP"`, `"CONT"`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "kill -{sig} {} failed",
            self.name
        );
    }

    /// Waits up to `within` for the process to exit; returns its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process' output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns a workspace binary with `env`, its output going to `<logs>/<name>.log`.
pub fn spawn<'a>(
    logs: &Path,
    name: &str,
    bin: &str,
    args: &[String],
    env: impl IntoIterator<Item = (&'a str, String)>,
) -> Process {
    spawn_in(logs, name, None, bin, args, env)
}

/// [`spawn`], inside the network namespace `netns` when given (`ip netns exec`, which execs the
/// binary: the process id is the binary's).
pub fn spawn_in<'a>(
    logs: &Path,
    name: &str,
    netns: Option<&str>,
    bin: &str,
    args: &[String],
    env: impl IntoIterator<Item = (&'a str, String)>,
) -> Process {
    std::fs::create_dir_all(logs).expect("log dir");
    let log = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let mut command = match netns {
        None => Command::new(binary(bin)),
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(binary(bin));
            c
        }
    };
    let child = command
        .args(args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));
    Process {
        name: name.to_owned(),
        child,
        log,
    }
}

/// Where whole-fleet tests put their processes' logs.
pub fn log_dir(name: &str) -> PathBuf {
    target_dir().join("fleet-logs").join(name)
}

/// Where browser tests put their screenshots (`target/<profile>/browser/<name>`).
pub fn screenshot_dir(name: &str) -> PathBuf {
    target_dir().join("browser").join(name)
}

/// One fleet: its key prefix, shared settings, and the processes spawned for it.
#[derive(Debug)]
pub struct Fleet {
    /// Unique name; also the Redis key prefix.
    pub prefix: String,
    env: HashMap<String, String>,
    logs: PathBuf,
}

/// The admin key test fleets use.
pub const ADMIN_KEY: &str = "test-admin-key";

impl Fleet {
    /// A fleet on the test Redis with fast intervals (heartbeat 200 ms, lease 3 s, sweep 200 ms,
    /// restart delay from 100 ms) and the audit stream on.
    pub fn new(name: &str) -> Self {
        Self::on(name, &redis_url())
    }

    /// The same, on the Redis at `url`.
    pub fn on(name: &str, url: &str) -> Self {
        let prefix = format!("rffleet-{name}-{}", std::process::id());
        let logs = log_dir(&prefix);
        let env = [
            ("RUNFLEET__REDIS__URL", url.to_owned()),
            ("RUNFLEET__REDIS__KEY_PREFIX", prefix.clone()),
            ("RUNFLEET__QUEUE__BACKEND", "redis".into()),
            (
                "RUNFLEET__SECURITY__CREDENTIALS_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
            ),
            ("RUNFLEET__SECURITY__ADMIN_KEY", ADMIN_KEY.into()),
            ("RUNFLEET__HEARTBEAT__INTERVAL_MS", "200".into()),
            ("RUNFLEET__HEARTBEAT__LEASE_MS", "3000".into()),
            ("RUNFLEET__MARKET__TICK_MS", "20".into()),
            ("RUNFLEET__NODE__CLAIM_WAIT_MS", "200".into()),
            ("RUNFLEET__SHUTDOWN__DEADLINE_MS", "5000".into()),
            ("RUNFLEET__SWEEP__INTERVAL_MS", "200".into()),
            ("RUNFLEET__RESTART__BASE_DELAY_MS", "100".into()),
            ("RUNFLEET__RESTART__MAX_DELAY_MS", "1000".into()),
            ("RUNFLEET__TESTING__AUDIT", "true".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self { prefix, env, logs }
    }

    /// A fleet on the test Redis Cluster (`RUNFLEET_TEST_CLUSTER_URL`, or the one
    /// `scripts/test` starts on 7101-7106), otherwise as [`Fleet::new`].
    pub fn new_on_cluster(name: &str) -> Self {
        Self::on_cluster(name, &cluster_url())
    }

    /// The same, on the Redis Cluster whose seed nodes are `urls` (comma-separated).
    pub fn on_cluster(name: &str, urls: &str) -> Self {
        let mut fleet = Self::on(name, urls);
        fleet.set("RUNFLEET__REDIS__CLUSTER", "true");
        fleet
    }

    /// A fleet on the test Redis Cluster whose state is split into `shards` shards
    /// (`redis.shards`), otherwise as [`Fleet::new_on_cluster`].
    pub fn sharded_on_cluster(name: &str, shards: u32) -> Self {
        Self::sharded_on(name, &cluster_url(), shards)
    }

    /// The same, on the Redis Cluster whose seed nodes are `urls`.
    pub fn sharded_on(name: &str, urls: &str, shards: u32) -> Self {
        let mut fleet = Self::on_cluster(name, urls);
        fleet.set("RUNFLEET__REDIS__SHARDS", shards.to_string());
        fleet
    }

    /// How many shards the fleet's state is split into (1: not sharded).
    pub fn shards(&self) -> u32 {
        self.env
            .get("RUNFLEET__REDIS__SHARDS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// Whether this fleet runs on a Redis Cluster.
    pub fn clustered(&self) -> bool {
        self.env
            .get("RUNFLEET__REDIS__CLUSTER")
            .is_some_and(|v| v == "true")
    }

    /// The fleet's Redis settings, as its processes read them.
    pub fn redis_settings(&self) -> runfleet_shared::config::RedisSettings {
        runfleet_shared::config::RedisSettings {
            url: self.redis_url().to_owned(),
            cluster: self.clustered(),
            shards: self.shards(),
            key_prefix: self.prefix.clone(),
            ..Default::default()
        }
    }

    /// The fleet's key names (with their hash tag on a cluster); of shard 0 when it is
    /// sharded.
    pub fn keys(&self) -> runfleet_shared::keys::Keys {
        self.shard_keys().swap_remove(0)
    }

    /// The key names of the shard that holds user, job or API key `id`.
    pub fn keys_of(&self, id: &str) -> runfleet_shared::keys::Keys {
        let mut all = self.shard_keys();
        let shard = runfleet_shared::shard::shard_of(id, all.len() as u32);
        all.swap_remove(shard)
    }

    /// The key names of each of the fleet's shards (one when it is not sharded).
    pub fn shard_keys(&self) -> Vec<runfleet_shared::keys::Keys> {
        let settings = self.redis_settings();
        match settings.shards {
            0 | 1 => vec![runfleet_shared::keys::Keys::of(&settings)],
            n => (0..n as usize)
                .map(|i| runfleet_shared::keys::Keys::shard(&settings, i))
                .collect(),
        }
    }

    /// A connection to this fleet's Redis, one server's or a cluster's (commands are routed by
    /// key). Panics with a clear message when it cannot be reached.
    pub async fn conn(&self) -> runfleet_shared::redis_pool::Conn {
        let settings = self.redis_settings();
        let pools =
            runfleet_shared::redis_pool::RedisPools::new(&settings).expect("redis settings");
        let attempt = async {
            let mut c = pools.commands.get().await?;
            let _: String = redis::cmd("PING").query_async(&mut *c).await?;
            Ok::<_, runfleet_shared::redis_pool::RedisError>(c)
        };
        match attempt.await {
            Ok(c) => (*c).clone(),
            Err(e) => panic!(
                "whole-fleet tests need a real Redis{} at {} and could not reach it ({e}). Run \
                 `scripts/test`, which starts them.",
                if settings.cluster { " Cluster" } else { "" },
                settings.url
            ),
        }
    }

    /// Overrides a setting for processes spawned from now on.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    fn spawn(&self, name: &str, bin: &str, args: &[String], extra: &[(&str, String)]) -> Process {
        self.spawn_in(None, name, bin, args, extra)
    }

    fn spawn_in(
        &self,
        netns: Option<&str>,
        name: &str,
        bin: &str,
        args: &[String],
        extra: &[(&str, String)],
    ) -> Process {
        let env = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(extra.iter().cloned());
        spawn_in(&self.logs, name, netns, bin, args, env)
    }

    /// Spawns a worker node holding at most `capacity` runners inside `link`'s network
    /// namespace, reaching Redis at `redis_url` (an address on the far side of the link), with
    /// JSON log lines.
    pub fn worker_in(
        &self,
        link: &NetnsLink,
        redis_url: &str,
        name: &str,
        capacity: usize,
    ) -> Process {
        self.spawn_in(
            Some(&link.netns),
            name,
            "runfleet-worker-node",
            &["--capacity".into(), capacity.to_string()],
            &[
                ("RUNFLEET__REDIS__URL", redis_url.to_owned()),
                ("RUNFLEET__TELEMETRY__FORMAT", "json".to_owned()),
            ],
        )
    }

    /// Spawns an orchestrator inside `link`'s namespace, listening on its loopback at `port`
    /// (reach it with [`ns_http`]) and using Redis at `redis_url` (across the link).
    pub fn orchestrator_in(
        &self,
        link: &NetnsLink,
        redis_url: &str,
        name: &str,
        port: u16,
    ) -> Process {
        self.spawn_in(
            Some(&link.netns),
            name,
            "runfleet-orchestrator",
            &["--bind".into(), format!("127.0.0.1:{port}")],
            &[("RUNFLEET__REDIS__URL", redis_url.to_owned())],
        )
    }

    /// Spawns an orchestrator and waits until it answers `/healthz`.
    pub async fn orchestrator(&self, name: &str) -> (Process, Api) {
        let port = free_port();
        let p = self.spawn(
            name,
            "runfleet-orchestrator",
            &["--bind".into(), format!("127.0.0.1:{port}")],
            &[],
        );
        let api = Api::new(format!("http://127.0.0.1:{port}"));
        if let Err(e) = api.wait_healthy(Duration::from_secs(20)).await {
            panic!(
                "orchestrator {name} did not become healthy: {e}\n--- its output ---\n{}",
                p.output()
            );
        }
        (p, api)
    }

    /// Spawns a worker node holding at most `capacity` runners.
    pub fn worker(&self, name: &str, capacity: usize) -> Process {
        self.spawn(
            name,
            "runfleet-worker-node",
            &["--capacity".into(), capacity.to_string()],
            &[],
        )
    }

    /// Spawns a worker node holding at most `capacity` runners that serves its metrics and
    /// health on a free port (`node.http_bind`); returns it and that listener's base URL.
    pub fn worker_with_http(&self, name: &str, capacity: usize) -> (Process, String) {
        let port = free_port();
        let p = self.spawn(
            name,
            "runfleet-worker-node",
            &["--capacity".into(), capacity.to_string()],
            &[("RUNFLEET__NODE__HTTP_BIND", format!("127.0.0.1:{port}"))],
        );
        (p, format!("http://127.0.0.1:{port}"))
    }

    /// The Redis this fleet uses.
    pub fn redis_url(&self) -> &str {
        self.setting("RUNFLEET__REDIS__URL")
    }

    /// A setting this fleet gives its processes, by its environment variable
    /// (`RUNFLEET__SECURITY__CREDENTIALS_KEY`): for clients that talk to the fleet's Redis
    /// directly. Panics when the fleet sets no such variable.
    pub fn setting(&self, var: &str) -> &str {
        self.env
            .get(var)
            .unwrap_or_else(|| panic!("the test fleet sets no {var}"))
    }

    /// A connection to this fleet's Redis.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_at(self.redis_url()).await
    }

    /// Every accepted write recorded in the audit stream, in the order Redis accepted them.
    /// On a sharded fleet, each shard's audit stream holds its own jobs' writes: they are merged
    /// by time (a job's writes are all in its shard's stream, in order).
    pub async fn audit(&self) -> Vec<AuditEntry> {
        let mut r = self.conn().await;
        let mut ids = Vec::new();
        for keys in self.shard_keys() {
            let raw: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(format!("{}:audit", keys.prefix()))
                .arg("-")
                .arg("+")
                .query_async(&mut r)
                .await
                .expect("XRANGE");
            ids.extend(raw.ids);
        }
        let mut entries: Vec<AuditEntry> = ids
            .into_iter()
            .map(|e| {
                let field = |k: &str| e.get::<String>(k).unwrap_or_default();
                AuditEntry {
                    at_ms: e
                        .id
                        .split('-')
                        .next()
                        .and_then(|ms| ms.parse().ok())
                        .unwrap_or(0),
                    op: field("op"),
                    job: field("job"),
                    epoch: field("epoch").parse().unwrap_or(0),
                    node: field("node"),
                }
            })
            .collect();
        // Stable: one stream's order stays as it was.
        entries.sort_by_key(|e| e.at_ms);
        entries
    }

    /// Deletes every key of this fleet.
    pub async fn cleanup(&self) {
        let mut r = self.conn().await;
        let settings = self.redis_settings();
        let mut prefixes: Vec<String> = self
            .shard_keys()
            .iter()
            .map(|k| k.prefix().to_owned())
            .collect();
        prefixes.push(
            runfleet_shared::keys::Keys::of(&settings)
                .prefix()
                .to_owned(),
        );
        for prefix in prefixes {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut r)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut r).await;
            }
        }
    }

    /// Total length of the ready list and every processing list of the fleet's queue.
    pub async fn queue_lengths(&self) -> (u64, u64) {
        let mut r = self.conn().await;
        let (mut ready, mut processing) = (0, 0);
        for keys in self.shard_keys() {
            let n: u64 = redis::cmd("LLEN")
                .arg(keys.ready("jobs"))
                .query_async(&mut r)
                .await
                .unwrap();
            ready += n;
            let lists: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:queue:jobs:processing:*", keys.prefix()))
                .query_async(&mut r)
                .await
                .unwrap();
            for l in lists {
                let n: u64 = redis::cmd("LLEN").arg(l).query_async(&mut r).await.unwrap();
                processing += n;
            }
        }
        (ready, processing)
    }
}

/// An HTTP client for one orchestrator. It authenticates with the admin key unless given
/// another key ([`Api::with_key`]).
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    http: reqwest::Client,
    key: Option<String>,
}

/// A response: status code and JSON body.
pub type Reply = (u16, Value);

/// A response with the headers some tests look at.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// The `x-request-id` header.
    pub request_id: Option<String>,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// JSON body (`null` when there is none).
    pub body: Value,
}

/// An HTTP client builder. reqwest's TLS takes the process' rustls provider (the workspace
/// builds it without one of its own): ring, installed here before any client is built.
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// `GET url` with a plain client (no key).
pub async fn http_get(url: &str) -> reqwest::Result<reqwest::Response> {
    http_builder().build()?.get(url).send().await
}

impl Api {
    /// A client for `base`.
    pub fn new(base: String) -> Self {
        let http = http_builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            base,
            http,
            key: Some(ADMIN_KEY.into()),
        }
    }

    /// The same client, sending `key` (or no key at all).
    pub fn with_key(&self, key: Option<&str>) -> Self {
        Self {
            key: key.map(str::to_owned),
            ..self.clone()
        }
    }

    /// The key this client sends.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Gives `user` `tier` for a day through the admin API.
    pub async fn grant(&self, user: &str, tier: &str) {
        let tier: runfleet_client::Tier = tier.parse().expect("a tier");
        self.with_key(Some(ADMIN_KEY))
            .client()
            .set_entitlement(&runfleet_client::UserId::new(user), tier, 1)
            .await
            .unwrap_or_else(|e| panic!("granting {tier:?} to {user}: {e}"));
    }

    /// Issues a user API key through the admin API.
    pub async fn user_key(&self, user: &str) -> String {
        self.with_key(Some(ADMIN_KEY))
            .client()
            .issue_key(&runfleet_client::UserId::new(user))
            .await
            .unwrap_or_else(|e| panic!("issuing a key for {user}: {e}"))
            .api_key
    }

    /// `req` with this client's key, if it has one.
    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Reply> {
        let resp = self.authed(req).send().await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
            .expect("GET")
    }

    /// GET a path whose answer is text (such as `/metrics`): status and body.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let req = self.authed(self.http.get(format!("{}{path}", self.base)));
        let resp = req.send().await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    /// POST a body given as text (malformed JSON included) to a path.
    pub async fn post_text(&self, path: &str, body: String) -> Reply {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        self.send(req).await.expect("POST")
    }

    /// POST JSON to a path; an error when there is no answer (a killed orchestrator).
    pub async fn try_post(&self, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// POST JSON to a path.
    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
            .expect("POST")
    }

    /// PUT JSON to a path as the admin.
    pub async fn put_admin(&self, path: &str, body: &Value) -> Reply {
        let admin = self.with_key(Some(ADMIN_KEY));
        admin
            .send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
            .expect("PUT")
    }

    /// Sends `method path` with this client's key, an optional JSON body and an optional
    /// `x-request-id`; returns the status, the answer's `x-request-id` and `Retry-After`
    /// headers, and the body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        request_id: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(body);
        }
        if let Some(id) = request_id {
            req = req.header("x-request-id", id);
        }
        let resp = self.authed(req).send().await.expect("request");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (request_id, retry_after) = (header("x-request-id"), header("retry-after"));
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Answer {
            status,
            request_id,
            retry_after,
            body,
        }
    }

    /// Waits until `/healthz` answers 200.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self
                .send(self.http.get(format!("{}/healthz", self.base)))
                .await
            {
                Ok((200, _)) => return Ok(()),
                Ok(other) if tokio::time::Instant::now() >= deadline => {
                    bail!("last answer {other:?}")
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).context("healthz");
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The typed client of this orchestrator, with the same key. It does not retry: a test
    /// sees every answer as the server gave it.
    pub fn client(&self) -> runfleet_client::Client {
        runfleet_client::Client::new(&self.base, self.key.as_deref())
            .expect("client")
            .with_retry(runfleet_client::RetryPolicy::none())
    }

    /// Starts a scalping runner on BTC-PERPETUAL for `user` through the typed client (the
    /// request is [`start_spec`], the answer read into the shared types); returns the reply as
    /// the server's JSON, for the tests' own checks.
    pub async fn start_runner(&self, user: &str, strategy: &str) -> Reply {
        match self.client().start(&start_spec(user, strategy)).await {
            Ok(accepted) => (202, serde_json::to_value(accepted).expect("an answer")),
            Err(e) => refusal(e),
        }
    }

    /// The user's status, read through the typed client (into the shared types), as JSON.
    pub async fn status(&self, user: &str) -> Value {
        let runners = self
            .client()
            .user_runners(&runfleet_client::UserId::new(user))
            .await
            .unwrap_or_else(|e| panic!("status of {user}: {e}"));
        serde_json::to_value(runners).expect("an answer")
    }
}

/// A refusal the typed client read, as the `(status, body)` the server sent.
fn refusal(e: runfleet_client::ClientError) -> Reply {
    match (e.status(), e.detail()) {
        (Some(status), Some(detail)) => (
            status,
            serde_json::json!({"success": false, "error": detail}),
        ),
        _ => panic!("the request failed: {e}"),
    }
}

/// The seed's start request for `user` and `strategy`.
pub fn start_request(user: &str, strategy: &str) -> Value {
    serde_json::json!({
        "userId": user,
        "strategyId": strategy,
        "brokerId": "deribit",
        "credentials": {"apiKey": format!("key-{user}"), "apiSecret": format!("secret-{user}")},
        "config": {
            "name": "BTC Scalping",
            "type": "scalping",
            "parameters": {"timeframe": "1m", "rsiPeriod": 5},
            "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
            "instruments": ["BTC-PERPETUAL", "ETH-PERPETUAL"]
        }
    })
}

/// [`start_request`] as the typed request the client sends.
pub fn start_spec(user: &str, strategy: &str) -> runfleet_client::StartRunnerRequest {
    serde_json::from_value(start_request(user, strategy)).expect("a start request")
}

/// [`start_request`] for a runner that holds nothing for its first 500 ticks: an sma-cross of
/// 100 and 500 candles, waiting for its signal (an idle runner, for the benchmarks).
pub fn idle_start_request(user: &str, strategy: &str) -> Value {
    let mut request = start_request(user, strategy);
    request["config"]["type"] = serde_json::json!("sma-cross");
    request["config"]["parameters"] =
        serde_json::json!({"timeframe": "1m", "fastPeriod": 100, "slowPeriod": 500});
    request
}

/// A client of `GET /v1/events` reading the stream in the background: the events it received
/// so far, each as its JSON `data` (which carries the event's `id`).
#[derive(Debug)]
pub struct EventClient {
    events: Arc<std::sync::Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Api {
    /// Connects to `GET /v1/events{query}` (e.g. `""` or `"?jobId=…"`), sending
    /// `Last-Event-ID: last_event_id` when given; returns once the stream is open (200), so
    /// every event from then on reaches it.
    pub async fn follow_events(&self, query: &str, last_event_id: Option<&str>) -> EventClient {
        // No overall timeout: the stream stays open for the whole test.
        let http = http_builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let mut req = self.authed(http.get(format!("{}/v1/events{query}", self.base)));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let mut resp = req.send().await.expect("GET /v1/events");
        assert_eq!(resp.status().as_u16(), 200, "GET /v1/events{query}");
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.extend_from_slice(&chunk);
                // An SSE event ends with a blank line; `data:` lines carry the payload and
                // lines starting with ':' are keep-alive comments.
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    let frame = String::from_utf8(frame).expect("SSE is UTF-8");
                    let data: Vec<&str> = frame
                        .lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .map(str::trim_start)
                        .collect();
                    if !data.is_empty() {
                        let v = serde_json::from_str(&data.join("\n")).expect("SSE data is JSON");
                        sink.lock().unwrap().push(v);
                    }
                }
            }
        });
        EventClient { events, reader }
    }
}

impl EventClient {
    /// The events received so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until the events received satisfy `done`; returns them.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        eventually(within, what, || async {
            let events = self.events();
            done(&events).then_some(events)
        })
        .await
    }

    /// Drops the connection (as a client going away would); returns what it received.
    pub fn disconnect(self) -> Vec<Value> {
        self.reader.abort();
        self.events()
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One accepted write from the audit stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When Redis accepted it: the stream entry's id, in ms since the Unix epoch on Redis'
    /// clock.
    pub at_ms: u64,
    /// `claim`, `renew`, `finish` or `hand_back`.
    pub op: String,
    /// The job.
    pub job: String,
    /// The epoch the write carried.
    pub epoch: u64,
    /// The node that wrote it.
    pub node: String,
}

/// Checks, from the writes Redis accepted, that no two epochs of one job were ever live at the
/// same moment: every write of an epoch comes before the claim of the next. Returns the number
/// of epochs seen per job.
pub fn assert_one_live_epoch_at_a_time(audit: &[AuditEntry]) -> HashMap<String, usize> {
    let mut last_epoch: HashMap<&str, u64> = HashMap::new();
    let mut epochs: HashMap<String, usize> = HashMap::new();
    for (i, e) in audit.iter().enumerate() {
        let seen = last_epoch.entry(&e.job).or_insert(0);
        assert!(
            e.epoch >= *seen,
            "write #{i} ({e:?}) carries epoch {} after epoch {} of the same job was claimed",
            e.epoch,
            seen
        );
        if e.epoch > *seen {
            assert_eq!(
                e.op, "claim",
                "write #{i} ({e:?}): a new epoch must start with its claim"
            );
            *seen = e.epoch;
            *epochs.entry(e.job.clone()).or_default() += 1;
        }
    }
    epochs
}

/// A test certificate authority made with the `openssl` CLI: a CA, a server certificate for
/// `127.0.0.1` and `localhost`, and a client certificate, all PEM files in `dir`.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// Where the files are: `ca.crt`, `server.crt`, `server.key`, `client.crt`, `client.key`.
    pub dir: PathBuf,
}

impl TestCa {
    /// Makes a fresh CA and its certificates in a new temporary directory named after `name`.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runfleet-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("ca dir");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("this test makes a CA with the openssl CLI and could not run it ({e}); install openssl"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=runfleet test CA",
        ]);
        // Extensions make them X.509 v3 certificates: rustls refuses v1 ones.
        let server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
        std::fs::write(dir.join("server.ext"), server_ext).unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (who, ext) in [
            ("server", Some("server.ext")),
            ("client", Some("client.ext")),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN=runfleet test {who}"),
            ]);
            let mut args = vec![
                "x509",
                "-req",
                "-in",
                &*format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &*format!("{who}.crt"),
                "-days",
                "2",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            if let Some(ext) = ext {
                args.extend(["-extfile".to_owned(), ext.to_owned()]);
            }
            openssl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        Self { dir }
    }

    /// The path of one of its files, as a string.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// A client of a `rediss://` URL trusting this CA and presenting the client certificate.
    pub fn client(&self, url: &str) -> redis::Client {
        let read = |f: &str| std::fs::read(self.dir.join(f)).expect("pem");
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read("client.crt"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read("ca.crt")),
            },
        )
        .expect("tls client")
    }
}

/// A private `redis-server` on a free port, for tests that stop and restart Redis. Its data
/// survives a restart (append-only file in a temporary directory).
#[derive(Debug)]
pub struct PrivateRedis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// With TLS: the CA, and the TLS port is the only port.
    tls: Option<TestCa>,
    /// Addresses it listens on besides 127.0.0.1.
    also_on: Vec<String>,
}

impl PrivateRedis {
    /// Starts one, and waits until it answers.
    pub async fn start() -> Self {
        Self::launch(None, Vec::new()).await
    }

    /// Starts one listening on the addresses `also_on` as well as 127.0.0.1 (protected mode
    /// off, so that clients there are served), and waits until it answers.
    pub async fn start_also_on(also_on: &[&str]) -> Self {
        Self::launch(None, also_on.iter().map(|a| (*a).to_owned()).collect()).await
    }

    /// Starts one that speaks TLS only (`--port 0 --tls-port`), with certificates from `ca`
    /// and client certificates required (mutual TLS).
    pub async fn start_tls(ca: &TestCa) -> Self {
        Self::launch(Some(ca.clone()), Vec::new()).await
    }

    async fn launch(tls: Option<TestCa>, also_on: Vec<String>) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("runfleet-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = Self {
            port,
            dir,
            child: None,
            tls,
            also_on,
        };
        r.up().await;
        r
    }

    /// Its URL (`rediss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client for it (trusting the test CA, with TLS).
    pub fn client(&self, url: &str) -> redis::Client {
        match &self.tls {
            Some(ca) => ca.client(url),
            None => redis::Client::open(url).expect("redis url"),
        }
    }

    async fn up(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<String> = match &self.tls {
            None => vec!["--port".into(), port],
            Some(ca) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                ca.file("server.crt"),
                "--tls-key-file".into(),
                ca.file("server.key"),
                "--tls-ca-cert-file".into(),
                ca.file("ca.crt"),
                "--tls-auth-clients".into(),
                "yes".into(),
            ],
        };
        let mut bind = vec!["--bind".to_owned(), "127.0.0.1".to_owned()];
        bind.extend(self.also_on.iter().cloned());
        if !self.also_on.is_empty() {
            bind.extend(["--protected-mode".to_owned(), "no".to_owned()]);
        }
        let child = Command::new("redis-server")
            .args(&ports)
            .args(&bind)
            .args(["--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "always", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test starts its own redis-server and could not ({e}); install redis-server"));
        self.child = Some(child);
        let client = self.client(&self.url());
        eventually(Duration::from_secs(10), "private redis answers", || {
            let client = client.clone();
            async move {
                let mut c = match client.get_multiplexed_async_connection().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("private redis: not yet: {e}");
                        return None;
                    }
                };
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            }
        })
        .await;
    }

    /// Stops it cleanly (SIGTERM: it flushes its data) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.up().await;
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prefix of the network namespaces partition tests make: `rfpt-<pid>-<n>`.
const NETNS_PREFIX: &str = "rfpt-";

/// A network namespace joined to the root namespace by a veth pair of its own, for partition
/// tests: a process spawned in it ([`Fleet::worker_in`]) reaches the root namespace only at
/// [`host_addr`](Self::host_addr), over a link the test can cut and heal. Removed on drop.
///
/// Making one needs root (CAP_NET_ADMIN) and the `ip` and `tc` tools; without them
/// [`NetnsLink::create`] panics with what is missing: the tests fail, never skip.
#[derive(Debug)]
pub struct NetnsLink {
    /// The namespace's name.
    pub netns: String,
    /// The veth end in the root namespace.
    host_if: String,
    /// The veth end in the namespace.
    ns_if: String,
    /// The root namespace's address on the link (where Redis listens for the namespace).
    pub host_addr: String,
    /// The namespace's address on the link.
    pub ns_addr: String,
}

/// An HTTP answer seen from inside a namespace: status, `Retry-After`, JSON body, and how
/// long the call took.
#[derive(Debug, Clone)]
pub struct NsReply {
    /// Status code (0 when curl got no answer within its limit).
    pub status: u16,
    /// The `Retry-After` header.
    pub retry_after: Option<String>,
    /// JSON body (`null` when there is none).
    pub body: Value,
    /// Wall time of the call.
    pub took: Duration,
}

/// One HTTP call made from inside namespace `netns` (with curl, at most 20 s), e.g. to an
/// orchestrator listening on that namespace's loopback, a path no link cut touches.
pub fn ns_http(netns: &str, method: &str, url: &str, key: &str, body: Option<&Value>) -> NsReply {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, "curl", "-s", "-m", "20", "-D", "-"])
        .args(["-X", method, "-H", &format!("authorization: Bearer {key}")])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let began = std::time::Instant::now();
    let out = c.arg(url).output().expect("curl inside the namespace");
    let took = began.elapsed();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let retry_after = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    NsReply {
        status: code.trim().parse().unwrap_or(0),
        retry_after,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        took,
    }
}

/// How a link is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Every packet is dropped silently, both ways (a zero-length FIFO queue on both veth
    /// ends): connections hang until a timeout notices.
    SilentDrop,
    /// The namespace's route to the far side is `prohibit`: sends and connects fail at once
    /// (EACCES, as an ICMP administratively-prohibited answer would make them).
    Reject,
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    run_tool("ip", args)
}

fn run_tool(tool: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{tool}` ({e}); install iproute2")),
    }
}

impl NetnsLink {
    /// Makes a fresh namespace and link (after removing those left by test processes that no
    /// longer run), or panics saying why it cannot.
    pub fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        remove_stale_netns();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A /30 per link, from the pid and the counter, inside 10.231.0.0/16.
        let index = (pid.wrapping_mul(8).wrapping_add(n)) % 16_384;
        let (hi, lo) = (index / 64, (index % 64) * 4);
        let link = Self {
            netns: format!("{NETNS_PREFIX}{pid}-{n}"),
            // Interface names have at most 15 characters: rf<pid>x<n>h.
            host_if: format!("rf{pid}x{n}h"),
            ns_if: format!("rf{pid}x{n}n"),
            host_addr: format!("10.231.{hi}.{}", lo + 1),
            ns_addr: format!("10.231.{hi}.{}", lo + 2),
        };
        let (ns, host_if, ns_if) = (link.netns.clone(), link.host_if.clone(), link.ns_if.clone());
        let (ns, host_if, ns_if) = (ns.as_str(), host_if.as_str(), ns_if.as_str());
        let host_cidr = format!("{}/30", link.host_addr);
        let ns_cidr = format!("{}/30", link.ns_addr);
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", ns_if,
            ],
            &["link", "set", ns_if, "netns", ns],
            &["addr", "add", &host_cidr, "dev", host_if],
            &["link", "set", host_if, "up"],
            &["-n", ns, "addr", "add", &ns_cidr, "dev", ns_if],
            &["-n", ns, "link", "set", ns_if, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = run_ip(step) {
                drop(link);
                panic!(
                    "partition tests need network namespaces and veth links (root or \
                     CAP_NET_ADMIN, iproute2), and could not make one: {e}"
                );
            }
        }
        link
    }

    /// Cuts the link.
    pub fn cut(&self, how: Cut) {
        let result = match how {
            Cut::SilentDrop => self
                .drop_queue(None, "add")
                .and_then(|()| self.drop_queue(Some(&self.netns), "add")),
            Cut::Reject => run_ip(&[
                "-n",
                &self.netns,
                "route",
                "add",
                "prohibit",
                &format!("{}/32", self.host_addr),
            ]),
        };
        if let Err(e) = result {
            panic!("cannot cut the link of {} ({how:?}): {e}", self.netns);
        }
    }

    /// Heals a cut made with `how`.
    pub fn heal(&self, how: Cut) {
        let result = match how {
            Cut::SilentDrop => self
                .drop_queue(None, "del")
                .and_then(|()| self.drop_queue(Some(&self.netns), "del")),
            Cut::Reject => run_ip(&[
                "-n",
                &self.netns,
                "route",
                "del",
                "prohibit",
                &format!("{}/32", self.host_addr),
            ]),
        };
        if let Err(e) = result {
            panic!("cannot heal the link of {} ({how:?}): {e}", self.netns);
        }
    }

    /// Adds or deletes a zero-length FIFO as the root queue of the link's end in `netns` (the
    /// root namespace when `None`): every packet sent there is dropped, silently.
    fn drop_queue(&self, netns: Option<&str>, op: &str) -> Result<(), String> {
        let dev = if netns.is_some() {
            &self.ns_if
        } else {
            &self.host_if
        };
        let mut args: Vec<&str> = Vec::new();
        if let Some(ns) = netns {
            args.extend(["-n", ns]);
        }
        args.extend(["qdisc", op, "dev", dev, "root"]);
        if op == "add" {
            args.extend(["pfifo", "limit", "0"]);
        }
        run_tool("tc", &args)
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        // Deleting either end deletes the pair.
        let _ = run_ip(&["link", "del", &self.host_if]);
        let _ = run_ip(&["netns", "del", &self.netns]);
    }
}

/// Removes the namespaces (and root-side veth ends) that partition tests of processes no
/// longer running left behind (a crash or SIGKILL skips their drop guards).
pub fn remove_stale_netns() {
    let alive = |pid: &str| Path::new("/proc").join(pid).exists();
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or_default();
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !alive(pid) {
                let _ = run_ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "12: rf123x0h@if11: <...>"
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            let Some(rest) = name.strip_prefix("rf") else {
                continue;
            };
            let Some((pid, tail)) = rest.split_once('x') else {
                continue;
            };
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            let n = tail.trim_end_matches(['h', 'n']);
            if digits(pid) && digits(n) && !alive(pid) {
                let _ = run_ip(&["link", "del", name]);
            }
        }
    }
}

/// Milliseconds since the Unix epoch, on this machine's clock (the clock Redis' stream ids and
/// the nodes' `*_at_ms` log fields use when they run here).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The JSON log lines of a process (`RUNFLEET__TELEMETRY__FORMAT=json`) whose `message` is
/// `message`.
pub fn log_events(output: &str, message: &str) -> Vec<Value> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// Held by the tests that load the machine most (a Redis Cluster of their own, hundreds of
/// concurrent starts), so that no two of them run at once: on 2 cores, two of them together
/// starve every process of both long enough for a request to time out.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// A Redis Cluster of its own (3 masters, 3 replicas on loopback), for tests that kill or move
/// its nodes; started and stopped with `scripts/redis-cluster`, like the shared one.
#[derive(Debug)]
pub struct PrivateCluster {
    /// The first of its six ports.
    pub base: u16,
    dir: PathBuf,
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-cluster")
}

fn run_cluster_script(args: &[&str]) -> String {
    let out = Command::new(cluster_script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/redis-cluster: {e}"));
    assert!(
        out.status.success(),
        "scripts/redis-cluster {args:?} failed (this test starts its own Redis Cluster and needs \
         redis-server and redis-cli): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PrivateCluster {
    /// Starts one on six free consecutive ports (and their bus ports, +10000).
    pub fn start(name: &str) -> Self {
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        // Bases in 20000..29990 (bus ports up to 39995), from a point that differs by process.
        let offset = (std::process::id() % 997) as u16 * 10;
        let base = (0..999u16)
            .map(|i| 20000 + (offset + i * 10) % 9990)
            .find(|&b| (b..b + 6).all(|p| free(p) && free(p + 10000)))
            .expect("six free consecutive loopback ports");
        let dir = log_dir(&format!("cluster-{name}-{}", std::process::id()));
        run_cluster_script(&["start", &base.to_string(), &dir.to_string_lossy()]);
        Self { base, dir }
    }

    /// Its seed nodes, as `redis.url` takes them.
    pub fn urls(&self) -> String {
        (self.base..self.base + 3)
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ports of its nodes.
    pub fn ports(&self) -> std::ops::Range<u16> {
        self.base..self.base + 6
    }

    /// The port of the master that serves `key`'s slot now (as any live node says), if one does.
    pub fn master_of(&self, key: &str) -> Option<u16> {
        for port in self.ports() {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
                continue;
            };
            let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
                continue;
            };
            let Ok(slot) = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query::<u16>(&mut c)
            else {
                continue;
            };
            let Ok(shards) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<redis::Value>>(&mut c)
            else {
                continue;
            };
            for range in shards {
                let redis::Value::Array(items) = range else {
                    continue;
                };
                let num = |v: &redis::Value| match v {
                    redis::Value::Int(n) => Some(*n),
                    _ => None,
                };
                let (Some(lo), Some(hi)) = (num(&items[0]), num(&items[1])) else {
                    continue;
                };
                if let redis::Value::Array(master) = &items[2]
                    && (lo..=hi).contains(&i64::from(slot))
                {
                    return num(&master[1]).map(|p| p as u16);
                }
            }
        }
        None
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&self, port: u16) {
        let pid = std::fs::read_to_string(self.dir.join(port.to_string()).join("redis.pid"))
            .expect("the node's pid file");
        let ok = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 of the node on {port}");
    }

    /// Starts the killed node on `port` again (it rejoins as a replica).
    pub fn restart_node(&self, port: u16) {
        run_cluster_script(&[
            "restart-node",
            &self.dir.to_string_lossy(),
            &port.to_string(),
        ]);
    }

    /// Whether every node answers, the cluster is ok and every master has its replica.
    pub fn healthy(&self) -> bool {
        Command::new(cluster_script())
            .args(["status", &self.dir.to_string_lossy()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(cluster_script())
            .args(["stop", &self.dir.to_string_lossy()])
            .status();
    }
}
