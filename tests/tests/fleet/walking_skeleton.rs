//! Issue 2's scenario: two orchestrators and two worker nodes on one Redis. Runners started
//! through one orchestrator are seen running (spread over both nodes, positions and stats
//! moving) through the other, and stopped through it; nothing is left in the queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use runfleet_client::api::RunnerView;
use runfleet_client::{JobId, JobStatus, StopMode, StopOutcome, Tier, UserId};
use runfleet_tests::{Api, Fleet, eventually, start_spec};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_started_on_one_orchestrator_are_seen_and_stopped_through_another() {
    on_fleet(Fleet::new("skeleton")).await;
}

/// The scenario with its processes (2 orchestrators, 2 nodes) on `fleet`.
pub(crate) async fn on_fleet(fleet: Fleet) {
    fleet.cleanup().await;
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let _n1 = fleet.worker("worker-1", 3);
    let _n2 = fleet.worker("worker-2", 3);
    scenario(&api_a, &api_b).await;
    assert_eq!(
        fleet.queue_lengths().await,
        (0, 0),
        "queue and processing lists are empty"
    );
    fleet.cleanup().await;
}

/// The scenario on a running fleet of two orchestrators (`api_a`, `api_b`) and two nodes of
/// capacity 3 (also run over TLS with ACL users, tls.rs). It drives the API through
/// `runfleet-client`, so what it reads is the server's own answer types.
pub async fn scenario(api_a: &Api, api_b: &Api) {
    let (a, b) = (api_a.client(), api_b.client());
    // Two runners per user needs more than the free tier's one.
    for user in USERS {
        let granted = a
            .set_entitlement(&UserId::new(user), Tier::Basic, 30)
            .await
            .expect("entitlement granted");
        assert_eq!(granted.max_workers, 3);
    }
    let mut jobs: HashSet<JobId> = HashSet::new();
    for user in USERS {
        for strategy in ["s1", "s2"] {
            let accepted = a
                .start(&start_spec(user, strategy))
                .await
                .expect("start accepted");
            jobs.insert(accepted.job_id);
        }
    }
    assert_eq!(jobs.len(), 6);

    let all_runners = || async {
        let mut all = Vec::new();
        for user in USERS {
            let s = b.user_runners(&UserId::new(user)).await.expect("status");
            all.push((s.queue_stats, s.workers));
        }
        all
    };

    // Through B: all six running, over both nodes, with heartbeats landing.
    let first: Vec<RunnerView<'static>> =
        eventually(Duration::from_secs(20), "all 6 runners running", || async {
            let all = all_runners().await;
            all.iter()
                .all(|(counts, _)| counts.running_workers == 2)
                .then(|| all.into_iter().flat_map(|(_, w)| w).collect())
        })
        .await;
    let nodes: HashSet<_> = first
        .iter()
        .filter_map(|w| w.record().node_id.clone())
        .collect();
    assert_eq!(nodes.len(), 2, "runners spread over both nodes: {nodes:?}");

    // Positions and stats move: every runner's heartbeat advances, and trading happens.
    let before: HashMap<JobId, u64> = first
        .iter()
        .map(|w| {
            let r = w.record();
            (r.job_id.clone(), r.last_heartbeat_at.unwrap_or(0))
        })
        .collect();
    let moved: Vec<RunnerView<'static>> = eventually(
        Duration::from_secs(20),
        "heartbeats advance and trades happen",
        || async {
            let all: Vec<RunnerView<'static>> = all_runners()
                .await
                .into_iter()
                .flat_map(|(_, w)| w)
                .collect();
            let advanced = all.iter().all(|w| {
                let r = w.record();
                r.last_heartbeat_at.unwrap_or(0) > before[&r.job_id]
            });
            let traded = all
                .iter()
                .filter(|w| w.record().stats.total_trades > 0)
                .count();
            (advanced && traded == all.len()).then_some(all)
        },
    )
    .await;
    assert_eq!(moved.len(), 6);
    let with_positions = moved
        .iter()
        .filter(|w| !w.record().positions.is_empty())
        .count();
    println!("runners with open positions before stop: {with_positions}/6");

    // Stop all through B, flattening.
    let mut flattened_total = 0;
    for job in &jobs {
        let outcome = b.stop(job, StopMode::Flatten).await.expect("stop");
        let StopOutcome::Stopped(stopped) = outcome else {
            panic!("{job} stopped within the server's wait: {outcome:?}")
        };
        assert_eq!(stopped.status, JobStatus::Stopped, "{stopped:?}");
        assert!(
            stopped.positions.is_empty(),
            "flatten leaves nothing open: {stopped:?}"
        );
        flattened_total += stopped.flattened_positions;
    }
    println!("positions flattened at stop: {flattened_total}");

    for user in USERS {
        let user = UserId::new(user);
        let s = a.user_runners(&user).await.expect("status");
        for w in &s.workers {
            assert_eq!(w.record().status, JobStatus::Stopped, "{w:?}");
        }
        assert_eq!(s.queue_stats.running_workers, 0);
        let ent = a.entitlement(&user).await.expect("entitlement");
        assert_eq!(ent.current_workers, 0, "slots freed: {ent:?}");
    }
}
