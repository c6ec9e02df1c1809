//! `runfleet-orchestrator`: the fleet's stateless HTTP API. With `--embedded` it also runs a
//! worker pool in the same process on the in-memory backend, and needs nothing else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runfleet::config::{QueueBackend, Settings};
use runfleet::lifecycle::{RunnerGroup, RunnerOptions, Ticker};
use runfleet::queue::{JobQueue, MemoryQueue};
use runfleet::store::{FleetPolicy, FleetStore, MemoryStore};
use runfleet::{backend, observability, shutdown, telemetry};
use runfleet_orchestrator::{AppState, app, sweeper};
use runfleet_worker::http::http_service_with;
use runfleet_worker::{NodeConfig, WorkerNode};
use tokio_util::sync::CancellationToken;

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
    let kinds = runfleet_trading::kinds(&settings).install();
    let settings = Arc::new(settings);
    match settings.queue.backend {
        QueueBackend::Memory => {
            let (store, queue) = (
                MemoryStore::new(FleetPolicy::from_settings(&settings)),
                MemoryQueue::new(),
            );
            let config = NodeConfig::from_settings(&settings, settings.node.embedded_capacity);
            let node = WorkerNode::new(
                store.clone(),
                queue.clone(),
                cipher.clone(),
                config,
                kinds.clone(),
            );
            serve(
                AppState::new(store, queue, cipher, settings, kinds),
                Some(node),
            )
            .await
        }
        #[cfg(not(feature = "rabbitmq"))]
        QueueBackend::Rabbitmq => anyhow::bail!(
            "queue.backend = rabbitmq: this build has no RabbitMQ support (the `rabbitmq` cargo \
             feature is off)"
        ),
        QueueBackend::Redis => {
            let (store, queue) = backend::open_redis(&settings)
                .await
                .context("redis settings")?;
            distributed(AppState::new(store, queue, cipher, settings, kinds)).await
        }
        #[cfg(feature = "rabbitmq")]
        QueueBackend::Rabbitmq => {
            let (store, queue) = backend::open_rabbitmq(&settings)
                .await
                .context("rabbitmq settings")?;
            distributed(AppState::new(store, queue, cipher, settings, kinds)).await
        }
    }
}

/// Serves the API of a distributed fleet (no in-process workers).
async fn distributed<S: FleetStore, Q: JobQueue + Clone>(
    state: AppState<S, Q>,
) -> anyhow::Result<()> {
    serve::<S, Q, MemoryStore, MemoryQueue>(state, None).await
}

/// Serves the API (and, embedded, runs the worker pool) as services in one group until SIGTERM
/// or Ctrl-C, then stops the group within the shutdown deadline.
async fn serve<S, Q, NS, NQ>(
    state: AppState<S, Q>,
    node: Option<WorkerNode<NS, NQ>>,
) -> anyhow::Result<()>
where
    S: FleetStore,
    Q: JobQueue + Clone,
    NS: FleetStore,
    NQ: JobQueue + Clone,
{
    let deadline = Duration::from_millis(state.settings.shutdown.deadline_ms);
    let listener = tokio::net::TcpListener::bind(&state.settings.http.bind)
        .await
        .with_context(|| format!("cannot listen on {}", state.settings.http.bind))?;
    let addr = listener.local_addr()?;
    let mode = if node.is_some() {
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
    if let Some(node) = node {
        services.register(Arc::new(node.service("worker-pool")))?;
    }
    let report = shutdown::run_group(&services, CancellationToken::new(), deadline).await?;
    if !report.is_ok() {
        std::process::exit(1);
    }
    Ok(())
}
