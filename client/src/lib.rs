//! runfleet-client: a typed client of runfleet's HTTP API (docs/api.md).
//!
//! Requests and answers are the server's own types ([`runfleet_shared::api`], re-exported as
//! [`api`]): what the orchestrator serializes is what this crate reads, so the two cannot
//! drift. Every call returns its answer or a [`ClientError`] carrying the API's error `code`,
//! `field`, `message` and HTTP status. A `503` (the fleet full, the store unreachable, a
//! strategy's breaker open) is retried after the server's `Retry-After` (capped, a bounded
//! number of times; [`RetryPolicy`]): the API changes nothing when it refuses, so a retried
//! start cannot start twice. [`Client::events`] follows the live event stream and resumes
//! from the last event id when the connection drops.
//!
//! ```no_run
//! # async fn demo() -> Result<(), runfleet_client::ClientError> {
//! let client = runfleet_client::Client::new("http://localhost:8080", Some("dev-admin-key"))?;
//! let nodes = client.nodes().await?;
//! println!("{} nodes, {} queued", nodes.nodes.len(), nodes.queued_jobs);
//! # Ok(()) }
//! ```

mod error;
mod events;

use std::fmt;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::ClientError;
pub use events::{EventFilter, EventStream, StreamEvent};
pub use runfleet_shared::api;
pub use runfleet_shared::ids::{self, JobId, UserId};
pub use runfleet_shared::job::{
    Credentials, JobRecord, JobStatus, Position, StartRunnerRequest, StopMode, StrategyConfig,
};
pub use runfleet_shared::store::{NodeInfo, RunnerEvent};
pub use runfleet_shared::tier::Tier;

use api::{
    AuditTrail, BatchStartResult, Done, Entitlement, EntitlementGranted, FlattenFailed,
    FleetHistory, FleetStatus, Health, IssuedKey, KeyList, Me, Nodes, Runner, RunnerEvents,
    RunnerList, RunnerPnl, StartAccepted, StopPending, StopResult, UserRunners,
};

/// How calls refused with `503` are retried, and how the event stream reconnects.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub retries: usize,
    /// The wait before the first retry when the server names none.
    pub min_delay: Duration,
    /// The longest wait, whatever `Retry-After` says.
    pub max_delay: Duration,
    /// Reconnections of the event stream in a row, without an event between, before it gives up.
    pub reconnects: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            reconnects: 10,
        }
    }
}

impl RetryPolicy {
    /// No retry, no reconnection.
    pub fn none() -> Self {
        RetryPolicy {
            retries: 0,
            reconnects: 0,
            ..RetryPolicy::default()
        }
    }

    fn backoff(&self, times: usize) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(times)
            .with_jitter()
    }
}

/// Which runners [`Client::runners`] lists; every field narrows (none: all the key may see).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerFilter {
    /// One user's runners, ended ones included.
    pub user: Option<UserId>,
    /// Only this status.
    pub status: Option<JobStatus>,
    /// Only this strategy id.
    pub strategy_id: Option<String>,
    /// Only this strategy type (`config.type`).
    pub kind: Option<String>,
    /// At most this many (the server's default: 200).
    pub limit: Option<usize>,
}

/// What a stop answered: stopped (200), sent and not confirmed yet (202), or stopped with
/// positions the broker did not confirm closed (502, `FLATTEN_FAILED`).
#[derive(Debug, Clone, PartialEq)]
pub enum StopOutcome {
    /// Stopped; what it left.
    Stopped(StopResult),
    /// Sent to the runner's node, not confirmed within the server's wait.
    Pending(StopPending),
    /// Stopped, but positions remain open.
    FlattenFailed(FlattenFailed),
}

/// A client of one runfleet server (an orchestrator, or a balancer in front of several).
/// Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `Bearer <key>`, marked sensitive so that reqwest never logs it.
    auth: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("key", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish()
    }
}

