//! Lifecycle events: what subscribers see, and that slow subscribers hold nobody up.

use std::time::{Duration, SystemTime};

use runfleet_lifecycle::{
    BoxError, Delivery, EventBus, EventKind, Runner, RunnerOptions, ServiceRunner,
};
use tokio::time::Instant;

use crate::common::{Liveness, next_event, until_cancelled};

const STOP: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_transition_in_order() {
    let events = EventBus::default();
    let mut first = events.subscribe();
    let mut second = events.subscribe();
    let before = SystemTime::now();

    let service = until_cancelled(
        RunnerOptions::new("svc").events(events.clone()),
        &Liveness::default(),
    );
    service.start().await.unwrap();
    service.restart(STOP).await.unwrap();
    service.stop(STOP).await.unwrap();

    let failing = ServiceRunner::new(
        RunnerOptions::new("failing").events(events.clone()),
        |_token| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err::<(), BoxError>("first failure".into())
        },
    );
    failing.start().await.unwrap();

    let expected = [
        ("svc", EventKind::Started),
        ("svc", EventKind::Stopped),
        ("svc", EventKind::Restarted),
        ("svc", EventKind::Stopped),
        ("failing", EventKind::Started),
        (
            "failing",
            EventKind::Failed {
                message: "first failure".into(),
            },
        ),
    ];
    for subscription in [&mut first, &mut second] {
        for (runner, kind) in &expected {
            let event = next_event(subscription).await;
            assert_eq!((&*event.runner, &event.kind), (*runner, kind));
            assert!(event.at >= before);
        }
    }

    let boom = ServiceRunner::new(
        RunnerOptions::new("boom").events(events.clone()),
        |_token| async { Err::<(), BoxError>(explode()) },
    );
    boom.start().await.unwrap();
    assert_eq!(next_event(&mut first).await.kind, EventKind::Started);
    assert_eq!(
        next_event(&mut first).await.kind,
        EventKind::Panicked {
            message: "kaboom".into()
        }
    );
}

fn explode() -> BoxError {
    panic!("kaboom")
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_misses_events_and_is_told_how_many() {
    let events = EventBus::new(4);
    let mut slow = events.subscribe();
    let mut fast = events.subscribe();
    let runner = until_cancelled(
        RunnerOptions::new("busy").events(events.clone()),
        &Liveness::default(),
    );

    let began = Instant::now();
    let mut fast_seen = 0;
    for _ in 0..10 {
        runner.start().await.unwrap();
        runner.stop(STOP).await.unwrap();
        while let Some(Delivery::Event(_)) = fast.try_recv() {
            fast_seen += 1;
        }
    }
    assert_eq!(began.elapsed(), Duration::ZERO, "publishing never waited");
    assert_eq!(fast_seen, 20, "a subscriber keeping up misses nothing");

    assert_eq!(slow.recv().await, Some(Delivery::Missed(16)));
    let mut kept = Vec::new();
    while let Some(Delivery::Event(event)) = slow.try_recv() {
        kept.push(event.kind);
    }
    assert_eq!(
        kept,
        [
            EventKind::Started,
            EventKind::Stopped,
            EventKind::Started,
            EventKind::Stopped
        ]
    );
}
