//! Errors: [`LifecycleError`], returned by lifecycle operations, and [`BoxError`], the error
//! type user functions (start, stop and tick functions) are converted into.

use std::any::Any;
use std::error::Error;
use std::time::Duration;

/// The error type user functions may return, after `Into` conversion: any
/// `std::error::Error + Send + Sync`, `String`, `&str` or `anyhow::Error` converts into it.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why a lifecycle operation (start, stop, restart, registration, construction) failed.
///
/// Every variant that concerns a runner names it. Failures of the running work itself are not
/// returned from here but recorded in the runner's [`ErrorHistory`](crate::ErrorHistory) and
/// published as [`LifecycleEvent`](crate::LifecycleEvent)s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The runner's work ended, or did not become ready, during the readiness phase of `start`.
    #[error("runner `{name}` failed to start: {reason}")]
    StartFailed {
        /// The runner's name.
        name: String,
        /// What went wrong, e.g. the start function's error or panic message.
        reason: String,
    },
    /// The runner's work did not finish within the stop deadline; its task was aborted.
    #[error("runner `{name}` did not stop within {after:?}")]
    StopTimeout {
        /// The runner's name.
        name: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The runner's stop function returned an error or panicked (the work itself did stop).
    #[error("runner `{name}`: stop function failed: {reason}")]
    StopFailed {
        /// The runner's name.
        name: String,
        /// The stop function's error or panic message.
        reason: String,
    },
    /// The runner was not started because its parent cancellation token is already cancelled.
    #[error("runner `{name}` cannot start: its parent token is cancelled")]
    ParentCancelled {
        /// The runner's name.
        name: String,
    },
    /// A [`Ticker`](crate::Ticker) was given an interval below [`Ticker::MIN_INTERVAL`](crate::Ticker::MIN_INTERVAL).
    #[error("ticker `{name}`: interval {interval:?} is shorter than the minimum {min:?}")]
    IntervalTooShort {
        /// The ticker's name.
        name: String,
        /// The interval asked for.
        interval: Duration,
        /// The smallest interval accepted.
        min: Duration,
    },
    /// A [`RunnerGroup`](crate::RunnerGroup) already holds a runner with this name.
    #[error("a runner named `{name}` is already registered")]
    DuplicateName {
        /// The name registered twice.
        name: String,
    },
}

/// Renders an error with its chain of sources: `outer: cause: root cause`.
pub(crate) fn describe_error(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Extracts the message of a panic payload (`&str` or `String`, as `panic!` produces).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn describe_error_includes_the_source_chain() {
        let error = Outer(std::io::Error::other("root cause"));
        assert_eq!(describe_error(&error), "outer: root cause");
    }

    #[test]
    fn panic_message_downcasts_str_and_string_payloads() {
        let from_str = std::panic::catch_unwind(|| panic!("static message")).unwrap_err();
        assert_eq!(panic_message(from_str.as_ref()), "static message");
        let from_string = std::panic::catch_unwind(|| panic!("formatted {}", 42)).unwrap_err();
        assert_eq!(panic_message(from_string.as_ref()), "formatted 42");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(
            panic_message(other.as_ref()),
            "panic with a non-string payload"
        );
    }
}
