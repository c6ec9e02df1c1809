//! Redis connections: a few shared multiplexed connections for short commands and scripts, and
//! a pool for blocking pops.
//!
//! Short commands and scripts go over `redis.pool_size` multiplexed connections
//! ([`Commands`], redis-rs's `ConnectionManager`), picked round-robin: every task's commands are
//! pipelined on them, so a call costs exactly its own round trip (no checkout, no health-check
//! PING before each call, which a pool of connections would send), and a broken connection is
//! replaced by the manager on the next call. Nothing in runfleet uses connection state (no
//! WATCH, MULTI or SELECT), which is what makes sharing them safe.
//!
//! redis-rs gives async connections a 500 ms response timeout by default, shorter than a claim
//! that blocks for a second or more; a blocking pop on a shared multiplexed connection would also
//! stall every command queued behind it. So blocking pops (BLMOVE, BLPOP, XREAD BLOCK) take a
//! connection of their own from a pool (deadpool-redis) whose response timeout exceeds the
//! longest block.
//!
//! A dead link (a partition that drops packets silently) must fail a call within its response
//! timeout, never hang it: short commands time out after `redis.response_timeout_ms`; a blocking
//! pop after its block plus that timeout ([`RedisPools::blocking_timeout`], set on the
//! connection for each pop); taking a pooled connection is bounded by `wait_timeout_ms`, and
//! checking or opening one by `connect_timeout_ms`. On Linux, sockets also get
//! `TCP_USER_TIMEOUT` = the response timeout, so the kernel aborts a connection whose data
//! goes unacknowledged that long: every call waiting on it fails at once, and the next call
//! opens a fresh connection (a timed-out call alone does not make a multiplexed connection
//! reconnect; the kernel's abort does).
//!
//! With `redis.cluster`, the same two roles run on a Redis Cluster: short commands and scripts on
//! one shared cluster connection (redis-rs' `cluster-async`: multiplexed per node, it follows
//! MOVED and ASK, retries TRYAGAIN and a failed-over node with a short jittered backoff, and
//! learns the new topology), blocking pops on deadpool-redis' cluster pool. A cluster call is
//! bounded as a whole (retries included) by the response timeout, so a call into a failover
//! fails within it and the caller answers 503 rather than hanging.
//!
//! `rediss://` URLs connect over TLS with rustls (the same TLS stack as the RabbitMQ client),
//! trusting `redis.tls_ca_file` or the system's roots and verifying the server's name, with an
//! optional client certificate for mutual TLS.

use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};

use crate::config::RedisSettings;

/// The longest any blocking pop in runfleet blocks. Callers clamp their waits to this.
pub const MAX_BLOCK: Duration = Duration::from_secs(10);

/// Why a Redis operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// The command failed or the connection broke.
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    /// No pooled connection could be had in time (Redis down or overloaded).
    #[error("redis pool: {0}")]
    Pool(String),
    /// Redis answered something runfleet did not write (a bug or a foreign writer).
    #[error("unexpected data in redis: {0}")]
    Data(String),
    /// The TLS settings or credentials cannot be used (a certificate or key file unreadable, a
    /// handshake or login that failed at start-up).
    #[error("redis TLS or credentials: {0}")]
    Tls(String),
    /// `redis.cluster` says the opposite of what the server is: a cluster node used as one
    /// Redis (commands for other slots would fail with MOVED), or a plain Redis used as a
    /// cluster.
    #[error("{0}")]
    Mode(String),
}

impl RedisError {
    /// Whether this failure, on a process' first connection, cannot heal by waiting: a TLS
    /// handshake that failed (wrong CA, wrong name, plaintext on one side), or credentials or
    /// permissions refused. A process should stop
    /// at start-up with it rather than retry forever; a refused or timed-out connection (Redis
    /// not up yet) is worth waiting for.
    pub fn is_permanent(&self) -> bool {
        let e = match self {
            RedisError::Tls(_) | RedisError::Mode(_) => return true,
            RedisError::Command(e) => e,
            RedisError::Pool(_) | RedisError::Data(_) => return false,
        };
        if e.kind() == redis::ErrorKind::AuthenticationFailed
            || e.code()
                .is_some_and(|c| ["NOPERM", "WRONGPASS", "NOAUTH"].contains(&c))
        {
            return true;
        }
        // redis-rs keeps an I/O failure's cause behind an `Arc<dyn Error>` that cannot be
        // downcast, so a TLS failure is told by its text (rustls' and the TLS alerts' wording).
        let text = e.to_string().to_ascii_lowercase();
        e.kind() == redis::ErrorKind::Io && PERMANENT_IO_FAILURES.iter().any(|w| text.contains(w))
    }
}

