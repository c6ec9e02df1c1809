//! Issue 11: Prometheus metrics. Two orchestrators and a node are scraped while runners start,
//! crash (their node is killed with SIGKILL), restart elsewhere and stop; the text is parsed
//! with a real Prometheus parser, and the fleet-wide gauges must equal the ground truth in Redis
//! and agree across both orchestrators. The fleet runs on a private redis-server so the Redis
//! commands a scrape costs can be counted.

use std::collections::HashMap;
use std::time::Duration;

use prometheus_parse::{Scrape, Value as Sample};
use runfleet_tests::{Api, Fleet, PrivateRedis, eventually};
use serde_json::{Value, json};

/// A parsed `/metrics` answer.
struct Metrics(Scrape);

impl Metrics {
    fn parse(text: &str) -> Self {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(Scrape::parse(lines).expect("a valid Prometheus text exposition"))
    }

    /// The value of a counter or gauge with these labels (0 when absent: a counter that never
    /// moved is not rendered yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
                other => panic!("{name} is not a counter or gauge: {other:?}"),
            })
            .sum()
    }

    /// How many observations a histogram holds (its `+Inf` bucket).
    fn observations(&self, name: &str) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter_map(|s| match &s.value {
                Sample::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| b.less_than.is_infinite())
                    .map(|b| b.count),
                _ => None,
            })
            .sum()
    }

    /// The fleet-wide gauges, as the ground truth is read.
    fn fleet(&self) -> Fleetwide {
        let g = |name: &str| self.value(name, &[]) as u64;
        let runners = |status: &str| self.value("runfleet_runners", &[("status", status)]) as u64;
        Fleetwide {
            ready: g("runfleet_queue_ready_jobs"),
            processing: g("runfleet_queue_processing_jobs"),
            queued: runners("queued"),
            running: runners("running"),
            restarting: runners("restarting"),
            failed_last_hour: runners("failed_last_hour"),
            nodes_alive: g("runfleet_nodes_alive"),
            capacity: g("runfleet_node_capacity_slots"),
            node_runners: g("runfleet_node_runners"),
            nodes_needed: g("runfleet_nodes_needed"),
        }
    }
}

/// The fleet-wide values every orchestrator must report alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fleetwide {
    ready: u64,
    processing: u64,
    queued: u64,
    running: u64,
    restarting: u64,
    failed_last_hour: u64,
    nodes_alive: u64,
    capacity: u64,
    node_runners: u64,
    nodes_needed: u64,
}

async fn scrape(api: &Api) -> Metrics {
    let (code, text) = api.get_text("/metrics").await;
    assert_eq!(code, 200, "{text}");
    Metrics::parse(&text)
}

async fn scrape_node(base: &str) -> Metrics {
    let text = runfleet_tests::http_get(&format!("{base}/metrics"))
        .await
        .expect("node /metrics")
        .text()
        .await
        .expect("text");
    Metrics::parse(&text)
}

/// The same values read straight from the fleet's keys in Redis.
async fn ground_truth(fleet: &Fleet) -> Fleetwide {
    let mut r = fleet.redis().await;
    let p = &fleet.prefix;
    let (queued, restarting, failed_last_hour): (u64, u64, u64) = redis::pipe()
        .scard(format!("{p}:queued"))
        .zcard(format!("{p}:delayed"))
        .zcount(format!("{p}:failed"), "-inf", "+inf")
        .query_async(&mut r)
        .await
        .unwrap();
    // Running: the runners of the nodes that hold a lease (a runner's lease is its node's).
    let leased: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{p}:node_leases"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let mut running = 0;
    for id in leased {
        let held: u64 = redis::cmd("SCARD")
            .arg(format!("{p}:node:{id}:jobs"))
            .query_async(&mut r)
            .await
            .unwrap();
        running += held;
    }
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("{p}:nodes"))
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let (mut nodes_alive, mut capacity, mut node_runners) = (0, 0, 0);
    for id in ids {
        let info: Option<String> = redis::cmd("GET")
            .arg(format!("{p}:node:{id}"))
            .query_async(&mut r)
            .await
            .unwrap();
        if let Some(info) = info {
            let v: Value = serde_json::from_str(&info).unwrap();
            nodes_alive += 1;
            capacity += v["capacity"].as_u64().unwrap();
            node_runners += v["runners"].as_u64().unwrap();
        }
    }
    let (ready, processing) = fleet.queue_lengths().await;
    let load = queued + running;
    let nodes_needed = match (load, nodes_alive) {
        (0, _) => 0,
        (_, 0) => load.div_ceil(100),
        (_, n) => load.div_ceil((capacity / n).max(1)).max(1),
    };
    Fleetwide {
        ready,
        processing,
        queued,
        running,
        restarting,
        failed_last_hour,
        nodes_alive,
        capacity,
        node_runners,
        nodes_needed,
    }
}

