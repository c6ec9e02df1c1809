//! `runfleet-orchestrator`: the fleet's stateless HTTP API. With `--embedded` it also runs a
//! worker pool in the same process on the in-memory backend, and needs nothing else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runfleet_orchestrator::{AppState, app, sweeper};
use runfleet_shared::backend::{self, OnBackend};
use runfleet_shared::config::{QueueBackend, Settings};
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::http::http_service_with;
use runfleet_shared::kind::Kinds;
use runfleet_shared::lifecycle::{Runner, RunnerGroup, RunnerOptions, Ticker};
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;
use runfleet_shared::{observability, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than the system's malloc: under load, glibc's malloc and free were a fifth of
/// the orchestrator's CPU per start (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A runfleet orchestrator. Settings come from built-in defaults, then `--config`, then
/// `RUNFLEET__SECTION__KEY` environment variables (see docs/configuration.md).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// A TOML settings file.
    #[arg(long, env = "RUNFLEET_CONFIG")]
    config: Option<PathBuf>,
    /// Run orchestrator and worker pool in this one process on the in-memory backend.
    #[arg(long)]
    embedded: bool,
    /// Address to listen on (overrides `http.bind`).
    #[arg(long)]
    bind: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut settings = Settings::load(args.config.as_deref())?;
    if args.embedded {
        settings.queue.backend = QueueBackend::Memory;
    }
    if let Some(bind) = args.bind {
        settings.http.bind = bind;
    }
    telemetry::init(&settings.telemetry);
    observability::prometheus();
    let cipher = settings.credential_cipher()?;
    let kinds = runfleet_trading::kinds(&settings)?.install();
    let settings = Arc::new(settings);
    let orchestrator = Orchestrator {
        cipher,
        settings: settings.clone(),
        kinds,
    };
    backend::run_on(&settings, orchestrator)
        .await
        .context("backend settings")?
}

/// The orchestrator's process on the backend of its settings.
struct Orchestrator {
    cipher: CredentialCipher,
    settings: Arc<Settings>,
    kinds: Kinds,
}

impl OnBackend for Orchestrator {
    type Output = anyhow::Result<()>;

    async fn run<S: FleetStore, Q: JobQueue + Clone>(self, store: S, queue: Q) -> Self::Output {
        let Orchestrator {
            cipher,
            settings,
            kinds,
        } = self;
        let mut extra: Vec<Arc<dyn Runner>> = Vec::new();
        if settings.queue.backend == QueueBackend::Memory {
            extra.push(worker_pool(&store, &queue, &cipher, &settings, &kinds)?);
        }
        serve(AppState::new(store, queue, cipher, settings, kinds), extra).await
    }
}

/// The embedded mode's worker pool, on the API's own store and queue.
#[cfg(feature = "embedded")]
fn worker_pool<S: FleetStore, Q: JobQueue + Clone>(
    store: &S,
    queue: &Q,
    cipher: &CredentialCipher,
    settings: &Settings,
    kinds: &Kinds,
) -> anyhow::Result<Arc<dyn Runner>> {
    use runfleet_worker_node::{NodeConfig, WorkerNode};
    let config = NodeConfig::from_settings(settings, settings.node.embedded_capacity);
    let node = WorkerNode::new(
        store.clone(),
        queue.clone(),
        cipher.clone(),
        config,
        kinds.clone(),
    );
    Ok(Arc::new(node.service("worker-pool")))
}

/// Without the `embedded` feature there is no worker pool to run in-process.
#[cfg(not(feature = "embedded"))]
fn worker_pool<S: FleetStore, Q: JobQueue + Clone>(
    _: &S,
    _: &Q,
    _: &CredentialCipher,
    _: &Settings,
    _: &Kinds,
) -> anyhow::Result<Arc<dyn Runner>> {
    anyhow::bail!(
        "queue.backend = memory (--embedded) runs worker nodes in this process, and this build \
         has none (the `embedded` cargo feature is off): set queue.backend to redis or rabbitmq"
    )
}

/// Serves the API (and runs the `in_process` services: the embedded worker pool) as services in one group until SIGTERM
/// or Ctrl-C, then stops the group within the shutdown deadline.
async fn serve<S: FleetStore, Q: JobQueue + Clone>(
    state: AppState<S, Q>,
    in_process: Vec<Arc<dyn Runner>>,
) -> anyhow::Result<()> {
    let deadline = Duration::from_millis(state.settings.shutdown.deadline_ms);
    let listener = tokio::net::TcpListener::bind(&state.settings.http.bind)
        .await
        .with_context(|| format!("cannot listen on {}", state.settings.http.bind))?;
    let addr = listener.local_addr()?;
    let mode = if !in_process.is_empty() {
        "embedded"
    } else {
        "distributed"
    };
    tracing::info!(%addr, mode, "orchestrator listening on http://{addr}");

    let mut services = RunnerGroup::new();
    let sweep = state.settings.sweep;
    let (store, queue) = (state.store.clone(), state.queue.clone());
    let events = state.events.clone();
    services.register(Arc::new(http_service_with(
        "http",
        listener,
        app(state),
        move || events.close_streams(),
    )))?;
    services.register(Arc::new(
        Ticker::new(
            RunnerOptions::new("crash-sweep"),
            Duration::from_millis(sweep.interval_ms),
            move |_| {
                let (store, queue) = (store.clone(), queue.clone());
                async move { sweeper::tick(&store, &queue, &sweep).await }
            },
        )?
        .skip_overlapping(true),
    ))?;
    for service in in_process {
        services.register(service)?;
    }
    let report = shutdown::run_group(&services, CancellationToken::new(), deadline).await?;
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}