impl Client {
    /// A client of the server at `url` (`http://host:port`, a path prefix allowed), calling
    /// with `key` as its bearer key (the admin key or a user key; none for `/healthz`).
    pub fn new(url: &str, key: Option<&str>) -> Result<Self, ClientError> {
        let invalid = |message: String| ClientError::InvalidUrl {
            url: url.into(),
            message,
        };
        let base = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid("expected an http:// or https:// URL".into()));
        }
        let auth = key
            .map(|k| {
                let mut v = HeaderValue::try_from(format!("Bearer {k}")).map_err(|_| {
                    ClientError::InvalidUrl {
                        url: url.into(),
                        message: "the key holds characters a header cannot".into(),
                    }
                })?;
                v.set_sensitive(true);
                Ok::<_, ClientError>(v)
            })
            .transpose()?;
        // reqwest's TLS uses the process' rustls provider: ring, as the rest of the workspace.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Client {
            http,
            base,
            auth,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
        })
    }

    /// The same client with another [`RetryPolicy`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same client with another timeout for a whole call (30 s by default; the event
    /// stream has none).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// The URL of the path made of `segments`, each escaped as one segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        req
    }

    /// One call: the answer's status and body, a 503 retried per the policy, any other status
    /// returned as it is.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let attempt = || async {
            let mut req = self
                .request(method.clone(), url.clone())
                .timeout(self.timeout);
            if let Some(body) = &body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let transport = |e| ClientError::transport(self.base.as_str(), e);
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            let retry_after = retry_after(resp.headers());
            let bytes = resp.bytes().await.map_err(transport)?;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                return Err(ClientError::refusal(status.as_u16(), &bytes, retry_after));
            }
            Ok((status, bytes))
        };
        let max = self.retry.max_delay;
        attempt
            .retry(self.retry.backoff(self.retry.retries))
            .when(ClientError::is_retryable)
            // The server's Retry-After wins over the backoff's guess, up to the cap.
            .adjust(move |e, next| next.map(|d| e.retry_after().map_or(d, |ra| ra.min(max))))
            .notify(|e, wait| tracing::debug!(error = %e, ?wait, "retrying"))
            .await
    }

    /// A call whose answer is `T` with a 2xx status; anything else is a refusal.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Decode {
                status: 0,
                message: format!("cannot write the request: {e}"),
            })?;
        let (status, bytes) = self.send(method, url, body).await?;
        if !status.is_success() {
            return Err(ClientError::refusal(status.as_u16(), &bytes, None));
        }
        decode(status, &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        self.call(Method::GET, segments, &[], None::<&()>).await
    }

    /// `GET /healthz`: the store answers.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get(&["healthz"]).await
    }

    /// `POST /v1/runners`: admits and queues a runner.
    pub async fn start(&self, req: &StartRunnerRequest) -> Result<StartAccepted, ClientError> {
        self.call(Method::POST, &["v1", "runners"], &[], Some(req))
            .await
    }

    /// `POST /v1/runners/batch`: many starts, each admitted or refused on its own.
    pub async fn start_batch(
        &self,
        runners: &[StartRunnerRequest],
    ) -> Result<BatchStartResult, ClientError> {
        #[derive(Serialize)]
        struct Batch<'a> {
            runners: &'a [StartRunnerRequest],
        }
        let body = Batch { runners };
        self.call(Method::POST, &["v1", "runners", "batch"], &[], Some(&body))
            .await
    }

    /// `POST /v1/runners/{jobId}/stop` with `mode`: flatten (close every position and confirm
    /// flat) or hold.
    pub async fn stop(&self, job: &JobId, mode: StopMode) -> Result<StopOutcome, ClientError> {
        let body = serde_json::to_vec(&serde_json::json!({ "mode": mode })).ok();
        let url = self.url(&["v1", "runners", job.as_str(), "stop"]);
        let (status, bytes) = self.send(Method::POST, url, body).await?;
        match status {
            StatusCode::OK => decode(status, &bytes).map(StopOutcome::Stopped),
            StatusCode::ACCEPTED => decode(status, &bytes).map(StopOutcome::Pending),
            StatusCode::BAD_GATEWAY => match decode(status, &bytes) {
                Ok(failed) => Ok(StopOutcome::FlattenFailed(failed)),
                Err(_) => Err(ClientError::refusal(status.as_u16(), &bytes, None)),
            },
            _ => Err(ClientError::refusal(status.as_u16(), &bytes, None)),
        }
    }

    /// `GET /v1/runners/{jobId}`: one runner, with its positions and stats.
    pub async fn runner(&self, job: &JobId) -> Result<Runner<'static>, ClientError> {
        self.get(&["v1", "runners", job.as_str()]).await
    }

    /// `GET /v1/users/{userId}/runners`: a user's runners and their counts.
    pub async fn user_runners(&self, user: &UserId) -> Result<UserRunners<'static>, ClientError> {
        self.get(&["v1", "users", user.as_str(), "runners"]).await
    }

    /// `GET /v1/users/system/runners` (admin): the fleet-wide load.
    pub async fn fleet_status(&self) -> Result<FleetStatus, ClientError> {
        self.get(&["v1", "users", "system", "runners"]).await
    }

    /// `GET /v1/runners/{jobId}/events`: the runner's history, oldest first.
    pub async fn runner_events(&self, job: &JobId) -> Result<RunnerEvents, ClientError> {
        self.get(&["v1", "runners", job.as_str(), "events"]).await
    }

    /// `GET /v1/users/{userId}/entitlement`.
    pub async fn entitlement(&self, user: &UserId) -> Result<Entitlement, ClientError> {
        self.get(&["v1", "users", user.as_str(), "entitlement"])
            .await
    }

    /// `PUT /v1/users/{userId}/entitlement` (admin): grants `tier` for `days`.
    pub async fn set_entitlement(
        &self,
        user: &UserId,
        tier: Tier,
        days: u32,
    ) -> Result<EntitlementGranted, ClientError> {
        let body = serde_json::json!({ "tier": tier, "days": days });
        self.call(
            Method::PUT,
            &["v1", "users", user.as_str(), "entitlement"],
            &[],
            Some(&body),
        )
        .await
    }

    /// `POST /v1/users/{userId}/keys` (admin): a new key, shown this once.
    pub async fn issue_key(&self, user: &UserId) -> Result<IssuedKey, ClientError> {
        self.call(
            Method::POST,
            &["v1", "users", user.as_str(), "keys"],
            &[],
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/users/{userId}/keys` (admin): the user's keys, never their secrets.
    pub async fn keys(&self, user: &UserId) -> Result<KeyList, ClientError> {
        self.get(&["v1", "users", user.as_str(), "keys"]).await
    }

    /// `DELETE /v1/users/{userId}/keys/{keyId}` (admin).
    pub async fn revoke_key(&self, user: &UserId, key_id: &str) -> Result<Done, ClientError> {
        self.call(
            Method::DELETE,
            &["v1", "users", user.as_str(), "keys", key_id],
            &[],
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/nodes` (admin): the live worker nodes and the queue depth.
    pub async fn nodes(&self) -> Result<Nodes, ClientError> {
        self.get(&["v1", "nodes"]).await
    }

    /// `GET /v1/audit` (admin): the newest `count` admin actions (the server's default: 100).
    pub async fn audit(&self, count: Option<u32>) -> Result<AuditTrail, ClientError> {
        let query: Vec<_> = count
            .map(|c| ("count", c.to_string()))
            .into_iter()
            .collect();
        self.call(Method::GET, &["v1", "audit"], &query, None::<&()>)
            .await
    }

    /// `GET /v1/me`: who this client's key acts as.
    pub async fn me(&self) -> Result<Me, ClientError> {
        self.get(&["v1", "me"]).await
    }

    /// `GET /v1/runners`: runners matching `filter`, newest first (a user key: its own; the
    /// admin without a user: the runners holding a slot fleet-wide).
    pub async fn runners(&self, filter: &RunnerFilter) -> Result<RunnerList<'static>, ClientError> {
        let query: Vec<(&str, String)> = [
            ("userId", filter.user.as_ref().map(ToString::to_string)),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
            ("strategyId", filter.strategy_id.clone()),
            ("type", filter.kind.clone()),
            ("limit", filter.limit.map(|l| l.to_string())),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        self.call(Method::GET, &["v1", "runners"], &query, None::<&()>)
            .await
    }

    /// `GET /v1/runners/{jobId}/pnl`: the runner's PnL over time, oldest first.
    pub async fn runner_pnl(&self, job: &JobId) -> Result<RunnerPnl, ClientError> {
        self.get(&["v1", "runners", job.as_str(), "pnl"]).await
    }

    /// `GET /v1/fleet/history` (admin): the fleet's load over the last hour, oldest first.
    pub async fn fleet_history(&self) -> Result<FleetHistory, ClientError> {
        self.get(&["v1", "fleet", "history"]).await
    }

    /// `GET /v1/events`: the live event stream of the runners `filter` names (all the key
    /// may see by default), resumed from the last event received when the connection drops.
    pub fn events(&self, filter: EventFilter) -> EventStream {
        events::subscribe(self.clone(), filter)
    }
}

/// The `Retry-After` header in seconds (the form the API sends).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
        status: status.as_u16(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped_one_by_one() {
        let c = Client::new("http://h:1/prefix/", None).unwrap();
        assert_eq!(
            c.url(&["v1", "runners", "a/b?c"]).as_str(),
            "http://h:1/prefix/v1/runners/a%2Fb%3Fc"
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let c = Client::new("http://h:1", Some("rfk_1_secret")).unwrap();
        assert!(!format!("{c:?}").contains("secret"));
        assert!(Client::new("ftp://h", None).is_err());
    }
}