/// Words of the I/O failures that waiting does not heal: the rustls errors of a failed
/// handshake (a certificate not trusted or not for this name, a TLS alert from a server that
/// refused our certificate, a peer that does not speak TLS), and a reset of a fresh connection,
/// which is what a TLS-only port answers a plaintext client (a Redis that is down refuses the
/// connection instead, and one that is full or loading answers an error).
const PERMANENT_IO_FAILURES: [&str; 6] = [
    "certificate",
    "alert",
    "corrupt message",
    "invalidcontenttype",
    "handshake",
    "connection reset",
];

impl From<deadpool_redis::PoolError> for RedisError {
    fn from(e: deadpool_redis::PoolError) -> Self {
        match e {
            // Keep the cause, so that a TLS or ACL failure can be told from Redis being down.
            deadpool_redis::PoolError::Backend(e) => RedisError::Command(e),
            e => RedisError::Pool(e.to_string()),
        }
    }
}

/// Where to connect: `url` (one of `redis.url`'s), and for `rediss://` the CA, client
/// certificate and key files.
fn connection_info(
    settings: &RedisSettings,
    url: &str,
) -> Result<redis::ConnectionInfo, RedisError> {
    let info = match tls_certificates(settings, url)? {
        None => url.into_connection_info()?,
        Some(certs) => redis::Client::build_with_tls(url, certs)
            .map_err(|e| RedisError::Tls(e.to_string()))?
            .get_connection_info()
            .clone(),
    };
    Ok(info.set_tcp_settings(tcp_settings(settings)))
}

/// Sockets get `TCP_USER_TIMEOUT` = the response timeout (see the module docs).
fn tcp_settings(settings: &RedisSettings) -> redis::io::tcp::TcpSettings {
    let tcp = redis::io::tcp::TcpSettings::default();
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(Duration::from_millis(settings.response_timeout_ms));
    tcp
}

/// For a `rediss://` URL, the CA to trust (none: the system's roots) and the client
/// certificate; `None` for plaintext.
fn tls_certificates(
    settings: &RedisSettings,
    url: &str,
) -> Result<Option<TlsCertificates>, RedisError> {
    if !url.starts_with("rediss://") {
        return Ok(None);
    }
    let read = |path: &str, what: &str| {
        std::fs::read(path).map_err(|e| RedisError::Tls(format!("cannot read {what} {path}: {e}")))
    };
    let root_cert = settings
        .tls_ca_file
        .as_deref()
        .map(|p| read(p, "redis.tls_ca_file"))
        .transpose()?;
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert, "redis.tls_cert_file")?,
            client_key: read(key, "redis.tls_key_file")?,
        }),
        _ => None,
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `redis.url`'s URLs: one, or a cluster's seed nodes (comma-separated).
fn urls(settings: &RedisSettings) -> impl Iterator<Item = &str> {
    settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// Shared multiplexed connections for short commands and scripts (see the module docs).
#[derive(Clone)]
pub struct Commands(Shared);

#[derive(Clone)]
enum Shared {
    /// One Redis: `redis.pool_size` connection managers, picked round-robin.
    Single {
        /// Made on first use (a manager needs the runtime it will run on).
        managers: std::sync::Arc<[std::sync::OnceLock<ConnectionManager>]>,
        client: redis::Client,
        config: ConnectionManagerConfig,
        next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    },
    /// A Redis Cluster: one cluster connection (itself multiplexed per node), opened on first
    /// use and again by the next call after opening failed (no node reachable yet).
    Cluster {
        client: ClusterClient,
        conn: std::sync::Arc<tokio::sync::OnceCell<ClusterConnection>>,
    },
}

impl Commands {
    fn single(
        info: &redis::ConnectionInfo,
        config: ConnectionManagerConfig,
        count: usize,
    ) -> Result<Self, RedisError> {
        Ok(Self(Shared::Single {
            managers: (0..count.max(1))
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            client: redis::Client::open(info.clone())?,
            config,
            next: Default::default(),
        }))
    }

    /// A connection to send commands on: a handle on one of the shared multiplexed
    /// connections (it opens on first use, and again after it broke). Never waits, except on a
    /// cluster for the first connection (bounded by the connect timeout).
    pub async fn get(&self) -> Result<CommandConnection, RedisError> {
        match &self.0 {
            Shared::Single {
                managers,
                client,
                config,
                next,
            } => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % managers.len();
                if let Some(m) = managers[i].get() {
                    return Ok(CommandConnection(Conn::Single(m.clone())));
                }
                let made = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
                Ok(CommandConnection(Conn::Single(
                    managers[i].get_or_init(|| made).clone(),
                )))
            }
            Shared::Cluster { client, conn } => {
                let c = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await?;
                Ok(CommandConnection(Conn::Cluster(c.clone())))
            }
        }
    }
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Shared::Single { managers, .. } => f
                .debug_struct("Commands")
                .field("connections", &managers.len())
                .finish(),
            Shared::Cluster { .. } => f.debug_struct("Commands").field("cluster", &true).finish(),
        }
    }
}

