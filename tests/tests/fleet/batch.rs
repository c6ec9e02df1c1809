//! Issue 15's bulk start, `POST /v1/runners/batch`, with the real binaries: each runner of a
//! batch is admitted or refused on its own (tier limits hold inside one batch), every admitted
//! one runs, on the Redis-list queue and on RabbitMQ; and an orchestrator killed with SIGKILL
//! in the middle of a large batch strands no slot (every job holding one runs).

use std::time::Duration;

use runfleet_client::api::BatchItem;
use runfleet_tests::{Api, Fleet, eventually, start_request, start_spec};
use serde_json::{Value, json};

use crate::rabbitmq::{amqp_url, broker_queue};

/// The fleet-wide counts the admin sees: (slots held, running).
async fn load(api: &Api) -> (u64, u64) {
    let q = api
        .client()
        .fleet_status()
        .await
        .expect("fleet status")
        .queue_stats;
    (q.total_workers, q.running_workers)
}

/// 20 free users, two runners each, in one batch: one of each pair is admitted (the tier
/// holds inside the batch), the other refused with the single start's answer; all admitted
/// run. Then a 300-runner batch of pro users is cut short by SIGKILL: afterwards every job
/// holding a slot runs (nothing stranded between admission and queue).
async fn batch_scenario(mut fleet: Fleet, rabbit: bool) {
    fleet.set("RUNFLEET__MARKET__TICK_MS", "500");
    if rabbit {
        let queue = format!("{}-jobs", fleet.prefix);
        fleet
            .set("RUNFLEET__QUEUE__BACKEND", "rabbitmq")
            .set("RUNFLEET__QUEUE__NAME", queue)
            .set("RUNFLEET__RABBITMQ__URL", amqp_url())
            .set("RUNFLEET__SWEEP__REQUEUE_AFTER_MS", "1000");
    }
    fleet.cleanup().await;
    let _broker = match rabbit {
        true => Some(broker_queue(&format!("{}-jobs", fleet.prefix)).await),
        false => None,
    };
    let (_steady, api) = fleet.orchestrator("orchestrator").await;
    let _worker = fleet.worker("worker", 400);

    let runners: Vec<_> = (0..40)
        .map(|i| start_spec(&format!("free{}", i / 2), "s1"))
        .collect();
    let answer = api
        .client()
        .start_batch(&runners)
        .await
        .expect("the batch answered");
    assert_eq!((answer.accepted, answer.refused), (20, 20));
    for (i, r) in answer.results.iter().enumerate() {
        match r {
            BatchItem::Accepted {
                index, http_status, ..
            } => assert_eq!((i % 2, *index, *http_status), (0, i, 202), "{r:?}"),
            BatchItem::Refused {
                answer,
                index,
                http_status,
            } => {
                assert_eq!((i % 2, *index, *http_status), (1, i, 403), "{r:?}");
                assert_eq!(answer.error.code, "runner_limit_reached", "{r:?}");
            }
        }
    }
    eventually(
        Duration::from_secs(30),
        "the 20 admitted runners running",
        || async { (load(&api).await == (20, 20)).then_some(()) },
    )
    .await;

    // A large batch, and its orchestrator killed in the middle of it.
    for i in 0..30 {
        api.grant(&format!("pro{i}"), "pro").await;
    }
    let (victim, doomed) = fleet.orchestrator("victim").await;
    let runners: Vec<Value> = (0..300)
        .map(|i| start_request(&format!("pro{}", i % 30), "s1"))
        .collect();
    let send = tokio::spawn(async move {
        doomed
            .try_post("/v1/runners/batch", &json!({ "runners": runners }))
            .await
    });
    // Killed as soon as its admissions show in Redis: between the admissions and the answer
    // (and, on RabbitMQ, the publishes).
    let mut redis = fleet.redis().await;
    let active = format!("{}:active", fleet.prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = redis::cmd("SCARD")
            .arg(&active)
            .query_async(&mut redis)
            .await
            .unwrap();
        if n > 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    victim.signal("KILL");
    let answered = send.await.unwrap().ok().map(|(code, _)| code);
    let (held, running) = eventually(
        Duration::from_secs(60),
        "every job holding a slot runs",
        || async {
            let (held, running) = load(&api).await;
            (held == running).then_some((held, running))
        },
    )
    .await;
    assert!(
        (21..=320).contains(&held),
        "some of the batch was admitted: {held}"
    );
    println!(
        "batch ({}): 20 of 40 admitted, 20 refused by the tier; SIGKILL mid 300-runner batch (answer {answered:?}): {} admitted, all {running} running, 0 stranded",
        if rabbit { "rabbitmq" } else { "redis" },
        held - 20,
    );
    fleet.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_start_admits_each_runner_on_its_own_and_strands_nothing_redis() {
    batch_scenario(Fleet::new("batch-redis"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_start_admits_each_runner_on_its_own_and_strands_nothing_rabbitmq() {
    batch_scenario(Fleet::new("batch-amqp"), true).await;
}
