//! RabbitMQ-specific behaviour of `RabbitMqQueue`, beyond the conformance suite: what happens
//! when a node's connection goes away, when the broker drops a connection, when the queue is
//! deleted under a publisher, and when a message is not a job id. Each test has a queue of its
//! own on the real broker and disturbs nothing else.

mod support;

use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use runfleet_shared::ids::{JobId, NodeId};
use runfleet_shared::queue::{Delivery, JobQueue, RabbitMqQueue};

const SHORT: Duration = Duration::from_millis(200);

fn ids(names: &[&str]) -> Vec<JobId> {
    names.iter().map(|n| JobId::new(*n)).collect()
}

fn names(ds: &[Delivery]) -> Vec<String> {
    ds.iter().map(|d| d.job_id.to_string()).collect()
}

async fn teardown(q: RabbitMqQueue) {
    q.delete().await.expect("delete the test queue");
    q.close().await;
}

/// Polls the broker's depth until it is `n` (a closed connection's deliveries are requeued
/// asynchronously).
async fn wait_depth(q: &RabbitMqQueue, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let depth = q.depth().await.unwrap();
        if depth == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depth stays {depth}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_unacked_claims_come_back_without_a_recover_call() {
    let name = support::unique_queue_name();
    let node = support::rabbitmq_queue(&name).await;
    let other = support::rabbitmq_queue(&name).await;
    node.enqueue(&ids(&["a", "b", "c"])).await.unwrap();
    let dead = NodeId::new("dead");
    assert_eq!(
        names(&node.claim(&dead, 2, SHORT).await.unwrap()),
        ["a", "b"]
    );
    // The node's process dies: its connection closes and the broker requeues its deliveries,
    // at their original place.
    node.close().await;
    wait_depth(&other, 3).await;
    assert_eq!(
        other.recover(&dead).await.unwrap(),
        0,
        "nothing to recover from another process"
    );
    assert_eq!(
        names(&other.claim(&NodeId::new("alive"), 5, SHORT).await.unwrap()),
        ["a", "b", "c"]
    );
    teardown(other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_is_replaced_on_both_sides() {
    let name = support::unique_queue_name();
    let q = support::rabbitmq_queue(&name).await;
    q.enqueue(&ids(&["a", "b"])).await.unwrap();
    let n = NodeId::new("n1");
    let got = q.claim(&n, 1, SHORT).await.unwrap();
    assert_eq!(names(&got), ["a"]);

    // The broker drops this queue's connection (and only it).
    let listing = tokio::task::spawn_blocking(|| {
        support::rabbitmqctl(&["list_connections", "pid", "client_properties"])
    })
    .await
    .unwrap();
    let connection = format!("runfleet {name}");
    let pid = listing
        .lines()
        .find(|l| l.contains(&connection))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection named {connection} in:\n{listing}"))
        .to_owned();
    tokio::task::spawn_blocking(move || {
        support::rabbitmqctl(&["close_connection", &pid, "runfleet test"])
    })
    .await
    .unwrap();

    // The ack is lost with the connection, and says so; the broker has the job again.
    assert!(q.ack(&n, &got).await.is_err(), "a lost ack is an error");
    // The publisher reconnects: a start is confirmed again.
    q.enqueue(&ids(&["c"])).await.unwrap();
    // The consumer side too: the unacked job comes again, first in line.
    let got = q.claim(&n, 5, SHORT).await.unwrap();
    assert_eq!(names(&got), ["a", "b", "c"]);
    q.ack(&n, &got).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
    teardown(q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_declares_a_deleted_queue_again() {
    let name = support::unique_queue_name();
    let q = support::rabbitmq_queue(&name).await;
    q.delete().await.unwrap();
    // The first publish comes back unroutable; the queue is declared again and the retry is
    // confirmed.
    q.enqueue(&ids(&["a"])).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 1);
    teardown(q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_a_job_id_is_rejected_not_left_unacked() {
    let name = support::unique_queue_name();
    let q = support::rabbitmq_queue(&name).await;
    let raw = Connection::connect(&support::amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = raw.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            name.as_str().into(),
            BasicPublishOptions::default(),
            &[0xff, 0xfe],
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    q.enqueue(&ids(&["a"])).await.unwrap();

    let n = NodeId::new("n1");
    assert_eq!(names(&q.claim(&n, 5, SHORT).await.unwrap()), ["a"]);
    assert_eq!(q.recover(&n).await.unwrap(), 1, "only the job was held");
    assert_eq!(names(&q.claim(&n, 5, SHORT).await.unwrap()), ["a"]);
    assert_eq!(q.depth().await.unwrap(), 0, "the bad message is gone");
    let _ = raw.close(200, "done".into()).await;
    teardown(q).await;
}

#[test]
fn settings_are_checked_and_never_print_the_password() {
    let settings = runfleet_shared::config::RabbitMqSettings {
        url: "amqp://runfleet:hunter2@broker.internal:5672/%2f".into(),
        ..Default::default()
    };
    let printed = format!("{settings:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("broker.internal"), "{printed}");
    let queue = RabbitMqQueue::new(&settings, "jobs").unwrap();
    assert!(!format!("{queue:?}").contains("hunter2"));

    let bad_url = runfleet_shared::config::RabbitMqSettings {
        url: "http://nope".into(),
        ..Default::default()
    };
    let err = RabbitMqQueue::new(&bad_url, "jobs")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rabbitmq.url"), "{err}");
    let bad_backoff = runfleet_shared::config::RabbitMqSettings {
        reconnect_min_ms: 10_000,
        reconnect_max_ms: 100,
        ..Default::default()
    };
    let err = RabbitMqQueue::new(&bad_backoff, "jobs")
        .unwrap_err()
        .to_string();
    assert!(err.contains("rabbitmq.reconnect_min_ms"), "{err}");
}

/// `amqps://` speaks TLS (rustls with ring, see docs/architecture.md): against the broker's
/// plaintext port the handshake fails. A build without a TLS stack in lapin would quietly
/// connect in plaintext instead.
#[tokio::test]
async fn amqps_speaks_tls_and_never_falls_back_to_plaintext() {
    let plain = runfleet_shared::config::RabbitMqSettings::default();
    let tls = runfleet_shared::config::RabbitMqSettings {
        url: plain.url.replacen("amqp://", "amqps://", 1),
        connect_timeout_ms: 2_000,
        ..plain.clone()
    };
    let name = support::unique_queue_name();
    // The broker is up on the plaintext port: the same URL over amqp:// connects.
    let q = RabbitMqQueue::new(&plain, name.clone()).unwrap();
    q.connect().await.expect("the broker on 127.0.0.1:5672");
    teardown(q).await;
    let q = RabbitMqQueue::new(&tls, name).unwrap();
    let err = q
        .connect()
        .await
        .expect_err("a TLS client cannot talk to a plaintext port");
    println!("amqps:// against the plaintext port: {err}");
}