/// A handle on a shared multiplexed connection (cheap to get, to clone and to drop).
#[derive(Clone)]
pub struct CommandConnection(Conn);

/// The connection under a [`CommandConnection`]: one Redis' or a cluster's.
#[derive(Clone)]
pub enum Conn {
    /// A connection manager of one Redis.
    Single(ConnectionManager),
    /// The cluster connection (routes each command by its key's slot).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for CommandConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl std::fmt::Debug for BlockingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockingConnection::Single(_) => "BlockingConnection::Single",
            BlockingConnection::Cluster(..) => "BlockingConnection::Cluster",
        })
    }
}

impl std::ops::Deref for CommandConnection {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.0
    }
}

impl std::ops::DerefMut for CommandConnection {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.0
    }
}

/// The pool of connections for blocking pops.
#[derive(Clone)]
enum Blocking {
    Single(Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection of the blocking pool, its response bounded for one pop
/// ([`RedisPools::blocking`]).
pub enum BlockingConnection {
    /// One Redis' (the bound is the connection's response timeout).
    Single(deadpool_redis::Connection),
    /// A cluster's (the bound wraps each request: the cluster pool's client has none).
    Cluster(deadpool_redis::cluster::Connection, Duration),
}

fn bounded<'a, T: Send + 'a>(within: Duration, request: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    Box::pin(async move {
        tokio::time::timeout(within, request)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "redis cluster: no answer within the blocking pop's timeout",
                )
                .into())
            })
    })
}

impl ConnectionLike for BlockingConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            BlockingConnection::Single(c) => c.req_packed_command(cmd),
            BlockingConnection::Cluster(c, within) => bounded(*within, c.req_packed_command(cmd)),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            BlockingConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            BlockingConnection::Cluster(c, within) => {
                bounded(*within, c.req_packed_commands(cmd, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            BlockingConnection::Single(c) => c.get_db(),
            BlockingConnection::Cluster(c, _) => c.get_db(),
        }
    }
}

/// The connections of a process.
#[derive(Clone)]
pub struct RedisPools {
    /// Short commands and scripts.
    pub commands: Commands,
    /// Blocking pops only ([`RedisPools::blocking`]).
    blocking: Blocking,
    /// The response timeout of short commands.
    response_timeout: Duration,
    /// Where to connect: `redis.url`'s servers (a cluster's seed nodes).
    seeds: std::sync::Arc<[redis::ConnectionInfo]>,
}

impl std::fmt::Debug for RedisPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let blocking = match &self.blocking {
            Blocking::Single(p) => p.status(),
            Blocking::Cluster(p) => p.status(),
        };
        f.debug_struct("RedisPools")
            .field("commands", &self.commands)
            .field("blocking", &blocking)
            .finish()
    }
}

/// How a cluster call retries a redirection it cannot follow at once (TRYAGAIN while a slot
/// moves, a node that failed and is being replaced): from 10 ms, doubling, at most 500 ms
/// apart, with jitter; the whole call stays within the response timeout.
const CLUSTER_RETRIES: u32 = 12;
const CLUSTER_RETRY_MIN_MS: u64 = 10;
const CLUSTER_RETRY_MAX_MS: u64 = 500;

