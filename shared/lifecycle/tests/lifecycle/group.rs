//! RunnerGroup: booting together, rolling back a failed boot, shutting down under one deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use runfleet_lifecycle::{
    BoxError, EventBus, EventKind, LifecycleError, Runner, RunnerGroup, RunnerOptions,
    ServiceRunner, StopOutcome, Ticker,
};
use tokio::time::{Instant, sleep};

use crate::common::{Liveness, next_event, stubborn, until_cancelled};

#[tokio::test(start_paused = true)]
async fn starts_and_stops_runners_of_every_kind_together() {
    let liveness = Liveness::default();
    let ticks = Arc::new(AtomicUsize::new(0));
    let counter = ticks.clone();
    let ticker = Arc::new(
        Ticker::new(
            RunnerOptions::new("ticker"),
            Duration::from_millis(10),
            move |_token| {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), BoxError>(()) }
            },
        )
        .unwrap(),
    );
    let service = Arc::new(until_cancelled(RunnerOptions::new("service"), &liveness));

    let mut group = RunnerGroup::default();
    assert!(group.is_empty());
    group.register(ticker.clone()).unwrap();
    group.register(service.clone()).unwrap();
    assert_eq!(group.len(), 2);
    assert_eq!(group.get("service").unwrap().name(), "service");
    assert!(group.get("missing").is_none());
    let names: Vec<_> = group.runners().map(|r| r.name().to_owned()).collect();
    assert_eq!(names, ["ticker", "service"]);

    group.start_all().await.unwrap();
    assert!(ticker.is_running() && service.is_running());
    sleep(Duration::from_millis(35)).await;
    assert_eq!(ticks.load(Ordering::SeqCst), 3);

    let report = group.stop_all(Duration::from_secs(1)).await;
    assert!(report.is_ok());
    assert_eq!(report.failures().count(), 0);
    assert_eq!(
        report.outcomes,
        [
            StopOutcome {
                name: "ticker".into(),
                result: Ok(())
            },
            StopOutcome {
                name: "service".into(),
                result: Ok(())
            },
        ]
    );
    assert!(group.runners().all(|r| !r.is_running()));
    assert_eq!(liveness.live(), 0);
}

#[tokio::test]
async fn names_are_unique() {
    let mut group = RunnerGroup::new();
    let liveness = Liveness::default();
    group
        .register(Arc::new(until_cancelled(
            RunnerOptions::new("a"),
            &liveness,
        )))
        .unwrap();
    let duplicate = group.register(Arc::new(until_cancelled(
        RunnerOptions::new("a"),
        &liveness,
    )));
    assert_eq!(
        duplicate,
        Err(LifecycleError::DuplicateName { name: "a".into() })
    );
    assert_eq!(group.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_stops_the_runners_already_started() {
    let events = EventBus::default();
    let liveness = Liveness::default();
    let options = |name: &str| RunnerOptions::new(name).events(events.clone());
    let first = Arc::new(until_cancelled(options("first"), &liveness));
    let broken = Arc::new(
        ServiceRunner::new(options("broken"), |_token| async {
            sleep(Duration::from_millis(20)).await;
            Err::<(), BoxError>("cannot reach the broker".into())
        })
        .ready_when(Duration::from_millis(5), Duration::from_secs(1), || async {
            false
        }),
    );
    let last = Arc::new(until_cancelled(options("last"), &liveness));
    let mut group = RunnerGroup::new().with_rollback_timeout(Duration::from_secs(1));
    for runner in [first.clone(), broken, last.clone()] {
        group.register(runner).unwrap();
    }
    let mut first_events = first.subscribe();

    assert_eq!(
        group.start_all().await,
        Err(LifecycleError::StartFailed {
            name: "broken".into(),
            reason: "cannot reach the broker".into()
        })
    );
    assert!(group.runners().all(|r| !r.is_running()));
    assert_eq!(liveness.live(), 0, "started runners were stopped again");

    // The bus is shared: keep only `first`'s events.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = next_event(&mut first_events).await;
        if &*event.runner == "first" {
            seen.push(event.kind);
        }
    }
    assert_eq!(seen, [EventKind::Started, EventKind::Stopped]);
}

#[tokio::test(start_paused = true)]
async fn stop_all_reports_each_runner_under_one_deadline() {
    let liveness = Liveness::default();
    let mut group = RunnerGroup::new();
    group
        .register(Arc::new(until_cancelled(
            RunnerOptions::new("polite"),
            &liveness,
        )))
        .unwrap();
    group
        .register(Arc::new(stubborn(RunnerOptions::new("stuck-1"), &liveness)))
        .unwrap();
    group
        .register(Arc::new(stubborn(RunnerOptions::new("stuck-2"), &liveness)))
        .unwrap();
    group.start_all().await.unwrap();

    let deadline = Duration::from_millis(200);
    let asked = Instant::now();
    let report = group.stop_all(deadline).await;
    assert_eq!(
        asked.elapsed(),
        deadline,
        "one deadline for all, not one each"
    );

    assert!(!report.is_ok());
    let timeout = |name: &str| LifecycleError::StopTimeout {
        name: name.into(),
        after: deadline,
    };
    assert_eq!(
        report.outcomes,
        [
            StopOutcome {
                name: "polite".into(),
                result: Ok(())
            },
            StopOutcome {
                name: "stuck-1".into(),
                result: Err(timeout("stuck-1"))
            },
            StopOutcome {
                name: "stuck-2".into(),
                result: Err(timeout("stuck-2"))
            },
        ]
    );
    let failed: Vec<_> = report.failures().map(|o| o.name.as_str()).collect();
    assert_eq!(failed, ["stuck-1", "stuck-2"]);
    assert!(group.runners().all(|r| !r.is_running()));
}
