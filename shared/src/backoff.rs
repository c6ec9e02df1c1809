//! Exponential backoff for retrying a failing call: the delay doubles with each failure, from a
//! minimum up to a maximum. One formula for every retry loop in the fleet.

use std::time::Duration;

/// The delay before retry number `attempt` (1 for the first retry): `min` doubled
/// `attempt - 1` times, at most `max`.
pub fn delay(min: Duration, max: Duration, attempt: u32) -> Duration {
    min.saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(max)
}

/// A retry loop's state: how many times in a row the call failed.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Delays from `min`, doubling, up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and sleeps for the next delay.
    pub async fn wait(&mut self) {
        self.failures += 1;
        tokio::time::sleep(delay(self.min, self.max, self.failures)).await;
    }

    /// The call succeeded: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        let ms = |a| delay(Duration::from_millis(100), Duration::from_secs(5), a).as_millis();
        let got: Vec<u128> = (1..=8).map(ms).collect();
        assert_eq!(got, [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        assert_eq!(ms(u32::MAX), 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_longer_after_each_failure_until_reset() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(25));
        let start = tokio::time::Instant::now();
        b.wait().await;
        b.wait().await;
        b.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(10 + 20 + 25));
        b.reset();
        let again = tokio::time::Instant::now();
        b.wait().await;
        assert_eq!(again.elapsed(), Duration::from_millis(10));
    }
}
