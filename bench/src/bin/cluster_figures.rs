//! `runfleet-cluster-figures`: what one admission and one runner's heartbeat cost Redis, on one
//! private `redis-server` and on a private Redis Cluster of 3 masters and 3 replicas
//! (`scripts/redis-cluster`), the fleet under one hash tag and sharded over 16, all on this
//! machine (issue 16's figures; docs/benchmarks.md). For each, how the masters' share of the
//! work spreads: the busiest master's share of it (100 % under one tag, about a third when 16
//! shards spread over 3 masters).
//!
//! For each: `--admissions` starts through runfleet's store (the admission function, one call
//! per start, `--clients` at a time), then `--runners` of them claimed by one node and renewed
//! `--beats` times with every runner's report changed (positions and stats: the heartbeat's
//! expensive case; an idle runner's beat costs nothing per runner). Redis CPU is read from each
//! server's `INFO cpu` before and after each phase: the masters' and, on the cluster, the
//! replicas' (replication is their cost). On a 2-core machine the cluster cannot be faster in
//! absolute numbers; the per-operation CPU is what decides how it scales.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use runfleet_shared::backend::sharded;
use runfleet_shared::config::{RedisSettings, Settings};
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::ids::{JobId, NodeId, UserId};
use runfleet_shared::job::{JobSpec, StartRunnerRequest, Stats};
use runfleet_shared::keys::Keys;
use runfleet_shared::redis_pool::RedisPools;
use runfleet_shared::store::{
    Admission, ClaimOutcome, FleetPolicy, FleetStore, NodeInfo, RedisStore, RunnerBeat,
};
use runfleet_shared::tier::Tier;
use runfleet_tests::{PrivateCluster, free_port, idle_start_request};

#[derive(Parser, Debug)]
#[command(
    about = "Redis CPU per admission and per runner heartbeat: one Redis vs a 3-master cluster"
)]
struct Args {
    /// Admissions per target.
    #[arg(long, default_value_t = 20_000)]
    admissions: usize,
    /// Concurrent admitting clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Runners claimed by the node and renewed.
    #[arg(long, default_value_t = 5_000)]
    runners: usize,
    /// Heartbeats of all runners, each runner's report changed.
    #[arg(long, default_value_t = 20)]
    beats: usize,
    /// Repetitions; the two targets alternate, and the medians are printed last.
    #[arg(long, default_value_t = 3)]
    repetitions: usize,
}

const USERS: usize = 50;
const NO_LIMIT: u32 = 1_000_000;

/// The redis-servers of one target and how to read their CPU.
struct Target {
    name: &'static str,
    settings: RedisSettings,
    /// (port, is a master) of every server.
    servers: Vec<(u16, bool)>,
}

/// Each server's CPU seconds so far, in `Target::servers` order.
#[derive(Clone)]
struct Cpu(Vec<f64>);

impl Target {
    fn cpu(&self) -> anyhow::Result<Cpu> {
        let mut all = Vec::new();
        for &(port, _) in &self.servers {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
            let mut c = client.get_connection()?;
            let info: String = redis::cmd("INFO").arg("cpu").query(&mut c)?;
            let field = |name: &str| -> f64 {
                info.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            all.push(field("used_cpu_sys") + field("used_cpu_user"));
        }
        Ok(Cpu(all))
    }

    /// From `a` to `b`: the masters' CPU seconds, the replicas', and the busiest master's share
    /// of the masters' (1 on one server; 1/3 when 3 masters share the work evenly).
    fn spent(&self, a: &Cpu, b: &Cpu) -> (f64, f64, f64) {
        let (mut masters, mut replicas, mut busiest) = (0.0, 0.0, 0.0_f64);
        for (i, &(_, master)) in self.servers.iter().enumerate() {
            let d = b.0[i] - a.0[i];
            if master {
                masters += d;
                busiest = busiest.max(d);
            } else {
                replicas += d;
            }
        }
        (
            masters,
            replicas,
            if masters > 0.0 {
                busiest / masters
            } else {
                0.0
            },
        )
    }

    fn role_of(port: u16) -> anyhow::Result<bool> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
        let mut c = client.get_connection()?;
        let info: String = redis::cmd("INFO").arg("replication").query(&mut c)?;
        Ok(info.contains("role:master"))
    }
}

