//! Issue 16: a fleet whose state is split into 16 shards (`redis.shards`), each under a hash
//! tag of its own, on the test Redis Cluster (3 masters, 3 replicas): users, their jobs and
//! their keys spread over the cluster's masters while every atomic step stays in one slot. The
//! main whole-fleet scenarios run here unchanged, and the failover test kills the master of one
//! shard five times.

use std::time::Duration;

use runfleet_tests::{Fleet, PrivateCluster, eventually};

/// Shards of these fleets.
const SHARDS: u32 = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_skeleton_scenario_runs_on_a_sharded_fleet() {
    crate::walking_skeleton::on_fleet(Fleet::sharded_on_cluster("sh-skeleton", SHARDS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_on_a_sharded_fleet_never_exceed_a_limit() {
    crate::security::concurrent_starts_on(Fleet::sharded_on_cluster("sh-concurrent", SHARDS), 2)
        .await;
}

/// RabbitMQ carries the jobs, the sharded cluster holds the state.
#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rabbitmq_backend_runs_with_its_state_sharded() {
    crate::rabbitmq::skeleton_on(Fleet::sharded_on_cluster("sh-rabbitmq", SHARDS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_on_a_sharded_fleet_loses_no_runner() {
    crate::reliability::kill_9_on(Fleet::sharded_on_cluster("sh-kill9", SHARDS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_a_sharded_fleet_hands_its_runners_back_on_sigterm() {
    crate::shutdown::hand_back_on_sigterm_on(Fleet::sharded_on_cluster("sh-sigterm", SHARDS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_failovers_of_a_sharded_fleet_keep_every_runner_running_once() {
    let _heavy = runfleet_tests::heavy().await;
    let cluster = PrivateCluster::start("sh-failover");
    let fleet = Fleet::sharded_on("sh-failover", &cluster.urls(), SHARDS);
    crate::cluster::failovers_on(&cluster, fleet, 5).await;
}

/// Every slot of the master holding shard 0 (and others with it) moves to another master while
/// the sharded fleet runs: no error the user sees, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_a_sharded_fleet_while_it_runs_shows_no_error_and_loses_nothing() {
    let _heavy = runfleet_tests::heavy().await;
    let cluster = PrivateCluster::start("sh-reshard");
    let fleet = Fleet::sharded_on("sh-reshard", &cluster.urls(), SHARDS);
    crate::cluster::reshard_on(&cluster, fleet).await;
}

/// The shard count is fixed when the fleet's state is created: a process configured with
/// another one refuses to start, naming the setting, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_another_shard_count_refuses_to_start() {
    let mut fleet = Fleet::sharded_on_cluster("sh-count", SHARDS);
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let (code, body) = api.get("/v1/users/u/runners").await;
    assert_eq!(code, 200, "{body}");
    fleet.set("RUNFLEET__REDIS__SHARDS", "8");
    let mut other = fleet.worker("worker", 2);
    let status = other
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the node exits");
    assert!(!status.success());
    let out = other.output();
    assert!(
        out.contains("redis.shards") && out.contains("16 shard(s)"),
        "the message names the setting and the recorded count: {out}"
    );
    // The fleet goes on as it was.
    eventually(
        Duration::from_secs(5),
        "the orchestrator answers",
        || async { (api.get("/v1/users/u/runners").await.0 == 200).then_some(()) },
    )
    .await;
    fleet.cleanup().await;
}
