//! What every handler shares ([`AppState`]), in a module of its own so that the handlers
//! (`api`, `events`, `audit`) and the extractors (`auth`) depend on it, not on each other.

use std::sync::Arc;

use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::kind::Kinds;

use crate::events::EventHub;

/// What every handler shares: the store, the queue, the credentials cipher, the settings and
/// the runner kinds start requests are validated against. Behind one `Arc`: axum clones the
/// state for every request that reads it, and a clone is then one reference count, not a copy
/// of the store's connection settings, the queue's and the cipher's key schedule.
#[derive(Debug)]
pub struct AppState<S, Q>(Arc<Shared<S, Q>>);

/// The state itself (read through [`AppState`]).
#[derive(Debug)]
pub struct Shared<S, Q> {
    /// Shared fleet state.
    pub store: S,
    /// The job queue.
    pub queue: Q,
    /// Seals users' credentials.
    pub cipher: CredentialCipher,
    /// Settings (tier limits, stop wait, admin key).
    pub settings: Arc<Settings>,
    /// Live event clients (`GET /v1/events`).
    pub events: EventHub,
    /// The runner kinds: a start request is checked by its kind before anything is written.
    pub kinds: Kinds,
}

impl<S, Q> AppState<S, Q> {
    /// The state of an API over `store` and `queue`, admitting runners of `kinds`.
    pub fn new(
        store: S,
        queue: Q,
        cipher: CredentialCipher,
        settings: Arc<Settings>,
        kinds: Kinds,
    ) -> Self {
        let events = EventHub::new(
            settings.events.live_buffer,
            settings.events.max_streams_per_key,
        );
        Self(Arc::new(Shared {
            store,
            queue,
            cipher,
            settings,
            events,
            kinds,
        }))
    }
}

impl<S, Q> Clone for AppState<S, Q> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S, Q> std::ops::Deref for AppState<S, Q> {
    type Target = Shared<S, Q>;
    fn deref(&self) -> &Shared<S, Q> {
        &self.0
    }
}