fn settings_for(target: &Target) -> Settings {
    let mut s = Settings {
        redis: target.settings.clone(),
        ..Settings::default()
    };
    s.tiers.free = NO_LIMIT;
    s.tiers.basic = NO_LIMIT;
    s.tiers.pro = NO_LIMIT;
    s.tiers.enterprise = NO_LIMIT;
    s.limits.max_runners = NO_LIMIT;
    s.limits.max_queued = NO_LIMIT;
    s
}

#[derive(Clone, Copy)]
struct Figures {
    admissions_per_s: f64,
    admission_master_us: f64,
    admission_replica_us: f64,
    admission_busiest: f64,
    report_master_us: f64,
    report_replica_us: f64,
    report_busiest: f64,
    reports_per_s: f64,
}

async fn measure(target: &Target, args: &Args) -> anyhow::Result<Figures> {
    let settings = settings_for(target);
    let pools = RedisPools::new(&settings.redis)?;
    let policy = FleetPolicy::from_settings(&settings);
    if settings.redis.shards > 1 {
        let (store, _) = sharded(&pools, &settings.redis, policy, &settings.queue.name, true);
        return measure_on(store, target, args).await;
    }
    let keys = Keys::of(&settings.redis);
    let store = RedisStore::new(pools, keys, policy).queuing_into(&settings.queue.name);
    measure_on(store, target, args).await
}

