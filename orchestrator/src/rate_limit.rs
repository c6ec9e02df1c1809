//! Per-key rate limits: a GCRA limiter (the `governor` crate) per kind of call, keyed by the
//! authenticated key's public id, never by the client's address. Checked in the [`Caller`]
//! extractor right after the key is verified, so a refused call reaches no handler and writes
//! nothing. The admin key is not limited.
//!
//! The limiters live in this process: behind a balancer spreading one key over N orchestrators,
//! a key gets up to N times the configured rate (docs/api.md).
//!
//! [`Caller`]: crate::auth::Caller

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::Method;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use runfleet_shared::config::RateLimitSettings;

use crate::auth::Caller;
use crate::error::ApiError;

/// Keys tracked before idle ones are forgotten (a key whose bucket is full again loses nothing).
const FORGET_IDLE_ABOVE: usize = 10_000;

/// What kind of call a request is, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallClass {
    /// A runner start.
    Start,
    /// A runner stop.
    Stop,
    /// Anything else.
    Read,
}

impl CallClass {
    /// The class of `method path`.
    pub fn of(method: &Method, path: &str) -> Self {
        match (method, path) {
            (&Method::POST, "/v1/runners" | "/v1/runners/batch" | "/runner/start") => {
                CallClass::Start
            }
            (&Method::POST, p) if p.ends_with("/stop") => CallClass::Stop,
            _ => CallClass::Read,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CallClass::Start => "start",
            CallClass::Stop => "stop",
            CallClass::Read => "read",
        }
    }
}

/// The limiters of one orchestrator.
#[derive(Debug)]
pub struct RateLimits {
    /// One per [`CallClass`]; `None` when limits are off.
    limiters: Option<[DefaultKeyedRateLimiter<String>; 3]>,
    /// Each class's burst (as `limiters`).
    bursts: [u32; 3],
    clock: DefaultClock,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

impl RateLimits {
    /// The limits of `settings` (validated: every rate and burst at least 1).
    pub fn new(settings: &RateLimitSettings) -> Self {
        let s = settings;
        let limiters = s.enabled.then(|| {
            [
                (s.starts_per_minute, s.starts_burst),
                (s.stops_per_minute, s.stops_burst),
                (s.reads_per_minute, s.reads_burst),
            ]
            .map(|(rate, burst)| DefaultKeyedRateLimiter::keyed(quota(rate, burst)))
        });
        Self {
            limiters,
            bursts: [s.starts_burst, s.stops_burst, s.reads_burst].map(|b| b.max(1)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one call of `class` by `key_id`; refuses it when the key is over its limit.
    pub fn check(&self, key_id: &str, class: CallClass) -> Result<(), ApiError> {
        let Some(limiters) = &self.limiters else {
            return Ok(());
        };
        let limiter = &limiters[class as usize];
        if limiter.len() > FORGET_IDLE_ABOVE {
            limiter.retain_recent();
        }
        limiter.check_key(&key_id.to_owned()).map_err(|not_until| {
            let wait: Duration = not_until.wait_time_from(self.clock.now());
            ApiError::RateLimited {
                class: class.as_str(),
                retry_after_ms: wait.as_millis().max(1) as u64,
            }
        })
    }
}

impl RateLimits {
    /// Counts a call of `class` by the caller that stands for `total` of them (a batch of
    /// starts), of which the extractor counted one already; nothing for the admin key, which
    /// is not limited. Refused whole when the key has not that much left now (429, nothing
    /// more counted), or can never have it (more than the key's burst: 400 naming `runners`).
    pub fn check_more(
        &self,
        caller: &Caller,
        class: CallClass,
        total: usize,
    ) -> Result<(), ApiError> {
        let (Some(limiters), Caller::User { key_id, .. }) = (&self.limiters, caller) else {
            return Ok(());
        };
        let burst = self.bursts[class as usize];
        if total > burst as usize {
            return Err(ApiError::invalid(
                "runners",
                format!(
                    "{total} runners are more than this key may start at once (its burst is {burst})"
                ),
            ));
        }
        let Some(more) = u32::try_from(total - 1).ok().and_then(NonZeroU32::new) else {
            return Ok(());
        };
        match limiters[class as usize].check_key_n(key_id, more) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(ApiError::RateLimited {
                class: class.as_str(),
                retry_after_ms: not_until
                    .wait_time_from(self.clock.now())
                    .as_millis()
                    .max(1) as u64,
            }),
            Err(governor::InsufficientCapacity(burst)) => Err(ApiError::invalid(
                "runners",
                format!("more runners than this key may start at once (its burst is {burst})"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_classed_by_route() {
        assert_eq!(
            CallClass::of(&Method::POST, "/v1/runners"),
            CallClass::Start
        );
        assert_eq!(
            CallClass::of(&Method::POST, "/runner/start"),
            CallClass::Start
        );
        assert_eq!(
            CallClass::of(&Method::POST, "/v1/runners/batch"),
            CallClass::Start
        );
        assert_eq!(
            CallClass::of(&Method::POST, "/v1/runners/j/stop"),
            CallClass::Stop
        );
        assert_eq!(
            CallClass::of(&Method::POST, "/runner/stop"),
            CallClass::Stop
        );
        assert_eq!(
            CallClass::of(&Method::GET, "/v1/runners/j"),
            CallClass::Read
        );
    }

    #[test]
    fn a_key_over_its_burst_waits_and_others_do_not() {
        let settings = RateLimitSettings {
            starts_burst: 2,
            starts_per_minute: 6,
            ..RateLimitSettings::default()
        };
        let limits = RateLimits::new(&settings);
        assert!(limits.check("a", CallClass::Start).is_ok());
        assert!(limits.check("a", CallClass::Start).is_ok());
        match limits.check("a", CallClass::Start) {
            Err(ApiError::RateLimited {
                retry_after_ms,
                class,
            }) => {
                assert_eq!(class, "start");
                assert!((1..=10_000).contains(&retry_after_ms), "{retry_after_ms}");
            }
            other => panic!("{other:?}"),
        }
        assert!(limits.check("a", CallClass::Read).is_ok(), "classes apart");
        assert!(limits.check("b", CallClass::Start).is_ok(), "keys apart");
        let off = RateLimits::new(&RateLimitSettings {
            enabled: false,
            ..settings
        });
        for _ in 0..10 {
            assert!(off.check("a", CallClass::Start).is_ok());
        }
    }
}
