//! Issue 16: the fleet on a Redis Cluster (3 masters, 3 replicas; `scripts/test` starts it on
//! 7101-7106). Every key of a fleet carries one hash tag, so the store's scripts stay single-slot
//! and atomic. The main whole-fleet scenarios run here unchanged against the cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use runfleet_shared::config::Settings;
use runfleet_tests::{Api, Fleet, PrivateCluster, eventually, idle_start_request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skeleton_scenario_runs_on_a_cluster() {
    crate::walking_skeleton::on_fleet(Fleet::new_on_cluster("cl-skeleton")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_on_a_cluster_never_exceed_a_limit() {
    crate::security::concurrent_starts_on(Fleet::new_on_cluster("cl-concurrent"), 3).await;
}

/// RabbitMQ carries the jobs, the cluster holds the state.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_backend_runs_with_its_state_on_a_cluster() {
    crate::rabbitmq::skeleton_on(Fleet::new_on_cluster("cl-rabbitmq")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_on_a_cluster_loses_no_runner() {
    crate::reliability::kill_9_on(Fleet::new_on_cluster("cl-kill9")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_cluster_hands_its_runners_back_on_sigterm() {
    crate::shutdown::hand_back_on_sigterm_on(Fleet::new_on_cluster("cl-sigterm")).await;
}

/// Runners of the failover test: 6 pro users × 10.
const USERS: usize = 6;
const PER_USER: usize = 10;
/// A start answered 503 with `Retry-After` (see the slow-migration test).
const WAITED_OUT: u16 = 1503;

/// Every runner of the failover fleet, by job id: (status, epoch, node).
async fn runners(api: &Api, users: usize) -> HashMap<String, (String, u64, String)> {
    let mut all = HashMap::new();
    for u in 0..users {
        for w in crate::reliability::workers_of(api, &format!("fo-{u}")).await {
            let r = &w["worker"];
            all.insert(
                r["jobId"].as_str().unwrap_or_default().to_owned(),
                (
                    r["status"].as_str().unwrap_or_default().to_owned(),
                    r["epoch"].as_u64().unwrap_or(0),
                    crate::reliability::node_of(&w),
                ),
            );
        }
    }
    all
}

/// What the failover fleet's two nodes say they hold (their own count, from their heartbeat).
async fn held_by_nodes(api: &Api) -> u64 {
    let (code, body) = api.get("/v1/nodes").await;
    assert_eq!(code, 200, "{body}");
    body["nodes"]
        .as_array()
        .map(|ns| ns.iter().filter_map(|n| n["runners"].as_u64()).sum())
        .unwrap_or(0)
}

/// Starts `per_user` idle runners for each of `users` pro users (`fo-0`, ...) and the one
/// runner of the probe user (free tier), who is then at their limit.
async fn start_runners_and_probe_user(api: &Api, users: usize, per_user: usize, probe: &str) {
    for u in 0..users {
        let user = format!("fo-{u}");
        api.grant(&user, "pro").await;
        for i in 0..per_user {
            let (code, body) = api
                .post("/v1/runners", &idle_start_request(&user, &format!("s{i}")))
                .await;
            assert_eq!(code, 202, "{body}");
        }
    }
    let (code, body) = api
        .post("/v1/runners", &idle_start_request(probe, "p0"))
        .await;
    assert_eq!(code, 202, "{body}");
}

/// The probe user of `fleet`: one whose shard is the fleet's first (whose master the failover
/// test kills), `fo-probe` when it is not sharded.
fn probe_user(fleet: &Fleet) -> String {
    (0..)
        .map(|i| match i {
            0 => "fo-probe".to_owned(),
            i => format!("fo-probe-{i}"),
        })
        .find(|u| fleet.keys_of(u) == fleet.keys())
        .expect("some user lives in shard 0")
}

/// A start of the probe user `user`, who is at their limit: refused with 403 when Redis
/// answers.
async fn probe(api: &Api, user: &str) -> runfleet_tests::Answer {
    api.request(
        reqwest::Method::POST,
        "/v1/runners",
        Some(&idle_start_request(user, "p1")),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failovers_keep_every_process_up_and_every_runner_running_once() {
    let _heavy = runfleet_tests::heavy().await;
    let cluster = PrivateCluster::start("failover");
    let fleet = Fleet::on_cluster("cl-failover", &cluster.urls());
    // The sharded fleet's test (sharded.rs) makes the 5; one tag is the simpler case.
    failovers_on(&cluster, fleet, 2).await;
}

/// `rounds` times: kill -9 the master of `fleet`'s (first) slot on `cluster` while probe starts
/// run, and check that every process stays up, starts are refused with 503 + Retry-After only
/// while the replica is promoted, and every runner then runs exactly once. Prints the figures.
pub async fn failovers_on(cluster: &PrivateCluster, mut fleet: Fleet, rounds: usize) {
    // A lease longer than a failover (node timeout 3 s, then the election): the runners ride
    // it out instead of being restarted.
    fleet
        .set("RUNFLEET__HEARTBEAT__LEASE_MS", "12000")
        .set("RUNFLEET__HEARTBEAT__INTERVAL_MS", "500");
    let (mut orch_a, api) = fleet.orchestrator("orchestrator-a").await;
    let (mut orch_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let mut node_1 = fleet.worker("worker-1", 40);
    let mut node_2 = fleet.worker("worker-2", 40);
    // The probe: a free user at their limit. Its start runs the admission script, is refused
    // with 403 when Redis answers and writes nothing, so it can be sent all through a failover.
    // Sharded: many users with few runners each, so that every shard holds some.
    let (users, per_user) = if fleet.shards() > 1 {
        (30, 2)
    } else {
        (USERS, PER_USER)
    };
    let probe_user = probe_user(&fleet);
    start_runners_and_probe_user(&api, users, per_user, &probe_user).await;
    let total = users * per_user + 1;
    eventually(Duration::from_secs(60), "every runner running", || async {
        let all = runners(&api, users).await;
        (all.len() == total - 1 && all.values().all(|(s, ..)| s == "running")).then_some(())
    })
    .await;

    let masters: std::collections::BTreeSet<u16> = fleet
        .shard_keys()
        .iter()
        .filter_map(|k| cluster.master_of(&k.ready("jobs")))
        .collect();
    println!(
        "the fleet's {} shard(s) live on {} master(s): {masters:?}",
        fleet.shards(),
        masters.len()
    );
    if fleet.shards() > 1 {
        assert!(masters.len() > 1, "shards spread over the masters");
    }
    let tag_key = fleet.keys().ready("jobs");
    let mut report = Vec::new();
    for round in 1..=rounds {
        let master = cluster
            .master_of(&tag_key)
            .expect("the fleet's slot has a master");
        let probing = Arc::new(AtomicBool::new(true));
        let prober = {
            let (api, probing, user) = (api_b.clone(), probing.clone(), probe_user.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while probing.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let a = probe(&api, &user).await;
                    answers.push((sent, a.status, a.retry_after, a.body));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answers
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let killed = Instant::now();
        cluster.kill(master);
        let promoted = eventually(Duration::from_secs(30), "a replica promoted", || async {
            cluster.master_of(&tag_key).filter(|&m| m != master)
        })
        .await;
        let promoted_after = killed.elapsed();
        // The fleet answers again: the probe is refused for its limit, not for Redis.
        eventually(
            Duration::from_secs(30),
            "admissions answered again",
            || async {
                let a = api_b
                    .request(
                        reqwest::Method::POST,
                        "/v1/runners",
                        Some(&idle_start_request(&probe_user, "p2")),
                        None,
                    )
                    .await;
                (a.status == 403).then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        probing.store(false, Ordering::Relaxed);
        let answers = prober.await.expect("prober");
        cluster.restart_node(master);

        let unavailable: Vec<_> = answers.iter().filter(|a| a.1 == 503).collect();
        for (_, code, retry_after, body) in &answers {
            assert!(
                *code == 403 || *code == 503,
                "round {round}: a probe got {code}: {body}"
            );
            if *code == 503 {
                assert!(retry_after.is_some(), "a 503 carries Retry-After: {body}");
            }
        }
        let window = match (unavailable.first(), unavailable.last()) {
            (Some(first), Some(last)) => last.0.duration_since(first.0),
            _ => Duration::ZERO,
        };
        // Every runner is running again, once: each job runs, and the nodes hold exactly as
        // many as there are jobs (a runner held twice would count twice).
        let settled = Instant::now();
        let reclaimed = eventually(
            Duration::from_secs(60),
            "all runners running once",
            || async {
                let all = runners(&api, users).await;
                let running = all.values().filter(|(s, ..)| s == "running").count();
                (running == total - 1 && held_by_nodes(&api).await == total as u64)
                    .then_some(all.values().filter(|(_, epoch, _)| *epoch > 1).count())
            },
        )
        .await;
        for (name, p) in [
            ("orchestrator-a", &mut orch_a),
            ("orchestrator-b", &mut orch_b),
            ("worker-1", &mut node_1),
            ("worker-2", &mut node_2),
        ] {
            assert!(
                p.wait_exit(Duration::ZERO).await.is_none(),
                "round {round}: {name} exited\n{}",
                p.output()
            );
        }
        let line = format!(
            "failover {round}: master :{master} killed, :{promoted} promoted after {:.1} s; \
             {} of {} probe starts answered 503 + Retry-After, over {:.1} s; all {} runners \
             running once {:.1} s later ({reclaimed} claimed again since the start)",
            promoted_after.as_secs_f64(),
            unavailable.len(),
            answers.len(),
            window.as_secs_f64(),
            total,
            settled.elapsed().as_secs_f64(),
        );
        println!("{line}");
        report.push(line);
        eventually(
            Duration::from_secs(60),
            "the killed node back as a replica",
            || async { cluster.healthy().then_some(()) },
        )
        .await;
    }
    println!("{}", report.join("\n"));
    fleet.cleanup().await;
}

/// `redis-cli -p <port> <args>`, its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The id of the node on `port` and the number of slots it serves.
fn node_id_and_slots(cluster: &PrivateCluster, port: u16) -> (String, usize) {
    let id = redis_cli(port, &["cluster", "myid"]);
    let slots = redis_cli(cluster.base, &["cluster", "nodes"])
        .lines()
        .find(|l| l.starts_with(&id))
        .map(|l| {
            l.split_whitespace()
                .skip(8)
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => {
                        b.parse::<usize>().unwrap_or(0) - a.parse::<usize>().unwrap_or(0) + 1
                    }
                    None => 1,
                })
                .sum()
        })
        .unwrap_or(0);
    (id, slots)
}

/// A master of `cluster` other than the one on `from`.
fn other_master(cluster: &PrivateCluster, from: u16) -> u16 {
    cluster
        .ports()
        .find(|&p| p != from && node_id_and_slots(cluster, p).1 > 0)
        .expect("another master")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_the_fleets_slot_while_it_runs_shows_no_error_and_loses_nothing() {
    let _heavy = runfleet_tests::heavy().await;
    let cluster = PrivateCluster::start("reshard");
    reshard_on(&cluster, Fleet::on_cluster("cl-reshard", &cluster.urls())).await;
}

/// Moves every slot of the master of `fleet`'s (first) slot to another master with
/// `redis-cli --cluster reshard` while 20 runners run and probe starts and status reads go on:
/// none is answered otherwise than when nothing moves, and every runner runs on, once.
pub async fn reshard_on(cluster: &PrivateCluster, fleet: Fleet) {
    let (_a, api) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let _n1 = fleet.worker("worker-1", 20);
    let _n2 = fleet.worker("worker-2", 20);
    // Sharded: users in many shards, moved and not.
    let (users, per_user) = if fleet.shards() > 1 {
        (10, 2)
    } else {
        (2, PER_USER)
    };
    let probe_user = probe_user(&fleet);
    start_runners_and_probe_user(&api, users, per_user, &probe_user).await;
    let held = (users * per_user + 1) as u64;
    let all_running = || async {
        let mut n = 0;
        for u in 0..users {
            n += crate::reliability::workers_of(&api, &format!("fo-{u}"))
                .await
                .iter()
                .filter(|w| w["worker"]["status"] == "running")
                .count();
        }
        n
    };
    eventually(Duration::from_secs(60), "20 runners running", || async {
        (all_running().await == users * per_user && held_by_nodes(&api).await == held).then_some(())
    })
    .await;

    let tag_key = fleet.keys().ready("jobs");
    let from = cluster.master_of(&tag_key).expect("a master");
    let to = other_master(cluster, from);
    let (from_id, slots) = node_id_and_slots(cluster, from);
    let (to_id, _) = node_id_and_slots(cluster, to);
    let probing = Arc::new(AtomicBool::new(true));
    let prober = {
        let (api, probing, user) = (api_b.clone(), probing.clone(), probe_user.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while probing.load(Ordering::Relaxed) {
                // A start (refused for its limit: 403) and a read of many keys (the status of
                // a user with runners: a pipeline of their records: 200).
                let a = probe(&api, &user).await;
                answers.push(("start", 403, a.status, a.body));
                let (code, body) = api.get("/v1/users/fo-0/runners").await;
                answers.push(("status", 200, code, body));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        })
    };
    // Every slot of the fleet's master, the fleet's among them, moves to another master.
    let started = Instant::now();
    let moved = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &format!("127.0.0.1:{from}"),
                "--cluster-from",
                &from_id,
                "--cluster-to",
                &to_id,
                "--cluster-slots",
                &slots.to_string(),
                "--cluster-yes",
            ])
            .output()
            .expect("redis-cli --cluster reshard")
    })
    .await
    .unwrap();
    assert!(
        moved.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&moved.stdout)
    );
    let took = started.elapsed();
    assert_eq!(
        cluster.master_of(&tag_key),
        Some(to),
        "the fleet's slot moved"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    probing.store(false, Ordering::Relaxed);
    let answers = prober.await.unwrap();
    let errors: Vec<_> = answers
        .iter()
        .filter(|(_, want, code, _)| code != want)
        .collect();
    println!(
        "reshard of {slots} slots (the fleet's among them) from :{from} to :{to} took {:.1} s; \
         {} probe starts and status reads during it, {} answered otherwise than expected",
        took.as_secs_f64(),
        answers.len(),
        errors.len()
    );
    assert!(errors.is_empty(), "the user saw errors: {errors:?}");
    eventually(
        Duration::from_secs(30),
        "every runner still running once",
        || async {
            (all_running().await == users * per_user && held_by_nodes(&api).await == held)
                .then_some(())
        },
    )
    .await;
    fleet.cleanup().await;
}

/// The fleet's own slot moved by hand, slowly (5 keys per MIGRATE, 20 ms apart), so that starts
/// and reads keep arriving while part of the fleet's keys is on each master: every store call
/// then gets TRYAGAIN (it declares two keys that never exist) and is retried until the slot
/// settles, instead of running with half the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_and_reads_during_a_slow_migration_of_the_fleets_slot_never_run_split() {
    let _heavy = runfleet_tests::heavy().await;
    let cluster = PrivateCluster::start("migrate");
    let fleet = Fleet::on_cluster("cl-migrate", &cluster.urls());
    let (_a, api) = fleet.orchestrator("orchestrator-a").await;
    let _n1 = fleet.worker("worker-1", 20);
    let user = "fo-0";
    start_runners_and_probe_user(&api, 1, PER_USER, "fo-probe").await;
    let running = || async {
        crate::reliability::workers_of(&api, user)
            .await
            .iter()
            .filter(|w| w["worker"]["status"] == "running")
            .count()
    };
    eventually(Duration::from_secs(30), "10 runners running", || async {
        (running().await == PER_USER).then_some(())
    })
    .await;

    let tag_key = fleet.keys().ready("jobs");
    let from = cluster.master_of(&tag_key).expect("a master");
    let to = other_master(&cluster, from);
    let (from_id, to_id) = (
        redis_cli(from, &["cluster", "myid"]),
        redis_cli(to, &["cluster", "myid"]),
    );
    let slot = redis_cli(from, &["cluster", "keyslot", &tag_key]);
    let probing = Arc::new(AtomicBool::new(true));
    let prober = {
        let (api, probing) = (api.clone(), probing.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while probing.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let a = probe(&api, "fo-probe").await;
                // A start that waited out the store's response timeout answers 503 with
                // Retry-After, the documented limit; marked so it can be told from an error.
                let status = match (a.status, &a.retry_after) {
                    (503, Some(_)) => WAITED_OUT,
                    (status, _) => status,
                };
                answers.push(("start", 403, status, sent.elapsed(), a.body));
                let sent = Instant::now();
                let (code, body) = api.get("/v1/users/fo-0/runners").await;
                answers.push(("status", 200, code, sent.elapsed(), body));
            }
            answers
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let migrating = Instant::now();
    let moved_keys = tokio::task::spawn_blocking(move || {
        assert_eq!(
            redis_cli(to, &["cluster", "setslot", &slot, "importing", &from_id]),
            "OK"
        );
        assert_eq!(
            redis_cli(from, &["cluster", "setslot", &slot, "migrating", &to_id]),
            "OK"
        );
        let mut moved = 0;
        loop {
            let keys = redis_cli(from, &["cluster", "getkeysinslot", &slot, "5"]);
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["migrate", "127.0.0.1"];
            let to_port = to.to_string();
            args.push(&to_port);
            args.extend(["", "0", "5000", "KEYS"]);
            args.extend(keys.iter().copied());
            let out = redis_cli(from, &args);
            assert_eq!(out, "OK", "MIGRATE of {keys:?}");
            moved += keys.len();
            std::thread::sleep(Duration::from_millis(20));
        }
        for port in [to, from] {
            assert_eq!(
                redis_cli(port, &["cluster", "setslot", &slot, "node", &to_id]),
                "OK"
            );
        }
        moved
    })
    .await
    .unwrap();
    let window = migrating.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    probing.store(false, Ordering::Relaxed);
    let answers = prober.await.unwrap();
    let slowest = answers.iter().map(|a| a.3).max().unwrap_or_default();
    // `redis.response_timeout_ms` (2 s by default) bounds how long a call waits out TRYAGAIN:
    // a start may answer 503 + Retry-After only when it waited that long, which only a
    // migration that itself outlasted it can make (a starved 2-core machine: 39 keys in 2.2 s
    // once, 0.3-0.4 s usually). Anything else is an error the user should not see.
    let timeout = Duration::from_millis(Settings::default().redis.response_timeout_ms);
    let waited_out = |code: u16, took: Duration| {
        code == WAITED_OUT && window >= timeout && took >= timeout - Duration::from_millis(100)
    };
    let errors: Vec<_> = answers
        .iter()
        .filter(|(_, want, code, took, _)| code != want && !waited_out(*code, *took))
        .collect();
    let timed_out = answers.iter().filter(|a| waited_out(a.2, a.3)).count();
    println!(
        "the fleet's slot migrated by hand, {moved_keys} keys over {:.1} s; {} starts and status \
         reads meanwhile, {} answered otherwise than expected, {timed_out} waited out the \
         response timeout (503 + Retry-After), the slowest in {:?}",
        window.as_secs_f64(),
        answers.len(),
        errors.len(),
        slowest
    );
    assert!(
        moved_keys > 20,
        "the fleet's keys were in the slot: {moved_keys}"
    );
    assert!(errors.is_empty(), "the user saw errors: {errors:?}");
    assert_eq!(cluster.master_of(&tag_key), Some(to));
    eventually(
        Duration::from_secs(30),
        "every runner still running",
        || async {
            (running().await == PER_USER && held_by_nodes(&api).await == PER_USER as u64 + 1)
                .then_some(())
        },
    )
    .await;
    fleet.cleanup().await;
}
