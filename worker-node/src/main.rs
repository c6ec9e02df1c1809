//! `runfleet-worker-node`: claims jobs from the fleet's queue and runs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runfleet_shared::backend::{self, OnBackend};
use runfleet_shared::config::{QueueBackend, Settings};
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::kind::Kinds;
use runfleet_shared::lifecycle::RunnerGroup;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;
use runfleet_shared::{observability, shutdown, telemetry};
use runfleet_worker_node::{NodeConfig, WorkerNode, http};
use tokio_util::sync::CancellationToken;

/// A runfleet worker node. Settings come from built-in defaults, then `--config`, then
/// `RUNFLEET__SECTION__KEY` environment variables (see docs/configuration.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML settings file.
    #[arg(long, env = "RUNFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Runners this node holds at most (overrides `node.capacity`).
    #[arg(long)]
    capacity: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(c) = args.capacity {
        settings.node.capacity = c;
        settings.validate()?;
    }
    telemetry::init(&settings.telemetry);
    let r = &settings.redis;
    // Waiting for a pooled connection, checking it, opening a new one, the command itself.
    let worst_call = r.wait_timeout_ms + 2 * r.connect_timeout_ms + r.response_timeout_ms;
    if worst_call + settings.heartbeat.interval_ms >= settings.heartbeat.lease_ms {
        tracing::warn!(
            worst_call_ms = worst_call,
            lease_ms = settings.heartbeat.lease_ms,
            "a heartbeat on a dead link may take longer than the lease leaves for it: after a short \
             cut, runners may be fenced that need not be (lower redis.*_timeout_ms or raise \
             heartbeat.lease_ms)"
        );
    }
    let cipher = settings.credential_cipher()?;
    let deadline = Duration::from_millis(settings.shutdown.deadline_ms);
    let config = NodeConfig::from_settings(&settings, settings.node.capacity);
    let kinds = runfleet_trading::kinds(&settings)?.install();
    if settings.queue.backend == QueueBackend::Memory {
        anyhow::bail!(
            "queue.backend = memory is the embedded mode, where the orchestrator runs the workers \
             in-process: run `runfleet-orchestrator --embedded`, or set \
             RUNFLEET__QUEUE__BACKEND=redis to join a distributed fleet"
        );
    }
    let node = Node {
        cipher,
        config,
        kinds,
        http_bind: settings.node.http_bind.clone(),
        deadline,
    };
    backend::run_on(&settings, node)
        .await
        .context("backend settings")?
}

/// The worker node's process on the backend of its settings.
struct Node {
    cipher: CredentialCipher,
    config: NodeConfig,
    kinds: Kinds,
    http_bind: Option<String>,
    deadline: Duration,
}

impl OnBackend for Node {
    type Output = anyhow::Result<()>;

    async fn run<S: FleetStore, Q: JobQueue + Clone>(self, store: S, queue: Q) -> Self::Output {
        let node = WorkerNode::new(store, queue, self.cipher, self.config, self.kinds);
        run_node(node, self.http_bind.as_deref(), self.deadline).await
    }
}

/// Runs `node` (and, on `http_bind`, its metrics and health listener) as the process'
/// services until SIGTERM or Ctrl-C, then stops them within `deadline` (exit status 1 if they
/// do not stop cleanly).
async fn run_node<S: FleetStore, Q: JobQueue + Clone>(
    node: WorkerNode<S, Q>,
    http_bind: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<()> {
    observability::prometheus();
    let mut services = RunnerGroup::new();
    if let Some(bind) = http_bind {
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .with_context(|| format!("cannot listen on {bind} (node.http_bind)"))?;
        tracing::info!(addr = %listener.local_addr()?, "node metrics and health on http://{}", listener.local_addr()?);
        let router = http::node_router(node.clone());
        services.register(Arc::new(http::http_service("http", listener, router)))?;
    }
    services.register(Arc::new(node.service("worker-node")))?;
    let report = shutdown::run_group(&services, CancellationToken::new(), deadline).await?;
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}
