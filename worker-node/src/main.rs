//! `runfleet-worker-node`: claims jobs from the fleet's queue and runs them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use runfleet::config::{QueueBackend, Settings};
use runfleet::keys::Keys;
use runfleet::queue::RedisQueue;
use runfleet::redis_pool::RedisPools;
use runfleet::store::RedisStore;
use runfleet::{shutdown, telemetry};
use runfleet_worker::{NodeConfig, WorkerNode};
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
    let cipher = settings.credential_cipher()?;
    let deadline = Duration::from_millis(settings.shutdown.deadline_ms);
    let config = NodeConfig::from_settings(&settings, settings.node.capacity);
    match settings.queue.backend {
        QueueBackend::Memory => anyhow::bail!(
            "queue.backend = memory is the embedded mode, where the orchestrator runs the workers \
             in-process: run `runfleet-orchestrator --embedded`, or set \
             RUNFLEET__QUEUE__BACKEND=redis to join a distributed fleet"
        ),
        QueueBackend::Rabbitmq => {
            anyhow::bail!("queue.backend = rabbitmq is not available in this version; use redis")
        }
        QueueBackend::Redis => {
            let pools = RedisPools::new(&settings.redis).context("redis settings")?;
            match pools.check().await {
                Ok(Some(policy)) => tracing::warn!(
                    policy,
                    "redis maxmemory-policy is not noeviction: an evicted lease strands its job"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "redis is not reachable yet; retrying in the background")
                }
            }
            let keys = Keys::new(settings.redis.key_prefix.clone());
            let store = RedisStore::new(pools.clone(), keys.clone());
            let queue = RedisQueue::new(pools, keys, settings.queue.name.clone());
            let node = WorkerNode::new(store, queue, cipher, config);
            let token = CancellationToken::new();
            let run = {
                let (node, token) = (node.clone(), token.clone());
                async move { node.run(token).await }
            };
            if !shutdown::run_until_signal(token, run, deadline).await {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
