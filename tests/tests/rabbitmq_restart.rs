//! Issue 7: the broker restarts (`rabbitmqctl stop_app`, then `start_app`) while clients start
//! jobs through two orchestrators and two worker nodes claim them. Every job confirmed to its
//! client (202) ends up running exactly once: running, claimed once (epoch 1: a second claim
//! would have bumped it), leased to one node; no refused start (503) runs; the broker's queue
//! ends empty (duplicates and redeliveries were consumed and dropped).
//!
//! A test binary of its own because it takes the shared local broker down (cargo runs test
//! binaries one after another). A guard starts the broker again even when the test fails.
//! The broker is driven with `RUNFLEET_TEST_RABBITMQCTL` (split on spaces, e.g.
//! `sudo -n rabbitmqctl`, or `docker compose exec -T rabbitmq rabbitmqctl` for the compose
//! broker), else `/usr/sbin/rabbitmqctl`, else `rabbitmqctl` on `PATH`.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runfleet_shared::config::RabbitMqSettings;
use runfleet_shared::ids::{JobId, NodeId};
use runfleet_shared::keys::Keys;
use runfleet_shared::queue::{JobQueue, RabbitMqQueue};
use runfleet_tests::{Api, Fleet, eventually, redis};

/// Starts stop when this many have been made.
const MAX_STARTS: usize = 200;
/// Concurrent clients, each pausing this long between starts.
const CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(200);

