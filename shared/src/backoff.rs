//! Exponential backoff with jitter for retrying a failing call: one policy for every retry loop
//! in the fleet, built on `backon`'s [`ExponentialBuilder`].
//!
//! The base delay doubles with each failure in a row, from a minimum up to a maximum; each
//! delay adds a random jitter of up to the base (so a delay lies in `[base, 2 × base)`). The
//! jitter is what matters after an outage: every node saw the same failures at the same
//! moments, and without it they would all retry in lockstep and hit the recovering service
//! together. A success resets the sequence to the minimum.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A retry loop's state: the delays still to come, restarted by [`reset`](Self::reset).
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max` (before jitter).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::from_builder(Self::builder(min, max), max)
    }

    /// The same sequence with the jitter drawn from `seed`: for tests.
    pub fn seeded(min: Duration, max: Duration, seed: u64) -> Self {
        Self::from_builder(Self::builder(min, max).with_jitter_seed(seed), max)
    }

    fn builder(min: Duration, max: Duration) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max.max(min))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
    }

    fn from_builder(builder: ExponentialBuilder, max: Duration) -> Self {
        Self {
            delays: builder.build(),
            builder,
            max,
        }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // The sequence is endless (`without_max_times`); the fallback is never used.
        self.delays.next().unwrap_or(self.max)
    }

    /// Counts a failure and sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// The call succeeded: the next failure waits about the minimum again.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_double_up_to_the_cap_plus_at_most_their_own_jitter() {
        let mut b = Backoff::new(MIN, MAX);
        let bases = [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000];
        for base in bases {
            let base = Duration::from_millis(base);
            let d = b.next_delay();
            assert!(
                d >= base && d < 2 * base,
                "{d:?} outside [{base:?}, 2 × {base:?})"
            );
        }
    }

    #[test]
    fn nodes_that_failed_together_do_not_retry_in_lockstep() {
        let schedule = |seed| {
            let mut b = Backoff::seeded(MIN, MAX, seed);
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let schedules: Vec<_> = (1..=4).map(schedule).collect();
        for (i, a) in schedules.iter().enumerate() {
            for b in &schedules[i + 1..] {
                assert_ne!(a, b, "two nodes would retry at the same moments");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_longer_after_each_failure_until_reset() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(25));
        let mut b = Backoff::seeded(min, max, 7);
        let mut expected = Backoff::seeded(min, max, 7);
        let start = tokio::time::Instant::now();
        b.wait().await;
        b.wait().await;
        b.wait().await;
        let slept: Duration = (0..3).map(|_| expected.next_delay()).sum();
        // The paused clock jumps to each timer's deadline, rounded up to the millisecond.
        let elapsed = start.elapsed();
        assert!(elapsed >= slept && elapsed <= slept + Duration::from_millis(3));
        // Bases 10 + 20 + 25 ms, each with up to its own size of jitter.
        assert!(slept >= Duration::from_millis(55) && slept < Duration::from_millis(110));
        b.reset();
        let again = tokio::time::Instant::now();
        b.wait().await;
        let first = again.elapsed();
        assert!(first >= min && first <= 2 * min, "after reset: {first:?}");
    }
}
