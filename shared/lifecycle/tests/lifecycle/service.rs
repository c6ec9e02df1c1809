//! ServiceRunner: lifecycle, idempotence, concurrency, uptime, error history, panics, parent
//! cancellation, stop deadline, stop function and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use runfleet_lifecycle::{
    BoxError, CancellationToken, Delivery, ErrorKind, EventBus, EventKind, LifecycleError, Runner,
    RunnerOptions, ServiceRunner,
};
use tokio::time::Instant;

use crate::common::{Liveness, eventually, next_event, stubborn, until_cancelled};

const STOP: Duration = Duration::from_secs(5);

#[tokio::test(start_paused = true)]
async fn start_stop_and_restart_are_idempotent() {
    let liveness = Liveness::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let probe = liveness.clone();
    let runner = ServiceRunner::new(RunnerOptions::new("svc"), move |token| {
        counted.fetch_add(1, Ordering::SeqCst);
        let guard = probe.enter();
        async move {
            token.cancelled().await;
            drop(guard);
            Ok::<(), BoxError>(())
        }
    });
    assert_eq!(runner.name(), "svc");
    assert!(!runner.is_running());
    runner.stop(STOP).await.unwrap(); // stopping a stopped runner is fine

    runner.start().await.unwrap();
    runner.start().await.unwrap(); // a second start does nothing
    assert!(runner.is_running());
    eventually(|| liveness.live() == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    runner.stop(STOP).await.unwrap();
    runner.stop(STOP).await.unwrap();
    assert!(!runner.is_running());
    assert_eq!(liveness.live(), 0, "stop waits for the work to end");

    runner.restart(STOP).await.unwrap(); // restart from stopped starts
    runner.restart(STOP).await.unwrap();
    assert!(runner.is_running());
    eventually(|| calls.load(Ordering::SeqCst) == 3).await;
    runner.stop(STOP).await.unwrap();
    assert_eq!(liveness.peak(), 1);
    assert!(runner.errors().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_tasks_hammering_transitions_leave_a_consistent_state() {
    let liveness = Liveness::default();
    let events = EventBus::new(4096);
    let mut subscription = events.subscribe();
    let runner = Arc::new(until_cancelled(
        RunnerOptions::new("hammered").events(events),
        &liveness,
    ));

    let tasks: Vec<_> = (0..100)
        .map(|task| {
            let runner = runner.clone();
            tokio::spawn(async move {
                for step in 0..10 {
                    match (task + step) % 3 {
                        0 => runner.start().await,
                        1 => runner.stop(STOP).await,
                        _ => runner.restart(STOP).await,
                    }
                    .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no task panicked");
    }

    runner.stop(STOP).await.unwrap();
    assert!(!runner.is_running());
    assert_eq!(runner.uptime(), Duration::ZERO);
    assert_eq!(liveness.live(), 0, "no run outlives the final stop");
    assert_eq!(liveness.peak(), 1, "never two runs at once");
    assert!(runner.errors().is_empty());

    let (mut ups, mut downs) = (0, 0);
    while let Some(delivery) = subscription.try_recv() {
        let Delivery::Event(event) = delivery else {
            panic!("missed events with a large bus");
        };
        match event.kind {
            EventKind::Started | EventKind::Restarted => ups += 1,
            EventKind::Stopped => downs += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ups > 0);
    assert_eq!(ups, downs, "every run that began was reported ended");

    runner.start().await.unwrap();
    eventually(|| liveness.live() == 1).await;
    runner.stop(STOP).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn uptime_follows_paused_time_and_resets_on_restart() {
    let runner = until_cancelled(RunnerOptions::new("uptime"), &Liveness::default());
    assert_eq!(runner.uptime(), Duration::ZERO);

    runner.start().await.unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(runner.uptime(), Duration::from_secs(5));

    runner.restart(STOP).await.unwrap();
    assert_eq!(runner.uptime(), Duration::ZERO);
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(runner.uptime(), Duration::from_millis(1500));

    runner.stop(STOP).await.unwrap();
    assert_eq!(runner.uptime(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_start_function_returning_ends_the_run() {
    let clean = ServiceRunner::new(RunnerOptions::new("one-shot"), |_token| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<(), BoxError>(())
    });
    clean.start().await.unwrap();
    eventually(|| !clean.is_running()).await;
    assert!(clean.errors().is_empty());

    #[derive(Debug, thiserror::Error)]
    #[error("consumer lost its connection")]
    struct Lost(#[source] std::io::Error);
    let failing = ServiceRunner::new(RunnerOptions::new("consumer"), |_token| async {
        Err(Lost(std::io::Error::other("connection reset")))
    });
    failing.start().await.unwrap(); // no readiness check: started once spawned
    eventually(|| !failing.is_running()).await;
    let error = failing.last_error().unwrap();
    assert_eq!(error.kind, ErrorKind::Failed);
    assert_eq!(
        error.message,
        "consumer lost its connection: connection reset"
    );
    failing.start().await.unwrap(); // a failed runner can be started again
    eventually(|| failing.errors().len() == 2).await;
}

#[tokio::test(start_paused = true)]
async fn error_history_is_bounded_ordered_and_timestamped() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let runner = ServiceRunner::new(
        RunnerOptions::new("flaky").history_capacity(3),
        move |_token| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), BoxError>(format!("run {run} failed").into()) }
        },
    );
    let before = std::time::SystemTime::now();
    for run in 1..=5 {
        runner.start().await.unwrap();
        eventually(|| runner.errors().total_recorded() == run).await;
    }
    let after = std::time::SystemTime::now();

    let history = runner.errors();
    assert_eq!(history.capacity(), 3);
    assert_eq!(history.len(), 3);
    let messages: Vec<_> = history.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["run 2 failed", "run 3 failed", "run 4 failed"]);
    assert!(history.iter().all(|r| r.kind == ErrorKind::Failed));
    assert!(history.iter().all(|r| before <= r.at && r.at <= after));
    let stamps: Vec<_> = history.iter().map(|r| r.at).collect();
    assert!(stamps.windows(2).all(|pair| pair[0] <= pair[1]));
    assert_eq!(runner.last_error().unwrap().message, "run 4 failed");
}

fn explode_later() -> Result<(), BoxError> {
    panic!("boom in the future")
}

#[tokio::test(start_paused = true)]
async fn panics_are_recorded_and_other_runners_go_on() {
    let bystander = until_cancelled(RunnerOptions::new("bystander"), &Liveness::default());
    bystander.start().await.unwrap();

    let in_future = ServiceRunner::new(RunnerOptions::new("async-panic"), |_token| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        explode_later()
    });
    let explode = Arc::new(AtomicBool::new(true));
    let in_call = ServiceRunner::new(RunnerOptions::new("sync-panic"), move |_token| {
        assert!(!explode.load(Ordering::SeqCst), "boom in the call");
        async { Ok::<(), BoxError>(()) }
    });
    in_future.start().await.unwrap();
    in_call.start().await.unwrap();
    eventually(|| !in_future.is_running() && !in_call.is_running()).await;

    let recorded = in_future.last_error().unwrap();
    assert_eq!(recorded.kind, ErrorKind::Panicked);
    assert_eq!(recorded.message, "boom in the future");
    let recorded = in_call.last_error().unwrap();
    assert_eq!(recorded.kind, ErrorKind::Panicked);
    assert!(
        recorded.message.contains("boom in the call"),
        "{recorded:?}"
    );

    assert!(bystander.is_running());
    bystander.stop(STOP).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_parent_token_stops_the_runner() {
    let parent = CancellationToken::new();
    let liveness = Liveness::default();
    let runner = until_cancelled(
        RunnerOptions::new("child").parent(parent.clone()),
        &liveness,
    );
    let mut subscription = runner.subscribe();
    runner.start().await.unwrap();
    assert_eq!(next_event(&mut subscription).await.kind, EventKind::Started);

    parent.cancel();
    assert_eq!(next_event(&mut subscription).await.kind, EventKind::Stopped);
    assert!(!runner.is_running());
    assert_eq!(liveness.live(), 0);

    assert_eq!(
        runner.start().await,
        Err(LifecycleError::ParentCancelled {
            name: "child".into()
        })
    );
    runner.stop(STOP).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_past_its_deadline_errs_promptly_and_aborts_the_work() {
    let liveness = Liveness::default();
    let runner = stubborn(RunnerOptions::new("stubborn"), &liveness);
    runner.start().await.unwrap();
    eventually(|| liveness.live() == 1).await;

    let asked = Instant::now();
    let deadline = Duration::from_millis(100);
    assert_eq!(
        runner.stop(deadline).await,
        Err(LifecycleError::StopTimeout {
            name: "stubborn".into(),
            after: deadline
        })
    );
    assert_eq!(asked.elapsed(), deadline, "stop returns at its deadline");
    assert!(!runner.is_running());
    assert_eq!(runner.last_error().unwrap().kind, ErrorKind::Stop);
    eventually(|| liveness.live() == 0).await; // the aborted task is gone, not leaked

    runner.start().await.unwrap(); // and the runner is usable again
    assert!(runner.is_running());
    assert!(runner.stop(deadline).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_stop_function_helps_shut_down_and_its_error_is_reported() {
    // A start function that ignores its token and ends when the stop function closes it.
    let closed = Arc::new(tokio::sync::Notify::new());
    let (wait, close) = (closed.clone(), closed);
    let runner = ServiceRunner::new(RunnerOptions::new("listener"), move |_token| {
        let wait = wait.clone();
        async move {
            wait.notified().await;
            Ok::<(), BoxError>(())
        }
    })
    .with_stop(move || {
        close.notify_one();
        async { Err::<(), BoxError>("listener closed uncleanly".into()) }
    });
    runner.start().await.unwrap();

    assert_eq!(
        runner.stop(STOP).await,
        Err(LifecycleError::StopFailed {
            name: "listener".into(),
            reason: "listener closed uncleanly".into()
        })
    );
    assert!(!runner.is_running(), "the work itself did stop");
    assert_eq!(runner.last_error().unwrap().kind, ErrorKind::Stop);
}

#[tokio::test(start_paused = true)]
async fn readiness_gates_start() {
    let ready = Arc::new(AtomicBool::new(false));
    let (set, probe) = (ready.clone(), ready);
    let runner = ServiceRunner::new(RunnerOptions::new("slow-boot"), move |token| {
        let set = set.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            set.store(true, Ordering::SeqCst);
            token.cancelled().await;
            Ok::<(), BoxError>(())
        }
    })
    .ready_when(
        Duration::from_millis(10),
        Duration::from_secs(1),
        move || {
            let ready = probe.load(Ordering::SeqCst);
            async move { ready }
        },
    );
    let mut subscription = runner.subscribe();

    let asked = Instant::now();
    runner.start().await.unwrap();
    assert_eq!(
        asked.elapsed(),
        Duration::from_millis(30),
        "checks at 0, 10, 20, 30 ms"
    );
    assert!(runner.is_running());
    assert_eq!(next_event(&mut subscription).await.kind, EventKind::Started);
    runner.stop(STOP).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn start_fails_when_the_work_ends_during_readiness() {
    let runner = ServiceRunner::new(RunnerOptions::new("no-port"), |_token| async {
        tokio::time::sleep(Duration::from_millis(15)).await;
        Err::<(), BoxError>("address in use".into())
    })
    .ready_when(
        Duration::from_millis(10),
        Duration::from_secs(1),
        || async { false },
    );
    let mut subscription = runner.subscribe();

    let asked = Instant::now();
    assert_eq!(
        runner.start().await,
        Err(LifecycleError::StartFailed {
            name: "no-port".into(),
            reason: "address in use".into()
        })
    );
    assert_eq!(asked.elapsed(), Duration::from_millis(15));
    assert!(!runner.is_running());
    assert_eq!(runner.last_error().unwrap().kind, ErrorKind::Failed);
    let event = next_event(&mut subscription).await;
    assert_eq!(
        event.kind,
        EventKind::Failed {
            message: "address in use".into()
        },
        "a failed start publishes Failed, never Started"
    );
}

#[tokio::test(start_paused = true)]
async fn start_fails_and_cancels_the_work_when_never_ready() {
    let liveness = Liveness::default();
    let runner = until_cancelled(RunnerOptions::new("never-ready"), &liveness).ready_when(
        Duration::from_millis(10),
        Duration::from_millis(50),
        || async { false },
    );

    let asked = Instant::now();
    let Err(LifecycleError::StartFailed { name, reason }) = runner.start().await else {
        panic!("start should fail");
    };
    assert_eq!(asked.elapsed(), Duration::from_millis(50));
    assert_eq!(name, "never-ready");
    assert!(reason.contains("not ready"), "{reason}");
    assert!(!runner.is_running());
    assert_eq!(runner.last_error().unwrap().kind, ErrorKind::Start);
    eventually(|| liveness.live() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_runner_cancels_its_work() {
    let liveness = Liveness::default();
    let runner = until_cancelled(RunnerOptions::new("dropped"), &liveness);
    runner.start().await.unwrap();
    eventually(|| liveness.live() == 1).await;
    drop(runner);
    eventually(|| liveness.live() == 0).await;
}

#[tokio::test(start_paused = true)]
async fn dropping_a_start_during_readiness_cancels_its_run() {
    let liveness = Liveness::default();
    let runner = until_cancelled(RunnerOptions::new("abandoned"), &liveness).ready_when(
        Duration::from_millis(10),
        Duration::from_secs(1),
        || async { false },
    );
    let abandoned = tokio::time::timeout(Duration::from_millis(20), runner.start()).await;
    assert!(
        abandoned.is_err(),
        "the start was still in its readiness phase"
    );
    eventually(|| liveness.live() == 0 && !runner.is_running()).await;
}

#[tokio::test(start_paused = true)]
async fn ended_resolves_when_the_work_ends_on_its_own_or_is_stopped() {
    let runner = ServiceRunner::new(RunnerOptions::new("short-lived"), |_token| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Err::<(), _>("gave up")
    });
    runner.ended().await; // not running yet: resolves at once
    runner.start().await.unwrap();
    let started = Instant::now();
    runner.ended().await;
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "resolved when the work ended"
    );
    assert!(!runner.is_running());
    assert_eq!(runner.last_error().unwrap().message, "gave up");

    let forever = until_cancelled(RunnerOptions::new("forever"), &Liveness::default());
    forever.start().await.unwrap();
    let ended = forever.ended();
    forever.stop(Duration::from_secs(1)).await.unwrap();
    tokio::time::timeout(Duration::from_millis(1), ended)
        .await
        .expect("a stop ends the run");
}
