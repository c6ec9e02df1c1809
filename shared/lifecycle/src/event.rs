//! Lifecycle events: what runners publish ([`LifecycleEvent`], [`EventKind`]), the bus they
//! publish on ([`EventBus`]) and what subscribers read ([`EventSubscription`], [`Delivery`]).
//!
//! The bus is a bounded [`tokio::sync::broadcast`] channel, so publishing never waits for a
//! subscriber: a subscriber that falls more than the bus capacity behind loses the oldest events
//! and is told how many with [`Delivery::Missed`].

use std::sync::Arc;
use std::time::SystemTime;

use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// A lifecycle transition of one runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The runner's name.
    pub runner: Arc<str>,
    /// Wall-clock time of the transition.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
}

impl LifecycleEvent {
    /// An event of `kind` for `runner`, timestamped now.
    pub fn new(runner: impl Into<Arc<str>>, kind: EventKind) -> Self {
        Self {
            runner: runner.into(),
            at: SystemTime::now(),
            kind,
        }
    }
}

/// The kinds of lifecycle transitions.
///
/// Events describe transitions only: a ticker's failing or panicking tick is recorded in its
/// [`ErrorHistory`](crate::ErrorHistory) but publishes nothing, since the ticker keeps running.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// `start` succeeded: the runner is running (and ready, if it has a readiness check).
    Started,
    /// The work ended cleanly: it was stopped, returned `Ok`, or was aborted.
    Stopped,
    /// The work ended with an error, or did not become ready in time.
    Failed {
        /// The error message.
        message: String,
    },
    /// The work panicked and ended.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// `restart` succeeded; published instead of [`EventKind::Started`].
    Restarted,
}

/// A broadcast bus of [`LifecycleEvent`]s. Cloning it gives another handle on the same bus.
///
/// Share one bus between runners (see [`RunnerOptions::events`](crate::RunnerOptions::events))
/// to observe them all through one subscription.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<LifecycleEvent>,
}

impl EventBus {
    /// The capacity of [`EventBus::default`].
    pub const DEFAULT_CAPACITY: usize = 256;

    /// A bus retaining up to `capacity` (at least one) events for each subscriber that lags.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// Publishes `event` to every current subscriber. Never waits; without subscribers the event
    /// is dropped.
    pub fn publish(&self, event: LifecycleEvent) {
        // An error only means there is no subscriber right now.
        let _ = self.sender.send(event);
    }

    /// A subscription receiving every event published from now on.
    pub fn subscribe(&self) -> EventSubscription {
        EventSubscription {
            receiver: self.sender.subscribe(),
        }
    }

    /// How many subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        self.sender.receiver_count()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

/// What a subscription yields: the next event, or notice of events it missed by lagging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The next event.
    Event(LifecycleEvent),
    /// This many events were dropped because the subscriber fell behind; delivery resumes with
    /// the oldest event still retained.
    Missed(u64),
}

/// A subscriber's end of an [`EventBus`].
///
/// ```
/// use runfleet_lifecycle::{Delivery, EventBus, EventKind, LifecycleEvent};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let bus = EventBus::new(2);
/// let mut subscription = bus.subscribe();
/// for _ in 0..3 {
///     bus.publish(LifecycleEvent::new("worker", EventKind::Started));
/// }
/// assert_eq!(subscription.recv().await, Some(Delivery::Missed(1)));
/// assert!(matches!(subscription.recv().await, Some(Delivery::Event(_))));
/// # });
/// ```
#[derive(Debug)]
pub struct EventSubscription {
    receiver: broadcast::Receiver<LifecycleEvent>,
}

impl EventSubscription {
    /// Waits for the next delivery; `None` once every bus handle is dropped and all retained
    /// events are read.
    pub async fn recv(&mut self) -> Option<Delivery> {
        match self.receiver.recv().await {
            Ok(event) => Some(Delivery::Event(event)),
            Err(RecvError::Lagged(missed)) => Some(Delivery::Missed(missed)),
            Err(RecvError::Closed) => None,
        }
    }

    /// The next delivery if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        match self.receiver.try_recv() {
            Ok(event) => Some(Delivery::Event(event)),
            Err(TryRecvError::Lagged(missed)) => Some(Delivery::Missed(missed)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => None,
        }
    }

    /// The subscription as a [`Stream`] of deliveries, ending when the bus closes.
    pub fn into_stream(self) -> impl Stream<Item = Delivery> + Send + Unpin {
        Box::pin(futures::stream::unfold(
            self,
            |mut subscription| async move {
                let delivery = subscription.recv().await?;
                Some((delivery, subscription))
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn every_subscriber_gets_every_event() {
        let bus = EventBus::default();
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        assert_eq!(bus.subscriber_count(), 2);
        bus.publish(LifecycleEvent::new("a", EventKind::Started));
        for subscription in [&mut first, &mut second] {
            let Some(Delivery::Event(event)) = subscription.recv().await else {
                panic!("expected an event");
            };
            assert_eq!(&*event.runner, "a");
            assert_eq!(event.kind, EventKind::Started);
        }
        assert_eq!(first.try_recv(), None);
    }

    #[tokio::test]
    async fn stream_ends_when_the_bus_is_dropped() {
        let bus = EventBus::new(8);
        let stream = bus.subscribe().into_stream();
        bus.publish(LifecycleEvent::new("a", EventKind::Stopped));
        drop(bus);
        let deliveries: Vec<_> = stream.collect().await;
        assert_eq!(deliveries.len(), 1);
        assert!(matches!(&deliveries[0], Delivery::Event(e) if e.kind == EventKind::Stopped));
    }
}
