//! `GET /v1/events`: the fleet's lifecycle events, live, as Server-Sent Events.
//!
//! One tailer task per orchestrator reads the store's event stream (a blocking read) while at
//! least one client listens, and fans the events out over a bounded broadcast channel; it
//! stops when the last client leaves, so an orchestrator nobody follows costs Redis nothing.
//!
//! A client sees a user key's own runners only (the admin key sees all, or one user's with
//! `userId`). Resuming after `Last-Event-ID` (or `lastEventId` in the query, for a first
//! connect from a browser's `EventSource`) has no gap and no duplicate: the client subscribes
//! to the broadcast first, then reads what came after its id from the store up to the end,
//! then forwards only live events newer than the last it sent.
//!
//! When events after the resume point were already trimmed by the stream's caps, the stream
//! starts with one `gap` event (`event: gap`, no id) saying so, rather than skipping silently.
//!
//! A client that falls `events.live_buffer` events behind (a slow reader) is dropped rather
//! than buffered without bound; it reconnects with its `Last-Event-ID` and resumes from the
//! store. Streams end when the orchestrator shuts down, so they do not hold its graceful stop.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use runfleet_shared::ids::{JobId, UserId};
use runfleet_shared::observability;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::{EventId, FleetStore, RunnerEvent};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::openapi::named;
use crate::state::AppState;

/// Events read per store call, by the tailer and by a client catching up.
const BATCH: usize = 500;
/// How long the tailer's blocking read waits; also how soon it notices it has no clients.
const TAIL_WAIT: Duration = Duration::from_secs(2);
/// The tailer's pause after a failed read, doubling up to [`TAIL_RETRY_MAX`].
const TAIL_RETRY: Duration = Duration::from_millis(100);
const TAIL_RETRY_MAX: Duration = Duration::from_secs(5);

/// The live side of the event stream in one orchestrator (see the module docs).
#[derive(Debug, Clone)]
pub struct EventHub {
    inner: Arc<Hub>,
}

#[derive(Debug)]
struct Hub {
    tx: broadcast::Sender<Arc<RunnerEvent>>,
    /// Whether a tailer runs; held while subscribing, so a tailer that finds no client and
    /// a client that subscribes cannot miss each other.
    tailing: tokio::sync::Mutex<bool>,
    /// Cancelled when the HTTP server stops; replaced, so a restarted server streams again.
    closing: std::sync::Mutex<CancellationToken>,
    /// Streams open per user key id, and how many one key may hold.
    per_key: std::sync::Mutex<HashMap<String, usize>>,
    max_per_key: usize,
}

impl EventHub {
    /// A hub whose clients may lag `buffer` events behind before they are dropped, and of
    /// which one user key may hold `max_per_key` streams at once.
    pub fn new(buffer: usize, max_per_key: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Self {
            inner: Arc::new(Hub {
                tx,
                tailing: tokio::sync::Mutex::new(false),
                closing: std::sync::Mutex::new(CancellationToken::new()),
                per_key: std::sync::Mutex::new(HashMap::new()),
                max_per_key,
            }),
        }
    }

    /// Counts a new stream of `caller`, refused with 429 when its key holds
    /// `events.max_streams_per_key` already (the admin key is not limited); the stream holds
    /// the returned guard until it ends.
    fn connect(&self, caller: &Caller) -> Result<Connected, ApiError> {
        let key = match caller {
            Caller::Admin => None,
            Caller::User { key_id, .. } => {
                let mut open = self.inner.per_key.lock().unwrap_or_else(|p| p.into_inner());
                let n = open.entry(key_id.clone()).or_default();
                if *n >= self.inner.max_per_key {
                    return Err(ApiError::RateLimited {
                        class: "stream",
                        retry_after_ms: 1_000,
                    });
                }
                *n += 1;
                Some((self.inner.clone(), key_id.clone()))
            }
        };
        metrics::gauge!(observability::EVENT_CLIENTS).increment(1.0);
        Ok(Connected { key })
    }