impl RedisPools {
    /// Builds both pools. Connections open lazily, so this succeeds while Redis is down.
    pub fn new(settings: &RedisSettings) -> Result<Self, RedisError> {
        let connect = Duration::from_millis(settings.connect_timeout_ms);
        let response_timeout = Duration::from_millis(settings.response_timeout_ms);
        let wait = Some(Duration::from_millis(settings.wait_timeout_ms));
        let infos = urls(settings)
            .map(|u| connection_info(settings, u))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(info) = infos.first().cloned() else {
            return Err(RedisError::Pool("redis.url names no server".into()));
        };
        if settings.cluster {
            let mut builder = ClusterClientBuilder::new(infos.clone())
                .connection_timeout(connect)
                .response_timeout(response_timeout)
                .overall_response_timeout(Some(response_timeout))
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_RETRY_MIN_MS)
                .max_retry_wait(CLUSTER_RETRY_MAX_MS)
                .retry_wait_formula(CLUSTER_RETRY_MIN_MS, 2)
                .tcp_settings(tcp_settings(settings));
            if let Some(certs) = tls_certificates(settings, &settings.url)? {
                builder = builder.certs(certs);
            }
            let client = builder.build()?;
            let manager = deadpool_redis::cluster::Manager::new(infos.clone(), false)?;
            let blocking = deadpool_redis::cluster::Pool::builder(manager)
                .max_size(settings.blocking_pool_size)
                .wait_timeout(wait)
                .create_timeout(Some(connect))
                .recycle_timeout(Some(connect))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| RedisError::Pool(e.to_string()))?;
            return Ok(Self {
                commands: Commands(Shared::Cluster {
                    client,
                    conn: Default::default(),
                }),
                blocking: Blocking::Cluster(blocking),
                response_timeout,
                seeds: infos.into(),
            });
        }
        // Reconnects are the callers' to retry (each call fails fast and says so): one attempt.
        let short = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(0);
        // The longest a pop may need; each pop sets its own (`blocking_timeout`) before it runs.
        let long = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(MAX_BLOCK + response_timeout));
        let manager = Manager::new_with_config(info.clone(), long)?;
        let blocking = Pool::builder(manager)
            .max_size(settings.blocking_pool_size)
            .wait_timeout(wait)
            .create_timeout(Some(connect))
            .recycle_timeout(Some(connect))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| RedisError::Pool(e.to_string()))?;
        Ok(Self {
            commands: Commands::single(&info, short, settings.pool_size)?,
            blocking: Blocking::Single(blocking),
            response_timeout,
            seeds: infos.into(),
        })
    }

    /// `redis.url`'s servers (a cluster's seed nodes), for connections of their own (the
    /// wake-up subscription, [`crate::wake`]).
    pub fn seeds(&self) -> Vec<redis::ConnectionInfo> {
        self.seeds.to_vec()
    }

    /// The response timeout of short commands (`redis.response_timeout_ms`).
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// The response timeout for a blocking pop of `wait`: the block (as [`block_seconds`]
    /// clamps it) plus the response timeout of short commands, so that a pop on a dead link
    /// fails that long after it was sent, not [`MAX_BLOCK`] later.
    pub fn blocking_timeout(&self, wait: Duration) -> Duration {
        Duration::from_secs_f64(block_seconds(wait)) + self.response_timeout
    }

    /// A connection of the blocking pool for one pop that blocks up to `wait`, its answer
    /// bounded by [`RedisPools::blocking_timeout`].
    pub async fn blocking(&self, wait: Duration) -> Result<BlockingConnection, RedisError> {
        let within = self.blocking_timeout(wait);
        Ok(match &self.blocking {
            Blocking::Single(p) => {
                let mut c = p.get().await?;
                c.set_response_timeout(within);
                BlockingConnection::Single(c)
            }
            Blocking::Cluster(p) => BlockingConnection::Cluster(p.get().await?, within),
        })
    }

    /// Checks that Redis answers and is configured so that leases cannot be evicted.
    /// Returns the `maxmemory-policy` found, as a warning for the caller to log when it is
    /// not `noeviction`. An ACL user without `CONFIG` (least privilege) gets no answer to that
    /// and no warning; a PING proves the connection and the user's credentials.
    pub async fn check(&self) -> Result<Option<String>, RedisError> {
        let cluster = matches!(self.commands.0, Shared::Cluster { .. });
        let mut conn = match self.commands.get().await {
            Err(RedisError::Command(e))
                if cluster && e.to_string().contains("cluster support disabled") =>
            {
                return Err(RedisError::Mode(
                    "redis.cluster = true, but the Redis in redis.url is not a Redis Cluster \
                     (its cluster support is disabled): set redis.cluster = false"
                        .into(),
                ));
            }
            other => other?,
        };
        let _: String = redis::cmd("PING").query_async(&mut *conn).await?;
        if !cluster {
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut *conn)
                .await
                .unwrap_or_default();
            if info.contains("cluster_enabled:1") {
                return Err(RedisError::Mode(
                    "the Redis in redis.url is a Redis Cluster node: set redis.cluster = true \
                     (and list one or more of its nodes in redis.url); as one Redis, every \
                     command for another node's slots would fail"
                        .into(),
                ));
            }
        }
        let (_, policy): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut *conn)
            .await
            .unwrap_or_default();
        Ok((policy != "noeviction" && !policy.is_empty()).then_some(policy))
    }
}

/// Seconds for a blocking Redis command, clamped to `(0.01 s, MAX_BLOCK]`.
pub fn block_seconds(wait: Duration) -> f64 {
    wait.clamp(Duration::from_millis(10), MAX_BLOCK)
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blocking_pop_times_out_its_block_plus_the_response_timeout() {
        let settings = RedisSettings {
            response_timeout_ms: 500,
            ..RedisSettings::default()
        };
        // Connections open lazily: no Redis is needed to build the pools.
        let pools = RedisPools::new(&settings).expect("pools");
        assert_eq!(
            pools.blocking_timeout(Duration::from_millis(200)),
            Duration::from_millis(700)
        );
        assert_eq!(
            pools.blocking_timeout(Duration::from_secs(60)),
            MAX_BLOCK + Duration::from_millis(500),
            "a block is clamped to MAX_BLOCK"
        );
    }
}
