//! Ticker: cadence, minimum interval, failing and panicking ticks, skipping overlapping ticks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runfleet_lifecycle::{BoxError, ErrorKind, LifecycleError, Runner, RunnerOptions, Ticker};
use tokio::time::{Instant, sleep};

const STOP: Duration = Duration::from_secs(5);

fn counting_ticker(interval: Duration, count: &Arc<AtomicUsize>) -> Ticker {
    let count = count.clone();
    Ticker::new(RunnerOptions::new("counter"), interval, move |_token| {
        count.fetch_add(1, Ordering::SeqCst);
        async { Ok::<(), BoxError>(()) }
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn ticks_every_interval_from_one_interval_after_start() {
    let count = Arc::new(AtomicUsize::new(0));
    let ticker = counting_ticker(Duration::from_millis(10), &count);
    assert_eq!(ticker.interval(), Duration::from_millis(10));

    ticker.start().await.unwrap();
    sleep(Duration::from_millis(5)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "no tick at start");
    sleep(Duration::from_millis(50)).await;
    assert_eq!(count.load(Ordering::SeqCst), 5, "ticks at 10..=50 ms");

    ticker.stop(STOP).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 5, "no tick after stop");
    assert!(ticker.errors().is_empty());
}

#[test]
fn intervals_below_one_millisecond_are_rejected() {
    for interval in [Duration::ZERO, Duration::from_micros(999)] {
        let rejected = Ticker::new(RunnerOptions::new("too-fast"), interval, |_token| async {
            Ok::<(), BoxError>(())
        });
        assert_eq!(
            rejected.unwrap_err(),
            LifecycleError::IntervalTooShort {
                name: "too-fast".into(),
                interval,
                min: Ticker::MIN_INTERVAL
            }
        );
    }
    let count = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        counting_ticker(Ticker::MIN_INTERVAL, &count).interval(),
        Duration::from_millis(1)
    );
}

#[tokio::test(start_paused = true)]
async fn failing_and_panicking_ticks_are_recorded_and_ticking_goes_on() {
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let ticker = Ticker::new(
        RunnerOptions::new("flaky"),
        Duration::from_millis(10),
        move |_token| {
            let tick = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match tick % 3 {
                    1 => Err::<(), BoxError>(format!("tick {tick} failed").into()),
                    2 => panic!("tick {tick} panicked"),
                    _ => Ok(()),
                }
            }
        },
    )
    .unwrap();

    ticker.start().await.unwrap();
    sleep(Duration::from_millis(65)).await;
    assert_eq!(count.load(Ordering::SeqCst), 6);
    assert!(ticker.is_running());

    let recorded: Vec<_> = ticker
        .errors()
        .iter()
        .map(|r| (r.kind, r.message.clone()))
        .collect();
    assert_eq!(
        recorded,
        [
            (ErrorKind::Tick, "tick 1 failed".to_owned()),
            (ErrorKind::Panicked, "tick 2 panicked".to_owned()),
            (ErrorKind::Tick, "tick 4 failed".to_owned()),
            (ErrorKind::Panicked, "tick 5 panicked".to_owned()),
        ]
    );
    ticker.stop(STOP).await.unwrap();
}

/// Starts of 25 ms ticks on a 10 ms ticker over 95 ms, in ms since start.
async fn slow_tick_starts(skip_overlapping: bool) -> Vec<u128> {
    let origin = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let recorder = starts.clone();
    let ticker = Ticker::new(
        RunnerOptions::new("slow"),
        Duration::from_millis(10),
        move |_token| {
            recorder.lock().unwrap().push(origin.elapsed().as_millis());
            async {
                sleep(Duration::from_millis(25)).await;
                Ok::<(), BoxError>(())
            }
        },
    )
    .unwrap()
    .skip_overlapping(skip_overlapping);

    ticker.start().await.unwrap();
    sleep(Duration::from_millis(95)).await;
    ticker.stop(STOP).await.unwrap();
    starts.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn overlapping_ticks_run_late_by_default() {
    assert_eq!(slow_tick_starts(false).await, [10, 35, 60, 85]);
}

#[tokio::test(start_paused = true)]
async fn overlapping_ticks_are_skipped_when_asked() {
    assert_eq!(slow_tick_starts(true).await, [10, 40, 70]);
}

#[tokio::test(start_paused = true)]
async fn stop_lets_an_ongoing_tick_finish() {
    let finished = Arc::new(AtomicUsize::new(0));
    let counter = finished.clone();
    let ticker = Ticker::new(
        RunnerOptions::new("graceful"),
        Duration::from_millis(10),
        move |_token| {
            let counter = counter.clone();
            async move {
                sleep(Duration::from_millis(30)).await;
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<(), BoxError>(())
            }
        },
    )
    .unwrap();
    ticker.start().await.unwrap();
    sleep(Duration::from_millis(15)).await; // first tick under way since 10 ms

    let asked = Instant::now();
    ticker.stop(STOP).await.unwrap();
    assert_eq!(asked.elapsed(), Duration::from_millis(25));
    assert_eq!(finished.load(Ordering::SeqCst), 1);
}