    /// Ends every open stream (the server is stopping); later streams are unaffected.
    pub fn close_streams(&self) {
        let mut closing = self.inner.closing.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *closing).cancel();
    }

    fn closing(&self) -> CancellationToken {
        self.inner
            .closing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Live events from now on, starting the tailer if none runs.
    async fn subscribe<S: FleetStore>(
        &self,
        store: &S,
    ) -> Result<broadcast::Receiver<Arc<RunnerEvent>>, ApiError> {
        let mut tailing = self.inner.tailing.lock().await;
        if !*tailing {
            // Every event after this id reaches the broadcast; the ones before are the
            // store's to give a client catching up.
            let from = store.last_event_id().await?;
            tokio::spawn(tail(store.clone(), self.inner.clone(), from));
            *tailing = true;
        }
        Ok(self.inner.tx.subscribe())
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.inner.tx.receiver_count()
    }
}

/// Reads the stream after `last` and broadcasts it until no client is left.
async fn tail<S: FleetStore>(store: S, hub: Arc<Hub>, mut last: EventId) {
    let mut retry = TAIL_RETRY;
    loop {
        {
            let mut tailing = hub.tailing.lock().await;
            if hub.tx.receiver_count() == 0 {
                *tailing = false;
                return;
            }
        }
        match store.events_after(&last, BATCH, Some(TAIL_WAIT)).await {
            Ok(events) => {
                retry = TAIL_RETRY;
                for event in events {
                    if let Ok(id) = event.id.parse() {
                        last = id;
                    }
                    // No receiver left is not an error: the next turn ends the tailer.
                    let _ = hub.tx.send(Arc::new(event));
                }
            }
            Err(e) => {
                metrics::counter!(observability::STORE_ERRORS_TOTAL).increment(1);
                tracing::warn!(error = %e, "reading the event stream failed; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(TAIL_RETRY_MAX);
            }
        }
    }
}

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this user's runners (the admin key; a user key may name only itself).
    pub user_id: Option<String>,
    /// Only this runner.
    pub job_id: Option<String>,
    /// Resume after this event id when no `Last-Event-ID` header is sent.
    pub last_event_id: Option<String>,
}

/// Which events a client sees.
#[derive(Debug, Clone)]
struct Filter {
    user: Option<UserId>,
    job: Option<JobId>,
}

impl Filter {
    fn admits(&self, e: &RunnerEvent) -> bool {
        self.user.as_ref().is_none_or(|u| *u == e.user)
            && self.job.as_ref().is_none_or(|j| *j == e.job)
    }
}

/// One client's stream: the store's events after its id, then the live ones.
struct Follow<S> {
    store: S,
    live: broadcast::Receiver<Arc<RunnerEvent>>,
    filter: Filter,
    /// The newest event id passed on (sent or filtered out): nothing at or before it again.
    passed: EventId,
    /// Still reading the store after `passed`.
    catching_up: bool,
    /// Told first, once: the resume point is older than what the stream still keeps.
    gap: Option<Event>,
    backlog: VecDeque<RunnerEvent>,
}

