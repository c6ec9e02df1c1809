//! Lifecycle management for runfleet's long-running background work, on tokio.
//!
//! A [`Runner`] is a named unit of background work with a start/stop lifecycle: `start` launches
//! the work on a tokio task, `stop` cancels it and waits for it within a deadline (and never
//! hangs), `restart` does both as one transition. Transitions are idempotent and may be called
//! concurrently from any number of tasks. Every runner tracks whether it is running, its uptime
//! and a bounded, timestamped [`ErrorHistory`]; a panic in its work is caught and recorded, never
//! taking down the process or other runners; and it publishes [`LifecycleEvent`]s on an
//! [`EventBus`] that slow subscribers cannot hold up.
//!
//! Two kinds are provided, both built on the same core:
//!
//! - [`ServiceRunner`]: one long-running start function (a server, a queue consumer) that gets a
//!   [`CancellationToken`], plus an optional stop function and readiness check;
//! - [`Ticker`]: an async function called at a fixed interval, whose failing or panicking ticks
//!   are recorded without stopping it.
//!
//! A [`RunnerGroup`] boots named runners together, rolling back if one fails to start, and shuts
//! them down together under one deadline with a [`StopReport`]. [`retry`] and [`poll_until`] wait
//! for conditions.
//!
//! | module | owns |
//! | --- | --- |
//! | `runner` | the [`Runner`] trait, [`RunnerOptions`], and the shared core: state, transitions, supervision |
//! | `service` | [`ServiceRunner`] |
//! | `ticker` | [`Ticker`] |
//! | `group` | [`RunnerGroup`], [`StopReport`], [`StopOutcome`] |
//! | `event` | [`LifecycleEvent`], [`EventKind`], [`EventBus`], [`EventSubscription`], [`Delivery`] |
//! | `history` | [`ErrorHistory`], [`ErrorRecord`], [`ErrorKind`] |
//! | `poll` | [`retry`], [`poll_until`] |
//! | `error` | [`LifecycleError`], [`BoxError`] |
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use runfleet_lifecycle::{
//!     CancellationToken, Delivery, EventBus, EventKind, Runner, RunnerGroup, RunnerOptions,
//!     ServiceRunner, Ticker,
//! };
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let shutdown = CancellationToken::new();
//! let events = EventBus::default();
//! let mut subscription = events.subscribe();
//! let options = |name: &str| RunnerOptions::new(name).parent(shutdown.clone()).events(events.clone());
//!
//! let consumer = Arc::new(ServiceRunner::new(options("consumer"), |token| async move {
//!     token.cancelled().await; // consume jobs until cancelled
//!     Ok::<(), std::io::Error>(())
//! }));
//! let sweeper = Arc::new(Ticker::new(options("sweeper"), Duration::from_secs(30), |_token| async {
//!     Err::<(), _>("nothing to sweep") // recorded; the ticker goes on
//! })?);
//!
//! let mut group = RunnerGroup::new();
//! group.register(consumer.clone())?;
//! group.register(sweeper)?;
//! group.start_all().await?;
//! assert!(consumer.is_running());
//!
//! let Some(Delivery::Event(event)) = subscription.recv().await else { unreachable!() };
//! assert_eq!(event.kind, EventKind::Started);
//!
//! let report = group.stop_all(Duration::from_secs(10)).await;
//! assert!(report.is_ok());
//! # Ok::<(), runfleet_lifecycle::LifecycleError>(())
//! # }).unwrap();
//! ```

mod error;
mod event;
mod group;
mod history;
mod poll;
mod runner;
mod service;
mod ticker;

pub use error::{BoxError, LifecycleError};
pub use event::{Delivery, EventBus, EventKind, EventSubscription, LifecycleEvent};
pub use group::{RunnerGroup, StopOutcome, StopReport};
pub use history::{ErrorHistory, ErrorKind, ErrorRecord};
pub use poll::{poll_until, retry};
pub use runner::{Runner, RunnerOptions};
pub use service::ServiceRunner;
pub use ticker::Ticker;
/// Re-exported from `tokio_util`: the token runners' work is cancelled with.
pub use tokio_util::sync::CancellationToken;
