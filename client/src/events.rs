//! The live event stream (`GET /v1/events`, Server-Sent Events) as a [`Stream`] of typed
//! events. The SSE framing is parsed by `eventsource-stream` over reqwest's byte stream; the
//! key travels in the `Authorization` header, never in the URL. When the connection drops (the
//! orchestrator shut down, a balancer cut it, the client fell behind), the stream connects
//! again with `Last-Event-ID` set to the last event received, so the server replays what was
//! missed, with no gap and no duplicate; after [`crate::RetryPolicy::reconnects`] failed
//! attempts in a row it yields the last error and ends.

use std::pin::Pin;

use backon::BackoffBuilder;
use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{ACCEPT, HeaderValue};
use runfleet_shared::api::StreamGap;
use runfleet_shared::ids::{JobId, UserId};
use runfleet_shared::store::RunnerEvent;

use crate::{Client, ClientError};

/// Which events to follow.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only this user's runners (the admin may name any; a user key only its own user).
    pub user: Option<UserId>,
    /// Only this runner.
    pub job: Option<JobId>,
    /// Start after this event id (`<ms>-<seq>`; `0-0` for every event still kept); without
    /// one the stream starts now.
    pub last_event_id: Option<String>,
}

/// One item of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// A runner's event.
    Runner(RunnerEvent),
    /// Events after the id resumed from may have been trimmed before they could be replayed.
    Gap(StreamGap),
}

/// The typed event stream: events, or the error that ended it.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ClientError>> + Send>>;

type Sse = BoxStream<
    'static,
    Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
>;

struct Follow {
    client: Client,
    filter: EventFilter,
    /// The last event id received (or the one to start after).
    last_id: Option<String>,
    open: Option<Sse>,
    /// Failed connections since the last event.
    failures: usize,
    backoff: Option<backon::ExponentialBackoff>,
    done: bool,
}

pub(crate) fn subscribe(client: Client, filter: EventFilter) -> EventStream {
    let follow = Follow {
        last_id: filter.last_event_id.clone(),
        client,
        filter,
        open: None,
        failures: 0,
        backoff: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(follow, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    }))
}

impl Follow {
    async fn next(&mut self) -> Option<Result<StreamEvent, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(open) = self.open.as_mut() else {
                match connect(&self.client, &self.filter, self.last_id.as_deref()).await {
                    // Connected: the failures in a row end here (a balancer that cuts idle
                    // streams every few minutes must not use them up), while the backoff goes
                    // on growing until an event shows the stream works.
                    Ok(sse) => {
                        self.open = Some(sse);
                        self.failures = 0;
                    }
                    Err(e) => {
                        if let Some(e) = self.failed(e).await {
                            return Some(Err(e));
                        }
                    }
                }
                continue;
            };
            match open.next().await {
                Some(Ok(ev)) => {
                    self.backoff = None;
                    if let Some(item) = self.read(ev) {
                        return Some(item);
                    }
                }
                Some(Err(e)) => {
                    self.open = None;
                    let e = match e {
                        eventsource_stream::EventStreamError::Transport(e) => {
                            ClientError::transport(self.client.base_url(), e)
                        }
                        other => ClientError::Decode {
                            status: 200,
                            message: other.to_string(),
                        },
                    };
                    if let Some(e) = self.failed(e).await {
                        return Some(Err(e));
                    }
                }
                None => {
                    // The server ended the stream (it shuts down): connect again.
                    self.open = None;
                    let e = ClientError::Decode {
                        status: 200,
                        message: "the server ended the event stream".into(),
                    };
                    if let Some(e) = self.failed(e).await {
                        return Some(Err(e));
                    }
                }
            }
        }
    }

    /// One SSE event as a stream item; `None` for what carries nothing (keep-alive comments
    /// never get here; an event without data does).
    fn read(&mut self, ev: eventsource_stream::Event) -> Option<Result<StreamEvent, ClientError>> {
        let decode = |e: serde_json::Error| ClientError::Decode {
            status: 200,
            message: format!("event {:?}: {e}", ev.id),
        };
        if ev.event == "gap" {
            return Some(
                serde_json::from_str(&ev.data)
                    .map(StreamEvent::Gap)
                    .map_err(decode),
            );
        }
        if ev.data.is_empty() {
            return None;
        }
        if !ev.id.is_empty() {
            self.last_id = Some(ev.id.clone());
        }
        Some(
            serde_json::from_str(&ev.data)
                .map(StreamEvent::Runner)
                .map_err(decode),
        )
    }

    /// After a failure: `Some(error)` when the stream gives up (a refusal other than 503, or
    /// too many failures in a row), else `None` once it has waited to connect again.
    async fn failed(&mut self, e: ClientError) -> Option<ClientError> {
        let refused = matches!(e, ClientError::Api { .. }) && !e.is_retryable();
        self.failures += 1;
        if refused || self.failures > self.client.retry.reconnects {
            self.done = true;
            return Some(e);
        }
        let policy = self.client.retry;
        let backoff = self
            .backoff
            .get_or_insert_with(|| policy.backoff(usize::MAX).build());
        let wait = e
            .retry_after()
            .map(|ra| ra.min(policy.max_delay))
            .or_else(|| backoff.next())
            .unwrap_or(policy.max_delay);
        tracing::debug!(error = %e, ?wait, "event stream lost; connecting again");
        tokio::time::sleep(wait).await;
        None
    }
}

/// One connection to the stream, after `last_id` when given. A free function over the parts it
/// needs: [`Follow`] holds the open stream, which is `Send` but not `Sync`.
async fn connect(
    client: &Client,
    filter: &EventFilter,
    last_id: Option<&str>,
) -> Result<Sse, ClientError> {
    let mut url = client.url(&["v1", "events"]);
    {
        let mut q = url.query_pairs_mut();
        if let Some(user) = &filter.user {
            q.append_pair("userId", user.as_str());
        }
        if let Some(job) = &filter.job {
            q.append_pair("jobId", job.as_str());
        }
    }
    let url = if url.query() == Some("") {
        let mut u = url;
        u.set_query(None);
        u
    } else {
        url
    };
    let mut req = client
        .request(Method::GET, url)
        .header(ACCEPT, HeaderValue::from_static("text/event-stream"));
    if let Some(id) = last_id {
        req = req.header("last-event-id", id);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ClientError::transport(client.base_url(), e))?;
    let status = resp.status();
    if !status.is_success() {
        let retry_after = crate::retry_after(resp.headers());
        let body = resp.bytes().await.unwrap_or_default();
        return Err(ClientError::refusal(status.as_u16(), &body, retry_after));
    }
    Ok(resp.bytes_stream().eventsource().boxed())
}