impl<S: FleetStore> Follow<S> {
    async fn next(&mut self) -> Option<Event> {
        if let Some(gap) = self.gap.take() {
            return Some(gap);
        }
        loop {
            if let Some(e) = self.backlog.pop_front() {
                if let Some(out) = self.pass(&e) {
                    return Some(out);
                }
                continue;
            }
            if self.catching_up {
                match self.store.events_after(&self.passed, BATCH, None).await {
                    Ok(batch) => {
                        // A short batch reached the end of the stream as it was after the
                        // subscription: from here on the broadcast has everything.
                        self.catching_up = batch.len() >= BATCH;
                        self.backlog.extend(batch);
                        continue;
                    }
                    Err(e) => {
                        metrics::counter!(observability::STORE_ERRORS_TOTAL).increment(1);
                        tracing::warn!(error = %e, "catching up on the event stream failed; dropping the client");
                        return None;
                    }
                }
            }
            match self.live.recv().await {
                Ok(e) => {
                    if let Some(out) = self.pass(&e) {
                        return Some(out);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!(observability::EVENT_CLIENTS_DROPPED_TOTAL).increment(1);
                    tracing::info!(
                        missed,
                        "event client too slow; dropped (it resumes with Last-Event-ID)"
                    );
                    return None;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// The SSE event for `e`, unless it was passed already or is not the client's.
    fn pass(&mut self, e: &RunnerEvent) -> Option<Event> {
        let id: EventId = e.id.parse().ok()?;
        if id <= self.passed {
            return None;
        }
        self.passed = id;
        if !self.filter.admits(e) {
            return None;
        }
        let data = serde_json::to_string(e).ok()?;
        Some(Event::default().id(e.id.clone()).data(data))
    }
}

/// Counts a connected client in `runfleet_event_clients`, and in its key's open streams, while it
/// lives.
struct Connected {
    /// The user key's count to give back, none for the admin key.
    key: Option<(Arc<Hub>, String)>,
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!(observability::EVENT_CLIENTS).decrement(1.0);
        if let Some((hub, key)) = self.key.take() {
            let mut open = hub.per_key.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// `GET /v1/events`: lifecycle events as Server-Sent Events (see the module docs).
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "streamEvents",
    tag = "runners",
    summary = "Lifecycle events, live, as Server-Sent Events.",
    description = "A `text/event-stream`: each SSE event carries the event's stream id as `id` and a `RunnerEvent` as JSON `data`; a comment every 15 s keeps idle connections open. A user key receives its own runners' events only; the admin key all. A client that falls `events.live_buffer` events behind is disconnected; it resumes with `Last-Event-ID` and loses nothing. Streams end when the orchestrator shuts down. A user key holds at most `events.max_streams_per_key` streams open on one orchestrator; one more is a 429 with Retry-After.",
    params(("userId" = Option<String>, Query, description = "Only this user's runners: any user with the admin key; a user key may name only its own user (403 otherwise)."), ("jobId" = Option<String>, Query, description = "Only this runner's events."), ("lastEventId" = Option<String>, Query, description = "Resume after this event id (`<ms>-<seq>`) on a first connect; the `Last-Event-ID` header wins when both are sent.", pattern = "^[0-9]+-[0-9]+$"), ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`<ms>-<seq>`): every event after it still kept, then live, without gap or duplicate. Browsers' EventSource sends it when reconnecting.", pattern = "^[0-9]+-[0-9]+$")),
    responses(
        (status = 200, description = "The event stream (it stays open).", body = String, content_type = "text/event-stream"),
        (status = 400, response = named::BadRequest),
        (status = 429, response = named::RateLimited),
        named::KeyedRefusals,
    )
)]
pub async fn stream<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let user = q.user_id.as_deref().map(crate::api::user_id).transpose()?;
    let job = q.job_id.as_deref().map(crate::api::job_id).transpose()?;
    let user = match (&caller, user) {
        (Caller::Admin, user) => user,
        (Caller::User { user: own, .. }, None) => Some(own.clone()),
        (Caller::User { .. }, Some(named)) => {
            caller.act_for(&named)?;
            Some(named)
        }
    };
    // The header wins: a browser reconnecting sends the newest id there, with the old URL.
    let resume = match headers.get("last-event-id") {
        Some(v) => Some((
            "Last-Event-ID",
            v.to_str().map_err(|_| {
                ApiError::invalid("Last-Event-ID", "must be an event id (<ms>-<seq>)")
            })?,
        )),
        None => q.last_event_id.as_deref().map(|v| ("lastEventId", v)),
    };
    let after = resume
        .map(|(field, v)| {
            v.trim()
                .parse::<EventId>()
                .map_err(|m| ApiError::invalid(field, m))
        })
        .transpose()?;

    let connected = app.events.connect(&caller)?;
    let live = app.events.subscribe(&app.store).await?;
    // Events after the resume point that the stream's caps trimmed are lost: say so first.
    let gap = match after {
        Some(after) => app.store.events_lost_after(&after).await?.then(|| {
            let data = serde_json::json!({
                "lastEventId": after.to_string(),
                "message": "events after lastEventId may have been trimmed from the \
                            stream (events.max_len, events.max_age_ms) and cannot be sent",
            });
            Event::default().event("gap").data(data.to_string())
        }),
        None => None,
    };
    let follow = Follow {
        store: app.store.clone(),
        live,
        filter: Filter { user, job },
        passed: after.unwrap_or(EventId::ZERO),
        catching_up: after.is_some(),
        gap,
        backlog: VecDeque::new(),
    };
    let closing = app.events.closing();
    let events =
        futures::stream::unfold((follow, connected), |(mut follow, connected)| async move {
            let event = follow.next().await?;
            Some((Ok(event), (follow, connected)))
        });
    let events = futures::StreamExt::take_until(events, closing.cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