async fn measure_on<S: FleetStore>(
    store: S,
    target: &Target,
    args: &Args,
) -> anyhow::Result<Figures> {
    let cipher = CredentialCipher::ephemeral();
    for u in 0..USERS {
        store
            .subscribe(&UserId::new(format!("user-{u}")), Tier::Enterprise, 1)
            .await?;
    }
    let specs = (0..args.admissions)
        .map(|i| {
            let req: StartRunnerRequest = serde_json::from_value(idle_start_request(
                &format!("user-{}", i % USERS),
                &format!("s{i}"),
            ))?;
            let id = JobId::generate_in(store.placement(&req.user_id));
            Ok(JobSpec::sealed(id, req, &cipher)?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let c0 = target.cpu()?;
    let started = Instant::now();
    let admitted: Vec<anyhow::Result<()>> = futures::stream::iter(specs.iter())
        .map(|spec| {
            let store = store.clone();
            async move {
                match store.admit(spec).await? {
                    Admission::Admitted { .. } => Ok(()),
                    other => bail!("refused: {other:?}"),
                }
            }
        })
        .buffer_unordered(args.clients)
        .collect()
        .await;
    let took = started.elapsed();
    admitted.into_iter().collect::<anyhow::Result<()>>()?;
    let c1 = target.cpu()?;
    let (m_adm, r_adm, busiest_adm) = target.spent(&c0, &c1);
    let n = args.admissions as f64;

    // One node claims `runners` of them, then beats with every report changed.
    let node = NodeId::new("figures-node");
    let lease = Duration::from_secs(60);
    let mut held = Vec::new();
    while held.len() < args.runners {
        let claims = store
            .claim_queued(&node, args.runners - held.len(), lease)
            .await?
            .context("the store fills its queue itself")?;
        let before = held.len();
        held.extend(claims.outcomes.into_iter().filter_map(|o| match o {
            ClaimOutcome::Claimed(l) => Some((l.spec.id.clone(), l.epoch)),
            _ => None,
        }));
        if held.len() == before {
            bail!("the queue ran dry after {before} claims");
        }
    }
    let info = NodeInfo {
        node_id: node.clone(),
        capacity: held.len() as u32,
        runners: held.len() as u32,
        started_at: 0,
        last_heartbeat_at: None,
    };
    let c2 = target.cpu()?;
    let started = Instant::now();
    for beat in 0..args.beats {
        let beats: Vec<RunnerBeat> = held
            .iter()
            .map(|(job, epoch)| RunnerBeat {
                job_id: job.clone(),
                epoch: *epoch,
                positions: Some(Vec::new()),
                stats: Some(Stats {
                    total_trades: beat as u64 + 1,
                    ..Stats::default()
                }),
                account: None,
            })
            .collect();
        let refused = store.renew(&info, &beats, lease).await?;
        if !refused.is_empty() {
            bail!("{} beats refused", refused.len());
        }
    }
    let beat_took = started.elapsed();
    let c3 = target.cpu()?;
    let (m_rep, r_rep, busiest_rep) = target.spent(&c2, &c3);
    let reports = (args.beats * held.len()) as f64;
    Ok(Figures {
        admissions_per_s: n / took.as_secs_f64(),
        admission_master_us: m_adm * 1e6 / n,
        admission_replica_us: r_adm * 1e6 / n,
        admission_busiest: busiest_adm,
        report_master_us: m_rep * 1e6 / reports,
        report_replica_us: r_rep * 1e6 / reports,
        report_busiest: busiest_rep,
        reports_per_s: reports / beat_took.as_secs_f64(),
    })
}

/// A private `redis-server` configured as the cluster's nodes are (no persistence,
/// `noeviction`), killed on drop.
struct Single {
    port: u16,
    child: std::process::Child,
}

impl Single {
    fn start() -> anyhow::Result<Self> {
        let port = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("this benchmark starts its own redis-server; install redis-server")?;
        let single = Self { port, child };
        for _ in 0..100 {
            if Target::role_of(port).is_ok() {
                return Ok(single);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the private redis-server on {port} did not answer")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let single = Single::start()?;
    let cluster = PrivateCluster::start("figures");
    let cluster_servers: Vec<(u16, bool)> = cluster
        .ports()
        .map(|p| Ok((p, Target::role_of(p)?)))
        .collect::<anyhow::Result<_>>()?;
    let targets = [
        Target {
            name: "one redis-server",
            settings: RedisSettings {
                url: single.url(),
                key_prefix: "figures".into(),
                ..RedisSettings::default()
            },
            servers: vec![(single.port, true)],
        },
        Target {
            name: "3-master cluster, one tag",
            settings: RedisSettings {
                url: cluster.urls(),
                cluster: true,
                key_prefix: "figures".into(),
                ..RedisSettings::default()
            },
            servers: cluster_servers.clone(),
        },
        Target {
            name: "3-master cluster, 16 shards",
            settings: RedisSettings {
                url: cluster.urls(),
                cluster: true,
                shards: 16,
                key_prefix: "figures".into(),
                ..RedisSettings::default()
            },
            servers: cluster_servers,
        },
    ];
    println!(
        "{} admissions ({} clients), then {} runners × {} heartbeats with every report changed",
        args.admissions, args.clients, args.runners, args.beats
    );
    println!(
        "| target | admissions/s | Redis CPU per admission (µs): masters / replicas | busiest master's share | runner reports/s | Redis CPU per report (µs): masters / replicas | busiest master's share |"
    );
    println!("|---|---|---|---|---|---|---|");
    let row = |name: &str, f: &Figures| {
        println!(
            "| {name} | {:.0} | {:.1} / {:.1} | {:.0} % | {:.0} | {:.2} / {:.2} | {:.0} % |",
            f.admissions_per_s,
            f.admission_master_us,
            f.admission_replica_us,
            f.admission_busiest * 100.0,
            f.reports_per_s,
            f.report_master_us,
            f.report_replica_us,
            f.report_busiest * 100.0,
        )
    };
    let mut all: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for rep in 0..args.repetitions {
        for (t, figures) in targets.iter().zip(all.iter_mut()) {
            // Each repetition under a prefix of its own: the admissions start from empty.
            let mut t = Target {
                name: t.name,
                settings: t.settings.clone(),
                servers: t.servers.clone(),
            };
            t.settings.key_prefix = format!("figures{rep}");
            let f = measure(&t, &args).await?;
            row(&format!("{} (repetition {})", t.name, rep + 1), &f);
            figures.push(f);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (t, figures) in targets.iter().zip(&all) {
        let pick = |f: fn(&Figures) -> f64| median(&mut figures.iter().map(f).collect());
        let m = Figures {
            admissions_per_s: pick(|f| f.admissions_per_s),
            admission_master_us: pick(|f| f.admission_master_us),
            admission_replica_us: pick(|f| f.admission_replica_us),
            admission_busiest: pick(|f| f.admission_busiest),
            report_master_us: pick(|f| f.report_master_us),
            report_replica_us: pick(|f| f.report_replica_us),
            report_busiest: pick(|f| f.report_busiest),
            reports_per_s: pick(|f| f.reports_per_s),
        };
        row(&format!("{} (median)", t.name), &m);
    }
    Ok(())
}