/// Waits until both orchestrators report the ground truth (read between and around their
/// scrapes, so a moving fleet cannot pass by luck) and it is `expected`; returns it.
async fn settled(
    fleet: &Fleet,
    a: &Api,
    b: &Api,
    what: &str,
    expected: impl Fn(&Fleetwide) -> bool,
) -> Fleetwide {
    eventually(Duration::from_secs(30), what, || async {
        let before = ground_truth(fleet).await;
        let from_a = scrape(a).await.fleet();
        let from_b = scrape(b).await.fleet();
        let after = ground_truth(fleet).await;
        let agree = before == after && from_a == before && from_b == before;
        if !agree {
            println!("{what}: truth {before:?} / {after:?}\n  a {from_a:?}\n  b {from_b:?}");
        }
        (agree && expected(&before)).then_some(before)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_two_orchestrators_and_a_node_match_redis_while_runners_start_crash_and_stop() {
    let redis = PrivateRedis::start().await;
    let mut fleet = Fleet::on("metrics", &redis.url());
    let (_oa, a) = fleet.orchestrator("orchestrator-a").await;
    let (_ob, b) = fleet.orchestrator("orchestrator-b").await;

    // The endpoint needs the admin key (metrics.public is off).
    let user_key = a.user_key("mia").await;
    assert_eq!(a.with_key(None).get_text("/metrics").await.0, 401);
    assert_eq!(
        a.with_key(Some(&user_key)).get_text("/metrics").await.0,
        403
    );

    let (_watched, node_url) = fleet.worker_with_http("worker-watched", 2);
    let doomed = fleet.worker("worker-doomed", 4);
    let (code, body) = a
        .put_admin(
            "/v1/users/mia/entitlement",
            &json!({"tier": "pro", "days": 1}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    // Once both nodes are alive, so neither takes every job.
    settled(&fleet, &a, &b, "two nodes alive", |f| f.nodes_alive == 2).await;
    let mut jobs = Vec::new();
    for i in 0..8 {
        let api = if i % 2 == 0 { &a } else { &b };
        let (code, body) = api.start_runner("mia", &format!("s{i}")).await;
        assert_eq!(code, 202, "{body}");
        jobs.push(body["jobId"].as_str().unwrap().to_owned());
    }
    let (code, body) = a.start_runner("mia", "").await;
    assert_eq!(code, 400, "{body}");

    // 6 slots for 8 runners: 6 run, 2 wait in the ready list; 8 / (6 / 2) = 3 nodes needed.
    let f = settled(&fleet, &a, &b, "6 running, 2 queued", |f| {
        f.running == 6 && f.queued == 2 && f.ready == 2 && f.node_runners == 6
    })
    .await;
    assert_eq!((f.capacity, f.nodes_needed, f.processing), (6, 3, 0));

    let node = scrape_node(&node_url).await;
    assert_eq!(node.value("runfleet_node_runners", &[]), 2.0);
    assert_eq!(node.value("runfleet_node_free_slots", &[]), 0.0);
    assert!(node.observations("runfleet_heartbeat_seconds") > 0.0);
    assert!(node.observations("runfleet_heartbeat_bytes") > 0.0);
    assert!(node.observations("runfleet_node_claim_batch_jobs") >= 1.0);
    assert!(node.observations("runfleet_start_to_running_seconds") >= 1.0);
    let health = runfleet_tests::http_get(&format!("{node_url}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // The doomed node dies with its 4 runners: their leases expire, the sweep crashes them and
    // restarts them; only the watched node's 2 slots are left.
    doomed.signal("KILL");
    let f = settled(&fleet, &a, &b, "2 running, 6 queued after the kill", |f| {
        f.nodes_alive == 1 && f.running == 2 && f.queued == 6 && f.restarting == 0
    })
    .await;
    assert_eq!((f.ready, f.capacity, f.nodes_needed), (6, 2, 4));
    let (ma, mb) = (scrape(&a).await, scrape(&b).await);
    let both = |name: &str| ma.value(name, &[]) + mb.value(name, &[]);
    assert_eq!(both("runfleet_expired_leases_total"), 4.0);
    assert_eq!(both("runfleet_restarts_total"), 4.0);
    let accepted = [("outcome", "accepted")];
    assert_eq!(
        ma.value("runfleet_admissions_total", &accepted)
            + mb.value("runfleet_admissions_total", &accepted),
        8.0
    );
    assert_eq!(
        ma.value(
            "runfleet_admissions_total",
            &[("outcome", "invalid_request")]
        ),
        1.0
    );
    assert!(ma.observations("runfleet_sweep_duration_seconds") > 0.0);
    assert!(mb.observations("runfleet_sweep_duration_seconds") > 0.0);

    // A new node takes the restarted runners: 8 run on 10 slots, 2 nodes needed.
    let _rescue = fleet.worker("worker-rescue", 8);
    let f = settled(&fleet, &a, &b, "8 running on two nodes", |f| {
        f.nodes_alive == 2 && f.running == 8 && f.queued == 0 && f.node_runners == 8
    })
    .await;
    assert_eq!((f.capacity, f.nodes_needed, f.ready), (10, 2, 0));

    for job in &jobs {
        let (code, body) = b
            .post(
                &format!("/v1/runners/{job}/stop"),
                &json!({"mode": "flatten"}),
            )
            .await;
        assert!(code == 200 || code == 202, "{body}");
    }
    let f = settled(&fleet, &a, &b, "nothing running after the stops", |f| {
        f.running == 0 && f.queued == 0 && f.node_runners == 0
    })
    .await;
    assert_eq!(f.nodes_needed, 0);
    eventually(
        Duration::from_secs(10),
        "the watched node reports 2 free slots",
        || async {
            let node = scrape_node(&node_url).await;
            (node.value("runfleet_node_free_slots", &[]) == 2.0).then_some(())
        },
    )
    .await;

    println!(
        "--- /metrics of orchestrator-a ---\n{}",
        a.get_text("/metrics").await.1
    );
    println!(
        "--- /metrics of the watched node ---\n{}",
        runfleet_tests::http_get(&format!("{node_url}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    );

    // The cost of a scrape: an orchestrator that does nothing else (its sweep interval is an
    // hour), scraped 20 times, counted by the private Redis's command statistics.
    fleet.set("RUNFLEET__SWEEP__INTERVAL_MS", "3600000");
    let (_oc, c) = fleet.orchestrator("orchestrator-quiet").await;
    drop((_oa, _ob, _watched, _rescue));
    tokio::time::sleep(Duration::from_millis(500)).await;
    scrape(&c).await; // loads the function library
    let mut r = fleet.redis().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut r)
        .await
        .unwrap();
    const SCRAPES: u64 = 20;
    for _ in 0..SCRAPES {
        scrape(&c).await;
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut r)
        .await
        .unwrap();
    let calls: HashMap<String, u64> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let n = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), n))
        })
        .collect();
    let inner: u64 = calls
        .iter()
        .filter(|(k, _)| !["fcall", "info", "config|resetstat", "config"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    println!(
        "redis commands per scrape: {} round trip(s) (FCALL), {:.1} commands inside the script; all: {calls:?}",
        calls.get("fcall").copied().unwrap_or(0) as f64 / SCRAPES as f64,
        inner as f64 / SCRAPES as f64
    );
    // The store's scripts are Redis Functions on this Redis (docs/redis-schema.md).
    assert_eq!(calls.get("fcall"), Some(&SCRAPES), "{calls:?}");
}

/// The runner's state as its owner sees it: (status, epoch, node).
async fn runner_state(api: &Api, user: &str) -> (String, u64, String) {
    let body = api.status(user).await;
    let w = &body["workers"][0]["worker"];
    (
        w["status"].as_str().unwrap_or_default().to_owned(),
        w["epoch"].as_u64().unwrap_or(0),
        w["nodeId"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Waits until the user's one runner runs at `epoch`; returns its node.
async fn node_running_at(api: &Api, user: &str, epoch: u64) -> String {
    let what = format!("the runner of {user} running at epoch {epoch}");
    let (_, _, node) = eventually(Duration::from_secs(20), &what, || async {
        let s = runner_state(api, user).await;
        (s.0 == "running" && s.1 == epoch).then_some(s)
    })
    .await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runners_history_follows_it_through_a_kill_9_a_restart_elsewhere_and_a_stop() {
    let fleet = Fleet::new("events");
    fleet.cleanup().await;
    let (_orchestrator, admin) = fleet.orchestrator("orchestrator").await;
    let ivy = admin.with_key(Some(&admin.user_key("ivy").await));
    let eve = admin.with_key(Some(&admin.user_key("eve").await));
    // Live followers, connected throughout: the owner (who reconnects once midway), another
    // user, and the admin.
    let ivy_live = ivy.follow_events("", None).await;
    let eve_live = eve.follow_events("", None).await;
    let admin_live = admin.follow_events("", None).await;
    let doomed = fleet.worker("worker-doomed", 1);
    let (code, body) = ivy.start_runner("ivy", "s1").await;
    assert_eq!(code, 202, "{body}");
    let job = body["jobId"].as_str().unwrap().to_owned();
    let first_node = node_running_at(&ivy, "ivy", 1).await;
    let claimed = |events: &[Value]| events.iter().any(|e| e["type"] == "claimed");
    ivy_live
        .wait_for(
            Duration::from_secs(10),
            "ivy's stream shows the claim",
            claimed,
        )
        .await;
    // The owner's connection drops; it reconnects after the node's death, with its last id.
    let before_gap = ivy_live.disconnect();
    let _survivor = fleet.worker("worker-survivor", 1);
    doomed.signal("KILL");
    let second_node = node_running_at(&ivy, "ivy", 2).await;
    let last_seen = before_gap.last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ivy_live = ivy.follow_events("", Some(&last_seen)).await;
    assert_ne!(first_node, second_node);
    let (code, body) = ivy
        .post(
            &format!("/v1/runners/{job}/stop"),
            &json!({"mode": "flatten"}),
        )
        .await;
    assert!(code == 200 || code == 202, "{body}");
    eventually(Duration::from_secs(15), "stopped", || async {
        (runner_state(&ivy, "ivy").await.0 == "stopped").then_some(())
    })
    .await;

    let (code, body) = ivy.get(&format!("/v1/runners/{job}/events")).await;
    assert_eq!(code, 200, "{body}");
    let events = body["events"].as_array().unwrap();
    let steps: Vec<(&str, u64, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["epoch"].as_u64().unwrap(),
                e["node"].as_str().unwrap(),
            )
        })
        .collect();
    let (n1, n2) = (first_node.as_str(), second_node.as_str());
    assert_eq!(
        steps,
        vec![
            ("admitted", 0, ""),
            ("claimed", 1, n1),
            ("crashed", 1, n1),
            ("restart_scheduled", 1, n1),
            ("restarted", 1, ""),
            ("claimed", 2, n2),
            ("stop_requested", 2, n2),
            ("stopped", 2, n2),
        ],
        "{body}"
    );
    assert!(
        events[2]["reason"]
            .as_str()
            .unwrap()
            .contains("no heartbeat"),
        "{body}"
    );
    assert!(
        events
            .iter()
            .all(|e| e["user"] == "ivy" && e["job"] == job.as_str())
    );
    // Another user may not read it; the admin may.
    assert_eq!(eve.get(&format!("/v1/runners/{job}/events")).await.0, 403);
    assert_eq!(
        admin.get(&format!("/v1/runners/{job}/events")).await.1,
        body
    );

    // Live: the owner's two connections together received exactly the history, in order,
    // without a gap or a duplicate; the admin the same; the other user none of it.
    let history: Vec<Value> = events.clone();
    let stopped = |events: &[Value]| events.iter().any(|e| e["type"] == "stopped");
    let after_gap = ivy_live
        .wait_for(
            Duration::from_secs(10),
            "ivy's stream shows the stop",
            stopped,
        )
        .await;
    let ids = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut live = before_gap.clone();
    live.extend(after_gap.iter().cloned());
    assert_eq!(ids(&live), ids(&history), "owner's live events vs history");
    assert_eq!(live, history);
    assert!(!before_gap.is_empty() && !after_gap.is_empty());
    let admin_seen = admin_live
        .wait_for(
            Duration::from_secs(10),
            "the admin's stream shows the stop",
            stopped,
        )
        .await;
    let admin_of_job: Vec<Value> = admin_seen
        .into_iter()
        .filter(|e| e["job"] == job.as_str())
        .collect();
    assert_eq!(admin_of_job, history);
    // The other user's stream is live (its own runner shows up) but never carried ivy's.
    let (code, eve_start) = eve.start_runner("eve", "s1").await;
    assert_eq!(code, 202, "{eve_start}");
    let admitted = |events: &[Value]| events.iter().any(|e| e["type"] == "admitted");
    let eve_seen = eve_live
        .wait_for(
            Duration::from_secs(10),
            "eve's stream shows her runner",
            admitted,
        )
        .await;
    assert!(eve_seen.iter().all(|e| e["user"] == "eve"), "{eve_seen:?}");
    println!(
        "live: ivy received {} + {} events across one reconnect (Last-Event-ID {last_seen}); eve {} of her own, 0 of ivy's",
        before_gap.len(),
        after_gap.len(),
        eve_seen.len()
    );
    println!("history of {job}: {body:#}");
    fleet.cleanup().await;
}
