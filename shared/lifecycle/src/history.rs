//! The bounded, timestamped error history every runner keeps: [`ErrorHistory`] of
//! [`ErrorRecord`]s, each tagged with an [`ErrorKind`].

use std::collections::VecDeque;
use std::time::SystemTime;

/// What produced an [`ErrorRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The work did not become ready during the readiness phase of `start`.
    Start,
    /// The work (a service's start function) returned an error and ended.
    Failed,
    /// The work panicked: a service ends; a ticker records it and goes on ticking.
    Panicked,
    /// One run of a ticker's function returned an error; the ticker goes on.
    Tick,
    /// Stopping went wrong: the stop function failed, or the work missed the stop deadline.
    Stop,
}

/// One recorded error: when it happened, what kind it is, and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// Wall-clock time the error was recorded.
    pub at: SystemTime,
    /// What produced the error.
    pub kind: ErrorKind,
    /// The error's message, including its chain of sources, or the panic message.
    pub message: String,
}

impl ErrorRecord {
    /// A record of `kind` with `message`, timestamped now.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            at: SystemTime::now(),
            kind,
            message: message.into(),
        }
    }
}

/// A bounded history of errors, oldest first: once full, recording a new error evicts the oldest.
///
/// ```
/// use runfleet_lifecycle::{ErrorHistory, ErrorKind, ErrorRecord};
///
/// let mut history = ErrorHistory::new(2);
/// for message in ["a", "b", "c"] {
///     history.push(ErrorRecord::new(ErrorKind::Tick, message));
/// }
/// let kept: Vec<&str> = history.iter().map(|record| record.message.as_str()).collect();
/// assert_eq!(kept, ["b", "c"]);
/// assert_eq!(history.last().unwrap().message, "c");
/// assert_eq!(history.total_recorded(), 3);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorHistory {
    records: VecDeque<ErrorRecord>,
    capacity: usize,
    total_recorded: u64,
}

impl ErrorHistory {
    /// The capacity runners use unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 32;

    /// An empty history keeping at most `capacity` records (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            records: VecDeque::with_capacity(capacity),
            capacity,
            total_recorded: 0,
        }
    }

    /// Appends `record`, evicting the oldest record if the history is full.
    pub fn push(&mut self, record: ErrorRecord) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
        self.total_recorded += 1;
    }

    /// The most recent record.
    pub fn last(&self) -> Option<&ErrorRecord> {
        self.records.back()
    }

    /// The kept records, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &ErrorRecord> + ExactSizeIterator {
        self.records.iter()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The most records kept at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many records were ever pushed, evicted ones included.
    pub fn total_recorded(&self) -> u64 {
        self.total_recorded
    }
}

impl Default for ErrorHistory {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl<'a> IntoIterator for &'a ErrorHistory {
    type Item = &'a ErrorRecord;
    type IntoIter = std::collections::vec_deque::Iter<'a, ErrorRecord>;

    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_records_in_order() {
        let mut history = ErrorHistory::new(3);
        assert!(history.is_empty());
        for i in 0..5 {
            history.push(ErrorRecord::new(ErrorKind::Tick, i.to_string()));
        }
        let kept: Vec<_> = history.iter().map(|r| r.message.clone()).collect();
        assert_eq!(kept, ["2", "3", "4"]);
        assert_eq!(history.len(), 3);
        assert_eq!(history.capacity(), 3);
        assert_eq!(history.total_recorded(), 5);
        assert!(
            history
                .iter()
                .zip(history.iter().skip(1))
                .all(|(a, b)| a.at <= b.at)
        );
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut history = ErrorHistory::new(0);
        history.push(ErrorRecord::new(ErrorKind::Failed, "only"));
        assert_eq!(history.capacity(), 1);
        assert_eq!(history.last().map(|r| r.kind), Some(ErrorKind::Failed));
    }
}