fn amqp_url() -> String {
    std::env::var("RUNFLEET_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `host:port` of the test broker.
fn amqp_addr() -> String {
    let url = amqp_url();
    let rest = url.split("://").nth(1).unwrap_or_default();
    let host = rest.rsplit('@').next().unwrap_or_default();
    let host = host.split('/').next().unwrap_or_default();
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

fn queue_on(name: &str) -> RabbitMqQueue {
    let settings = RabbitMqSettings {
        url: amqp_url(),
        reconnect_min_ms: 50,
        reconnect_max_ms: 200,
        ..RabbitMqSettings::default()
    };
    RabbitMqQueue::new(&settings, name).expect("rabbitmq settings")
}

/// Waits until the broker accepts an AMQP connection and a queue declaration.
async fn wait_broker_ready(within: Duration) -> Result<(), String> {
    let probe = queue_on("runfleet-restart-probe");
    let deadline = Instant::now() + within;
    loop {
        match probe.connect().await {
            Ok(()) => {
                let _ = probe.delete().await;
                probe.close().await;
                return Ok(());
            }
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The local broker, controlled with `rabbitmqctl`. Dropped while stopped, it starts the
/// broker again and waits (bounded) until it accepts connections.
struct Broker {
    ctl: String,
    down: bool,
}

impl Broker {
    fn new() -> Self {
        let ctl = std::env::var("RUNFLEET_TEST_RABBITMQCTL").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/rabbitmqctl").exists() {
                "/usr/sbin/rabbitmqctl".into()
            } else {
                "rabbitmqctl".into()
            }
        });
        Self { ctl, down: false }
    }

    /// Runs `rabbitmqctl <args>`, bounded to 90 s.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new("timeout")
            .arg("90")
            .args(self.ctl.split_whitespace())
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.ctl))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {} failed ({}): {}{}",
                self.ctl,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn stop_app(&mut self) {
        self.down = true;
        if let Err(e) = self.ctl(&["stop_app"]) {
            panic!(
                "this test restarts the local RabbitMQ with rabbitmqctl and could not ({e}); \
                 set RUNFLEET_TEST_RABBITMQCTL to a working rabbitmqctl command"
            );
        }
    }

    fn start_app(&mut self) {
        if let Err(e) = self.ctl(&["start_app"]) {
            panic!("could not start RabbitMQ again: {e}");
        }
        self.down = false;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if !self.down {
            return;
        }
        eprintln!("restoring RabbitMQ after a failure: rabbitmqctl start_app");
        if let Err(e) = self.ctl(&["start_app"]) {
            eprintln!("{e}");
        }
        let _ = self.ctl(&["await_startup"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(amqp_addr()).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One start request: the user, the answer's status, the job id when confirmed.
#[derive(Debug, Clone)]
struct Start {
    user: String,
    code: u16,
    job: Option<String>,
}

async fn job_field(
    r: &mut ::redis::aio::MultiplexedConnection,
    keys: &Keys,
    job: &str,
    field: &str,
) -> Option<String> {
    ::redis::cmd("HGET")
        .arg(keys.job(&JobId::new(job)))
        .arg(field)
        .query_async(r)
        .await
        .expect("HGET")
}

/// Asserts that each of `jobs` was claimed once (epoch 1) and is leased to exactly one node,
/// and that no other job is leased; returns how many nodes there are.
async fn exactly_once(keys: &Keys, jobs: &[String]) -> usize {
    let mut r = redis().await;
    let mut twice = Vec::new();
    for job in jobs {
        let epoch = job_field(&mut r, keys, job, "epoch").await;
        if epoch.as_deref() != Some("1") {
            twice.push((job, epoch));
        }
    }
    assert!(twice.is_empty(), "claimed other than once: {twice:?}");
    let nodes: Vec<String> = ::redis::cmd("ZRANGE")
        .arg(keys.nodes())
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .expect("ZRANGE");
    let mut leased: HashMap<String, u32> = HashMap::new();
    for node in &nodes {
        let held: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(keys.node_jobs(&NodeId::new(node.clone())))
            .query_async(&mut r)
            .await
            .expect("SMEMBERS");
        for job in held {
            *leased.entry(job).or_default() += 1;
        }
    }
    for job in jobs {
        assert_eq!(
            leased.get(job),
            Some(&1),
            "{job} is leased to exactly one node"
        );
    }
    assert_eq!(
        leased.len(),
        jobs.len(),
        "only confirmed jobs run: {leased:?}"
    );
    nodes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_start_runs_exactly_once_across_a_broker_restart() {
    let mut fleet = Fleet::new("rmq-restart");
    let queue_name = format!("{}-jobs", fleet.prefix);
    fleet
        .set("RUNFLEET__QUEUE__BACKEND", "rabbitmq")
        .set("RUNFLEET__QUEUE__NAME", queue_name.clone())
        .set("RUNFLEET__RABBITMQ__URL", amqp_url())
        // Hundreds of runners on a small machine: a slower simulated market.
        .set("RUNFLEET__MARKET__TICK_MS", "1000")
        // The nodes log each delivery their claim step drops (duplicates, redeliveries).
        .set("RUST_LOG", "info,runfleet_worker_node=debug");
    fleet.cleanup().await;
    if let Err(e) = wait_broker_ready(Duration::from_secs(5)).await {
        panic!(
            "this test needs a real RabbitMQ and could not reach it ({e}). Run `scripts/test`, \
             which starts one, or set RUNFLEET_TEST_AMQP_URL."
        );
    }
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let n1 = fleet.worker("worker-1", MAX_STARTS);
    let n2 = fleet.worker("worker-2", MAX_STARTS);
    let mut broker = Broker::new();

    // Clients: free-tier users, one runner each, alternating between the orchestrators.
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(Mutex::new(Vec::<Start>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, next, starts) = (stop.clone(), next.clone(), starts.clone());
        let apis: [Api; 2] = [api_a.clone(), api_b.clone()];
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= MAX_STARTS {
                    break;
                }
                let user = format!("restart-{i:03}");
                let (code, body) = apis[i % 2].start_runner(&user, "s1").await;
                let job = body["jobId"].as_str().map(str::to_owned);
                starts.lock().unwrap().push(Start { user, code, job });
                tokio::time::sleep(PACE).await;
            }
        }));
    }

    // The restart, in the middle of the starts and claims.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let down_at = Instant::now();
    let mut broker_back = tokio::task::spawn_blocking(move || {
        broker.stop_app();
        broker
    })
    .await
    .expect("stop_app");
    let stop_took = down_at.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker_back = tokio::task::spawn_blocking(move || {
        broker_back.start_app();
        broker_back
    })
    .await
    .expect("start_app");
    wait_broker_ready(Duration::from_secs(60))
        .await
        .expect("the broker accepts connections again");
    let outage = down_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let starting_took = started.elapsed();
    let starts = std::mem::take(&mut *starts.lock().unwrap());
    drop(broker_back);

    let odd: Vec<&Start> = starts
        .iter()
        .filter(|s| s.code != 202 && s.code != 503)
        .collect();
    assert!(
        odd.is_empty(),
        "a start is either confirmed or refused: {odd:?}"
    );
    let confirmed: Vec<&Start> = starts.iter().filter(|s| s.code == 202).collect();
    let refused: Vec<&Start> = starts.iter().filter(|s| s.code == 503).collect();
    assert!(
        confirmed.len() >= 10,
        "too few starts confirmed to mean anything: {starts:?}"
    );

    // Every confirmed job runs.
    let keys = Keys::new(fleet.prefix.clone());
    let jobs: Vec<String> = confirmed.iter().filter_map(|s| s.job.clone()).collect();
    assert_eq!(jobs.len(), confirmed.len(), "a 202 carries the job id");
    let running_after = eventually(
        Duration::from_secs(60),
        "every confirmed job running",
        || async {
            let mut r = redis().await;
            for job in &jobs {
                if job_field(&mut r, &keys, job, "status").await.as_deref() != Some("running") {
                    return None;
                }
            }
            Some(started.elapsed())
        },
    )
    .await;

    // Exactly once, now and a little later (late redeliveries are dropped, not run).
    let nodes = exactly_once(&keys, &jobs).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    exactly_once(&keys, &jobs).await;

    // A refused start is not running.
    for s in &refused {
        let status = api_a.status(&s.user).await;
        assert_eq!(
            status["queueStats"]["runningWorkers"], 0,
            "refused start of {} runs: {status}",
            s.user
        );
    }

    // Every message, duplicates included, was consumed.
    let broker_queue = queue_on(&queue_name);
    eventually(Duration::from_secs(20), "the broker's queue drains", || {
        let q = broker_queue.clone();
        async move { (q.depth().await.ok()? == 0).then_some(()) }
    })
    .await;

    let node_logs = n1.output() + &n2.output();
    let dropped = node_logs.matches("claimed job dropped").count();
    let unacked = node_logs
        .matches("ack failed after claims were recorded")
        .count();
    println!(
        "broker restart: {} starts in {:.1} s ({} confirmed, {} refused with 503); stop_app took \
         {:.1} s, broker unreachable for {:.1} s; all {} confirmed jobs running exactly once on \
         {} nodes {:.1} s after the first start; deliveries dropped by the claim step: {dropped}, \
         acks lost to the restart: {unacked}",
        starts.len(),
        starting_took.as_secs_f64(),
        confirmed.len(),
        refused.len(),
        stop_took.as_secs_f64(),
        outage.as_secs_f64(),
        confirmed.len(),
        nodes,
        running_after.as_secs_f64(),
    );
    broker_queue.delete().await.unwrap();
    broker_queue.close().await;
    fleet.cleanup().await;
}
