//! HTTP handlers. Each one validates its input completely before it writes anything, then
//! makes the fewest store calls it can; none keeps state of its own, so any number of
//! orchestrators answer alike.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runfleet_shared::dispatch::Dispatcher;
use runfleet_shared::ids::{JobId, UserId};
use runfleet_shared::job::{JobRecord, JobSpec, JobStatus, StartRunnerRequest, StopMode};
use runfleet_shared::lifecycle::poll_until;
use runfleet_shared::observability;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::{Admission, FleetStore, StopRequest};
use runfleet_shared::tier::{Subscription, Tier};
use runfleet_shared::validate::{SYSTEM_USER, check_id, check_user_id};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::openapi::named;
use crate::responses::{
    Answer, BatchItem, BatchStartResult, Done, Entitlement, EntitlementGranted, FlattenError,
    FlattenFailed, FlattenFailedCode, FleetCounts, FleetStatus, Health, HealthOk, IssuedKey,
    KeyList, NodeCounts, Nodes, Queued, Refused, Runner, RunnerEvents, RunnerView, StartAccepted,
    StopPending, StopResult, Succeeded, UserCounts, UserRunners,
};

use crate::audit::{self, Action};
use crate::auth::{AdminOnly, Caller, ForUser, issue_key_in};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, Path};
use crate::rate_limit::{CallClass, RateLimits};
use crate::request_id::RequestId;
use crate::state::AppState;

pub(crate) fn user_id(raw: &str) -> Result<UserId, ApiError> {
    check_user_id("userId", raw).map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(UserId::new(raw))
}

pub(crate) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    check_id("jobId", raw, 128).map_err(|e| ApiError::invalid(e.field, e.message))?;
    Ok(JobId::new(raw))
}

/// `GET /metrics`: this process's counters and histograms and the fleet-wide gauges, read from
/// the store in one round trip (the same whichever orchestrator answers), in the Prometheus
/// text format. Needs the admin key unless `metrics.public`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "fleet",
    summary = "Prometheus metrics: fleet-wide gauges (the same from every orchestrator, read from the store in one round trip) and this process's counters and histograms. Admin, unless `metrics.public`.",
    responses(
        (status = 200, description = "The metrics in the Prometheus text format (version 0.0.4).", body = String, content_type = "text/plain"),
        named::KeyedRefusals,
    )
)]
pub async fn metrics<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Result<Caller, ApiError>,
) -> Result<Response, ApiError> {
    if !app.settings.metrics.public {
        caller?.admin()?;
    }
    let g = app.store.fleet_gauges().await?;
    let ready = match g.ready {
        Some(n) => n,
        None => app.queue.depth().await?,
    };
    let capacity = app.settings.node.capacity as u64;
    let gauge = |name: &'static str, v: u64| metrics::gauge!(name).set(v as f64);
    gauge(observability::QUEUE_READY_JOBS, ready);
    if let Some(processing) = g.processing {
        gauge(observability::QUEUE_PROCESSING_JOBS, processing);
    }
    for (status, v) in [
        ("queued", g.counts.queued),
        ("running", g.counts.running),
        ("restarting", g.counts.restarting),
        ("failed_last_hour", g.failed_last_hour),
    ] {
        metrics::gauge!(observability::RUNNERS, "status" => status).set(v as f64);
    }
    gauge(observability::NODES_ALIVE, g.nodes_alive);
    gauge(observability::NODE_CAPACITY_SLOTS, g.node_capacity);
    gauge(observability::NODE_RUNNERS, g.node_runners);
    gauge(observability::NODES_NEEDED, g.nodes_needed(capacity));
    metrics::counter!(observability::BREAKER_OPENINGS_TOTAL).absolute(g.breaker_openings);
    Ok(prometheus_text(observability::render()))
}

/// A Prometheus text exposition as a response.
pub fn prometheus_text(body: String) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /healthz`: 200 when the store answers, 503 otherwise.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "fleet",
    summary = "Liveness: whether the store answers.",
    security(),
    responses(
        (status = 200, description = "The store answers.", body = Health, content_type = "application/json"),
        (status = 503, description = "`store_unavailable`.", body = ErrorBody, content_type = "application/json"),
        (status = 408, response = named::Timeout),
    )
)]
pub async fn healthz<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
) -> Result<Answer<Health>, ApiError> {
    let now = app.store.now_ms().await?;
    Ok(Answer::ok(Health {
        status: HealthOk,
        store_time: now,
    }))
}

/// `POST /v1/runners` (and `/runner/start`): admit a runner against the user's tier and queue it.
/// Counts the outcome in `runfleet_admissions_total` (requests refused before their body was
/// read, such as a missing key or malformed JSON, are not admissions and are not counted).
#[utoipa::path(
    post,
    path = "/v1/runners",
    operation_id = "startRunner",
    tag = "runners",
    summary = "Start a runner.",
    description = "Admits a runner against the user's tier and queues it. Needs the key of `userId` or the admin key. A refused request changes nothing.",
    request_body(content = StartRunnerRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued.", body = StartAccepted, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 401, response = named::Unauthorized),
        (status = 403, response = named::StartForbidden),
        (status = 408, response = named::Timeout),
        (status = 429, response = named::QueueFull),
        (status = 503, response = named::StartUnavailable),
        named::BodyRefusals,
    )
)]
pub async fn start<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    JsonBody(req): JsonBody<StartRunnerRequest>,
) -> Result<Response, ApiError> {
    let result = admit_runner(app, caller, req).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(e) => e.code(),
    };
    metrics::counter!(observability::ADMISSIONS_TOTAL, "outcome" => outcome).increment(1);
    result
}

async fn admit_runner<S: FleetStore, Q: JobQueue + Clone>(
    app: AppState<S, Q>,
    caller: Caller,
    req: StartRunnerRequest,
) -> Result<Response, ApiError> {
    let spec = job_of(&app, &caller, req)?;
    let admission = Dispatcher::new(&app.store, &app.queue).admit(&spec).await?;
    let (tier, limit, current) = admitted(&spec, admission)?;
    let id = &spec.id;
    tracing::debug!(job = %id, user = %spec.user_id, strategy = %spec.strategy_id, tier = %tier, "runner queued");
    Ok(Answer(
        StatusCode::ACCEPTED,
        queued_answer(id, tier, limit, current),
    )
    .into_response())
}

/// Checks a start request for `caller` and seals its credentials: the job to admit.
fn job_of<S: FleetStore, Q>(
    app: &AppState<S, Q>,
    caller: &Caller,
    mut req: StartRunnerRequest,
) -> Result<JobSpec, ApiError> {
    caller.act_for(&req.user_id)?;
    app.kinds
        .prepare(&mut req)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    let id = JobId::generate_in(app.store.placement(&req.user_id));
    JobSpec::sealed(id, req, &app.cipher).map_err(|e| ApiError::Internal(e.into()))
}

/// The store's admission of `spec` as the caller sees it: (tier, limit, runners in use), or
/// the refusal.
fn admitted(spec: &JobSpec, admission: Admission) -> Result<(Tier, u32, u32), ApiError> {
    match admission {
        Admission::Admitted {
            tier,
            limit,
            current,
        } => Ok((tier, limit, current)),
        Admission::LimitReached {
            tier,
            limit,
            current,
        } => Err(ApiError::LimitReached {
            tier: tier.to_string(),
            limit,
            current,
        }),
        Admission::FleetFull { retry_after_ms } => Err(ApiError::FleetFull { retry_after_ms }),
        Admission::QueueFull { retry_after_ms } => Err(ApiError::QueueFull { retry_after_ms }),
        Admission::BreakerOpen { retry_after_ms } => Err(ApiError::CircuitOpen {
            strategy: spec.strategy_id.to_string(),
            retry_after_ms,
        }),
        // The request was validated before, so the store disagreeing is a defect here.
        Admission::Invalid { reason } => Err(ApiError::Internal(anyhow::anyhow!(
            "admission refused a validated spec: {reason}"
        ))),
    }
}

/// The answer to an accepted start.
fn queued_answer(id: &JobId, tier: Tier, limit: u32, current: u32) -> StartAccepted {
    StartAccepted {
        success: Succeeded,
        job_id: id.clone(),
        worker_id: id.clone(),
        status: Queued,
        message: format!("runner queued ({current} of {limit} runners in use, tier {tier})"),
    }
}

/// Body of `POST /v1/runners/batch`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchStartRequest {
    /// Start requests (`limits.batch_max` at most, 1000 by default), each a
    /// `StartRunnerRequest`, checked, admitted or refused on its own: a malformed one is
    /// refused in its own result (its `field` prefixed with `runners[i]`), the others go on.
    /// An element that is not a JSON object makes the whole batch malformed.
    // The items are any objects, not `StartRunnerRequest`s: a malformed one is answered in
    // its own result, which a schema that refused it would not let a client see.
    #[schema(min_items = 1, max_items = 1000)]
    pub runners: Vec<serde_json::Map<String, Value>>,
}

/// `POST /v1/runners/batch`: many starts in one call (of one user or, with the admin key, of
/// many). Each runner is checked, admitted or refused on its own, atomically, exactly as a
/// single start would be, and gets its own answer in `results` (in order); the admissions go
/// to the store in one round trip. Counts as one start per runner against the key's rate
/// limit. 200 with the results, or an error for the whole batch when nothing was admitted
/// (a malformed body, too many runners, the key over its rate limit, the store unreachable).
#[utoipa::path(
    post,
    path = "/v1/runners/batch",
    operation_id = "startRunners",
    tag = "runners",
    summary = "Start many runners in one call.",
    description = "Each runner is admitted or refused on its own, atomically, exactly as `POST /v1/runners` would (tier, breaker, fleet and queue limits), in order, and gets its own answer in `results`; the admissions reach the store in one round trip. A user key may start runners of its own user only (others are refused 403 in their results); the admin key, of any users. Counts as one start per runner against the key's rate limit: a batch over what the key has left now is refused whole (429, nothing written), one larger than its burst is refused 400 (`runners`).",
    request_body(content = BatchStartRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Each runner's answer.", body = BatchStartResult, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 401, response = named::Unauthorized),
        (status = 408, response = named::Timeout),
        (status = 429, response = named::RateLimited),
        (status = 503, response = named::Unavailable),
        named::BodyRefusals,
    )
)]
pub async fn start_batch<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    axum::Extension(limits): axum::Extension<Arc<RateLimits>>,
    JsonBody(req): JsonBody<BatchStartRequest>,
) -> Result<Answer<BatchStartResult>, ApiError> {
    let n = req.runners.len();
    let max = app.settings.limits.batch_max;
    if n == 0 || n > max {
        return Err(ApiError::invalid(
            "runners",
            format!("a batch holds 1 to {max} runners; this one holds {n}"),
        ));
    }
    // The extractor counted this call as one start: the batch is one per runner.
    limits.check_more(&caller, CallClass::Start, n)?;

    let mut results: Vec<Option<Result<StartAccepted, ApiError>>> = Vec::with_capacity(n);
    let mut specs = Vec::new();
    for (i, raw) in req.runners.into_iter().enumerate() {
        let spec = crate::extract::from_value::<StartRunnerRequest>(Value::Object(raw))
            .and_then(|r| job_of(&app, &caller, r))
            .map_err(|e| e.within(&format!("runners[{i}]")));
        match spec {
            Ok(spec) => {
                specs.push((i, spec));
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let jobs: Vec<JobSpec> = specs.iter().map(|(_, s)| s.clone()).collect();
    let admissions = Dispatcher::new(&app.store, &app.queue)
        .admit_many(&jobs)
        .await?;
    for ((i, spec), admission) in specs.into_iter().zip(admissions) {
        results[i] = Some(
            admitted(&spec, admission)
                .map(|(tier, limit, current)| queued_answer(&spec.id, tier, limit, current)),
        );
    }
    let mut accepted = 0;
    let answers: Vec<BatchItem> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.unwrap_or_else(|| {
                Err(ApiError::Internal(anyhow::anyhow!(
                    "runner {i} of a batch was admitted but got no answer"
                )))
            });
            let outcome = match &r {
                Ok(_) => "accepted",
                Err(e) => e.code(),
            };
            metrics::counter!(observability::ADMISSIONS_TOTAL, "outcome" => outcome).increment(1);
            match r {
                Ok(answer) => {
                    accepted += 1;
                    BatchItem::Accepted {
                        answer,
                        index: i,
                        http_status: StatusCode::ACCEPTED.as_u16(),
                    }
                }
                Err(e) => {
                    let (status, answer) = e.status_and_body();
                    BatchItem::Refused {
                        answer,
                        index: i,
                        http_status: status.as_u16(),
                    }
                }
            }
        })
        .collect();
    Ok(Answer::ok(BatchStartResult {
        success: Succeeded,
        accepted,
        refused: n - accepted,
        results: answers,
    }))
}

/// Body of a stop request. Every field is optional, `null` as good as absent. `mode` defaults
/// to `flatten`; `mode` contradicting `flattenPositions` is a 400 on `mode`, and so are both
/// `workerId` and `jobId`.
// Its schema's rules between fields (and the `jobId` alias) are the hand-written
// `schemaRules` of openapi/components.json: a derive cannot state them.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = StopRequest, example = json!({"userId": "user-123", "mode": "flatten"}))]
pub struct StopBody {
    /// The runner's owner; when given, it must match (else 404).
    #[schema(value_type = Option<UserId>)]
    pub user_id: Option<String>,
    /// The runner (`jobId` is accepted as an alias, not both). On `/v1/runners/{jobId}/stop`
    /// it must equal the path's when given.
    #[serde(alias = "jobId")]
    #[schema(value_type = Option<JobId>)]
    pub worker_id: Option<String>,
    /// Seed compatibility: `true` = flatten, `false` = hold.
    pub flatten_positions: Option<bool>,
    /// `flatten` (the default) closes every position at market and confirms flat; `hold`
    /// leaves them.
    pub mode: Option<StopMode>,
}

/// The body of `POST /runner/stop`: a [`StopBody`] that must name the runner, under its own
/// schema name (`SeedStopRequest`, whose rule is in openapi/components.json's `schemaRules`).
#[derive(Debug)]
pub struct SeedStopBody;

impl utoipa::PartialSchema for SeedStopBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::ToSchema;
        utoipa::openapi::schema::AllOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(StopBody::name()))
            .description(Some(
                "As StopRequest; the runner is named by `workerId` (or its alias `jobId`).",
            ))
            .into()
    }
}

crate::openapi::schema_named!(SeedStopBody = "SeedStopRequest"; needs what StopBody; and StopBody);

impl StopBody {
    fn mode(&self) -> Result<StopMode, ApiError> {
        match (self.mode, self.flatten_positions) {
            (Some(StopMode::Flatten), Some(false)) | (Some(StopMode::Hold), Some(true)) => {
                Err(ApiError::invalid("mode", "contradicts flattenPositions"))
            }
            (Some(mode), _) => Ok(mode),
            (None, Some(false)) => Ok(StopMode::Hold),
            (None, _) => Ok(StopMode::Flatten),
        }
    }
}

/// `POST /v1/runners/{jobId}/stop`.
#[utoipa::path(
    post,
    path = "/v1/runners/{jobId}/stop",
    operation_id = "stopRunner",
    tag = "runners",
    summary = "Stop a runner, flattening or holding its positions.",
    description = "Needs the owner's key or the admin key. Idempotent: a runner that already ended answers 200 with its final figures.",
    params(("jobId" = JobId, Path, description = "The runner (`job-…`).")),
    request_body(content = StopBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stopped (or had already ended): its final figures.", body = StopResult, content_type = "application/json"),
        (status = 202, description = "The stop was sent to the runner's node, which has not confirmed it within `http.stop_wait_ms`.", body = StopPending, content_type = "application/json"),
        (status = 502, description = "`FLATTEN_FAILED`: the runner is stopped but the broker did not confirm every position flat; `positions` lists what is still open.", body = FlattenFailed, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 404, response = named::NotFound),
        named::KeyedRefusals,
        named::BodyRefusals,
    )
)]
pub async fn stop<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    request: RequestId,
    Path(raw_job): Path<String>,
    JsonBody(body): JsonBody<StopBody>,
) -> Result<Response, ApiError> {
    if body.worker_id.as_ref().is_some_and(|w| *w != raw_job) {
        return Err(ApiError::invalid(
            "workerId",
            "differs from the runner in the path",
        ));
    }
    stop_runner(app, caller, request, job_id(&raw_job)?, body).await
}

/// `POST /runner/stop` (the seed's shape: the runner is named in the body).
#[utoipa::path(
    post,
    path = "/runner/stop",
    operation_id = "seedStop",
    tag = "seed",
    summary = "The seed's stop route: as POST /v1/runners/{jobId}/stop, the runner named by `workerId` in the body.",
    description = "Answers in the seed's shapes: money as JSON numbers, errors with `error` as the message (docs/api.md, \"The seed's routes\").",
    request_body(content = SeedStopBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Stopped (or had already ended): its final figures.", body = ref("#/components/schemas/SeedStopResult"), content_type = "application/json"),
        (status = 202, description = "The stop was sent to the runner's node, which has not confirmed it within `http.stop_wait_ms`.", body = StopPending, content_type = "application/json"),
        (status = 502, description = "`FLATTEN_FAILED`: the runner is stopped but the broker did not confirm every position flat; `positions` lists what is still open.", body = ref("#/components/schemas/SeedFlattenFailed"), content_type = "application/json"),
        (status = 400, response = named::SeedBadRequest),
        (status = 404, response = named::SeedNotFound),
        named::SeedKeyedRefusals,
        named::SeedBodyRefusals,
    )
)]
pub async fn stop_compat<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    request: RequestId,
    JsonBody(body): JsonBody<StopBody>,
) -> Result<Response, ApiError> {
    let raw = body
        .worker_id
        .clone()
        .ok_or_else(|| ApiError::invalid("workerId", "missing field `workerId`"))?;
    stop_runner(
        app,
        caller,
        request,
        job_id(&raw).map_err(|_| ApiError::invalid("workerId", "not a valid runner id"))?,
        body,
    )
    .await
}

async fn stop_runner<S: FleetStore, Q: JobQueue + Clone>(
    app: AppState<S, Q>,
    caller: Caller,
    request: RequestId,
    job: JobId,
    body: StopBody,
) -> Result<Response, ApiError> {
    let named = body.user_id.as_deref().map(user_id).transpose()?;
    let mode = body.mode()?;
    let not_found = || ApiError::NotFound(format!("no runner {job}"));
    let record = owned_job(&app, &caller, &job, named.as_ref()).await?;
    let outcome = app.store.request_stop(&job, mode).await?;
    if caller == Caller::Admin && matches!(outcome, StopRequest::Stopped | StopRequest::Sent { .. })
    {
        let detail = json!({ "jobId": job, "mode": mode.as_str() });
        audit::record(
            &app.store,
            &caller,
            &request,
            Action::RunnerStopped,
            &record.user_id,
            detail,
        )
        .await;
    }
    match outcome {
        StopRequest::NotFound => Err(not_found()),
        StopRequest::AlreadyEnded(status) => {
            let record = app.store.job(&job).await?.unwrap_or(record);
            Ok(stopped(
                StatusCode::OK,
                &record,
                format!("runner had already ended ({status})"),
            ))
        }
        StopRequest::Stopped => {
            if let Err(e) = app.queue.remove(&job).await {
                // Harmless: the claim step drops a job whose record says stopped.
                tracing::debug!(job = %job, error = %e, "queued job not removed from the queue");
            }
            let record = app.store.job(&job).await?.unwrap_or(record);
            Ok(stopped(
                StatusCode::OK,
                &record,
                "runner stopped before it ran".into(),
            ))
        }
        StopRequest::Sent { node } => {
            let wait = Duration::from_millis(app.settings.http.stop_wait_ms);
            let ended = wait_until_ended(&app.store, &job, wait).await?;
            Ok(match ended {
                Some(r)
                    if r.error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("FLATTEN_FAILED")) =>
                {
                    flatten_failed(&r)
                }
                Some(r) => {
                    let message = format!(
                        "runner stopped ({}), {} positions flattened",
                        mode.as_str(),
                        r.flattened_positions.unwrap_or(0)
                    );
                    stopped(StatusCode::OK, &r, message)
                }
                None => {
                    let body = StopPending {
                        success: Succeeded,
                        status: JobStatus::Running,
                        flattened_positions: None,
                        message: format!(
                            "stop ({}) sent to node {node}; not confirmed within {} ms, check the runner's status",
                            mode.as_str(),
                            wait.as_millis()
                        ),
                    };
                    Answer(StatusCode::ACCEPTED, body).into_response()
                }
            })
        }
    }
}

fn stopped(status: StatusCode, r: &JobRecord, message: String) -> Response {
    let body = StopResult {
        success: Succeeded,
        status: r.status,
        message,
        flattened_positions: r.flattened_positions.unwrap_or(0),
        positions: r.positions.clone(),
        stats: r.stats.clone(),
    };
    Answer(status, body).into_response()
}

/// A flatten stop whose positions the broker did not confirm closed: the runner is stopped, but
/// positions remain open. 502, with what was closed and what is left.
fn flatten_failed(r: &JobRecord) -> Response {
    let body = FlattenFailed {
        success: Refused,
        status: r.status,
        error: FlattenError {
            code: FlattenFailedCode,
            message: r.error.clone(),
        },
        flattened_positions: r.flattened_positions.unwrap_or(0),
        positions: r.positions.clone(),
        stats: r.stats.clone(),
    };
    Answer(StatusCode::BAD_GATEWAY, body).into_response()
}

/// Polls a job's record until it has ended or `wait` passes (a store failure ends the wait
/// with that error).
async fn wait_until_ended<S: FleetStore>(
    store: &S,
    job: &JobId,
    wait: Duration,
) -> Result<Option<JobRecord>, ApiError> {
    let seen = std::sync::Mutex::new(Ok(None));
    poll_until(Duration::from_millis(50), wait, || async {
        let read = store
            .job(job)
            .await
            .map(|r| r.filter(|r| r.status != JobStatus::Running));
        let done = !matches!(read, Ok(None));
        *seen.lock().unwrap_or_else(|p| p.into_inner()) = read;
        done
    })
    .await;
    Ok(seen.into_inner().unwrap_or_else(|p| p.into_inner())?)
}

/// `GET /v1/users/{userId}/runners` (and `/runner/status?userId=`): the user's runners; for
/// the user id `system` (admin only), the fleet-wide counts.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/runners",
    operation_id = "listUserRunners",
    tag = "runners",
    summary = "A user's runners, with positions, stats and counts.",
    description = "Needs the user's key or the admin key. The user id `system` (admin key only) answers the fleet-wide load instead: `queueStats` counts the whole fleet (`queuedJobs`, `runningWorkers` holding a live lease, `totalWorkers` holding a slot, `restartingJobs`), the same from every orchestrator, and `nodes` sums the live nodes. `system` can be no real user.",
    params(("userId" = UserId, Path)),
    responses(
        (status = 200, description = "The user's runners.", body = UserRunners<'_>, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
    )
)]
pub async fn status<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    Path(raw_user): Path<String>,
) -> Result<Response, ApiError> {
    if raw_user == SYSTEM_USER {
        caller.admin()?;
        return Ok(fleet_status(&app).await?.into_response());
    }
    let user = caller.for_user(&raw_user)?;
    let jobs = app.store.user_jobs(&user).await?;
    let count = |s: JobStatus| jobs.iter().filter(|j| j.status == s).count();
    Ok(Answer::ok(UserRunners {
        success: Succeeded,
        user_id: user.clone(),
        workers: jobs.iter().map(RunnerView::of).collect(),
        queue_stats: UserCounts {
            queued_jobs: count(JobStatus::Queued),
            running_workers: count(JobStatus::Running),
            total_workers: jobs.len(),
            failed_jobs: count(JobStatus::Failed),
        },
    })
    .into_response())
}

/// The seed's `getStatus({userId: 'system'})`: fleet-wide load, the same from every
/// orchestrator (read from the store in one round trip, not from this process).
async fn fleet_status<S: FleetStore, Q: JobQueue + Clone>(
    app: &AppState<S, Q>,
) -> Result<Answer<FleetStatus>, ApiError> {
    let g = app.store.fleet_gauges().await?;
    let counts = g.counts;
    Ok(Answer::ok(FleetStatus {
        success: Succeeded,
        user_id: SYSTEM_USER.into(),
        workers: [],
        queue_stats: FleetCounts {
            queued_jobs: counts.queued,
            running_workers: counts.running,
            total_workers: counts.active,
            restarting_jobs: counts.restarting,
        },
        nodes: NodeCounts {
            alive: g.nodes_alive,
            capacity: g.node_capacity,
            runners: g.node_runners,
        },
    }))
}

/// Query of `/runner/status`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusQuery {
    /// Whose runners.
    pub user_id: String,
}

/// `GET /runner/status?userId=...` (the seed's shape).
#[utoipa::path(
    get,
    path = "/runner/status",
    operation_id = "seedStatus",
    tag = "seed",
    summary = "The seed's status route: as GET /v1/users/{userId}/runners.",
    description = "Answers in the seed's shapes: money as JSON numbers, errors with `error` as the message (docs/api.md, \"The seed's routes\").",
    params(("userId" = UserId, Query)),
    responses(
        (status = 200, description = "The user's runners.", body = ref("#/components/schemas/SeedUserRunners"), content_type = "application/json"),
        (status = 400, response = named::SeedBadRequest),
        named::SeedKeyedRefusals,
    )
)]
pub async fn status_compat<S: FleetStore, Q: JobQueue + Clone>(
    state: State<AppState<S, Q>>,
    caller: Caller,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("userId", e.body_text()))?;
    status(state, caller, Path(q.user_id)).await
}

/// Query of `GET /v1/runners/{jobId}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerQuery {
    /// The runner's owner; when given, it must match.
    pub user_id: Option<String>,
}

/// The job, if the caller may see it: 404 when there is none (or `named` is not its owner),
/// 403 when it is another user's.
pub(crate) async fn owned_job<S: FleetStore, Q: JobQueue + Clone>(
    app: &AppState<S, Q>,
    caller: &Caller,
    job: &JobId,
    named: Option<&UserId>,
) -> Result<JobRecord, ApiError> {
    let record = app
        .store
        .job(job)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no runner {job}")))?;
    caller.act_for(&record.user_id)?;
    if named.is_some_and(|u| *u != record.user_id) {
        return Err(ApiError::NotFound(format!(
            "user {} has no runner {job}",
            named.map(UserId::as_str).unwrap_or("")
        )));
    }
    Ok(record)
}

/// `GET /v1/runners/{jobId}`: one runner.
#[utoipa::path(
    get,
    path = "/v1/runners/{jobId}",
    operation_id = "getRunner",
    tag = "runners",
    summary = "One runner, with its positions and stats.",
    description = "Needs the owner's key or the admin key.",
    params(("jobId" = JobId, Path, description = "The runner (`job-…`)."), ("userId" = Option<UserId>, Query, description = "The runner's owner; must match when given.")),
    responses(
        (status = 200, description = "The runner.", body = Runner<'_>, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 404, response = named::NotFound),
        named::KeyedRefusals,
    )
)]
pub async fn runner<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    Path(raw_job): Path<String>,
    query: Result<Query<RunnerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("userId", e.body_text()))?;
    let named = q.user_id.as_deref().map(user_id).transpose()?;
    let record = owned_job(&app, &caller, &job_id(&raw_job)?, named.as_ref()).await?;
    Ok(Answer::ok(Runner {
        success: Succeeded,
        view: RunnerView::of(&record),
    })
    .into_response())
}

/// `GET /v1/runners/{jobId}/events`: the runner's lifecycle events, oldest first (owner or
/// admin). The history outlives the job's record (`events.max_age_ms`), so the owner is taken
/// from the events when the record has expired.
#[utoipa::path(
    get,
    path = "/v1/runners/{jobId}/events",
    operation_id = "getRunnerEvents",
    tag = "runners",
    summary = "The runner's lifecycle history, oldest first.",
    description = "Needs the owner's key or the admin key. Each event was recorded by the same atomic step that made the change. The history keeps a runner's newest 1000 events and expires `events.max_age_ms` after its last one.",
    params(("jobId" = JobId, Path, description = "The runner (`job-…`).")),
    responses(
        (status = 200, description = "The history.", body = RunnerEvents, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 404, response = named::NotFound),
        named::KeyedRefusals,
    )
)]
pub async fn runner_events<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    Path(raw_job): Path<String>,
) -> Result<Answer<RunnerEvents>, ApiError> {
    let job = job_id(&raw_job)?;
    let (record, events) = (
        app.store.job(&job).await?,
        app.store.job_events(&job).await?,
    );
    let owner = record
        .map(|r| r.user_id)
        .or_else(|| events.first().map(|e| e.user.clone()))
        .ok_or_else(|| ApiError::NotFound(format!("no runner {job}")))?;
    caller.act_for(&owner)?;
    Ok(Answer::ok(RunnerEvents {
        success: Succeeded,
        job_id: job,
        events,
    }))
}

/// `GET /v1/users/{userId}/entitlement`: the seed's `checkEntitlement`.
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/entitlement",
    operation_id = "getEntitlement",
    tag = "users",
    summary = "The user's tier and slots (the seed's checkEntitlement).",
    description = "Needs the user's key or the admin key. A subscription past its expiry is `free`.",
    params(("userId" = UserId, Path)),
    responses(
        (status = 200, description = "The entitlement.", body = Entitlement, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
    )
)]
pub async fn entitlement<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    ForUser { user, .. }: ForUser,
) -> Result<Answer<Entitlement>, ApiError> {
    let (now, sub, current) = (
        app.store.now_ms().await?,
        app.store.subscription(&user).await?,
        app.store.active_count(&user).await?,
    );
    let tier = Subscription::effective_tier(sub.as_ref(), now);
    let max = app.settings.tiers.limit(tier);
    let expires = sub
        .filter(|s| s.tier == tier && tier != Tier::Free)
        .map(|s| s.expires_at_ms);
    Ok(Answer::ok(Entitlement {
        success: Succeeded,
        user_id: user,
        is_entitled: current < max,
        tier,
        max_workers: max,
        current_workers: current,
        expires_at: expires,
    }))
}

/// Body of an upgrade.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UpgradeRequest, example = json!({"tier": "basic", "days": 30}))]
pub struct UpgradeBody {
    /// The tier to grant.
    pub tier: Tier,
    /// For how many days from now (1 to 3650).
    #[schema(minimum = 1, maximum = 3650)]
    pub days: u32,
}

/// `PUT /v1/users/{userId}/entitlement` (admin): the seed's `upgradeUser(userId, tier, days)`.
#[utoipa::path(
    put,
    path = "/v1/users/{userId}/entitlement",
    operation_id = "setEntitlement",
    tag = "users",
    summary = "Grant a tier for a number of days (the seed's upgradeUser). Admin.",
    params(("userId" = UserId, Path)),
    request_body(content = UpgradeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Granted.", body = EntitlementGranted, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
        named::BodyRefusals,
    )
)]
pub async fn upgrade<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    AdminOnly(caller): AdminOnly,
    request: RequestId,
    Path(raw_user): Path<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> Result<Answer<EntitlementGranted>, ApiError> {
    let user = user_id(&raw_user)?;
    if !(1..=3650).contains(&body.days) {
        return Err(ApiError::invalid("days", "must be from 1 to 3650"));
    }
    let sub = app.store.subscribe(&user, body.tier, body.days).await?;
    let detail = json!({ "tier": sub.tier, "days": body.days, "expiresAt": sub.expires_at_ms });
    audit::record(
        &app.store,
        &caller,
        &request,
        Action::TierChanged,
        &user,
        detail,
    )
    .await;
    Ok(Answer::ok(EntitlementGranted {
        success: Succeeded,
        tier: sub.tier,
        max_workers: app.settings.tiers.limit(sub.tier),
        expires_at: sub.expires_at_ms,
        user_id: user,
    }))
}

/// `GET /v1/nodes`: live worker nodes.
#[utoipa::path(
    get,
    path = "/v1/nodes",
    operation_id = "listNodes",
    tag = "fleet",
    summary = "Live worker nodes and the queue depth. Admin.",
    responses(
        (status = 200, description = "The nodes.", body = Nodes, content_type = "application/json"),
        named::KeyedRefusals,
    )
)]
pub async fn nodes<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    _: AdminOnly,
) -> Result<Answer<Nodes>, ApiError> {
    let nodes = app.store.nodes().await?;
    let depth = app.queue.depth().await?;
    Ok(Answer::ok(Nodes {
        success: Succeeded,
        nodes,
        queued_jobs: depth,
    }))
}

/// `POST /v1/users/{userId}/keys` (admin): issues a user API key, shown only in this answer.
#[utoipa::path(
    post,
    path = "/v1/users/{userId}/keys",
    operation_id = "issueKey",
    tag = "keys",
    summary = "Issue an API key for the user. Admin.",
    description = "The key acts only for this user. It is shown only in this answer; only its hash is stored.",
    params(("userId" = UserId, Path)),
    request_body(content = ref("#/components/schemas/IssueKeyRequest"), content_type = "application/json"),
    responses(
        (status = 201, description = "Issued.", body = IssuedKey, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
        named::BodyRefusals,
    )
)]
pub async fn create_key<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    AdminOnly(caller): AdminOnly,
    request: RequestId,
    Path(raw_user): Path<String>,
) -> Result<Answer<IssuedKey>, ApiError> {
    let user = user_id(&raw_user)?;
    let issued = issue_key_in(app.store.placement(&user));
    let info = app
        .store
        .add_key(&user, &issued.key_id, &issued.hash)
        .await?;
    let detail = json!({ "keyId": info.key_id });
    audit::record(
        &app.store,
        &caller,
        &request,
        Action::KeyIssued,
        &user,
        detail,
    )
    .await;
    let body = IssuedKey {
        success: Succeeded,
        user_id: user,
        key_id: info.key_id,
        api_key: issued.key,
        created_at: info.created_at,
    };
    Ok(Answer(StatusCode::CREATED, body))
}

/// `GET /v1/users/{userId}/keys` (admin): the user's key ids (never the keys).
#[utoipa::path(
    get,
    path = "/v1/users/{userId}/keys",
    operation_id = "listKeys",
    tag = "keys",
    summary = "The user's keys (ids and issue times, never the keys). Admin.",
    params(("userId" = UserId, Path)),
    responses(
        (status = 200, description = "The keys.", body = KeyList, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
    )
)]
pub async fn list_keys<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    _: AdminOnly,
    Path(raw_user): Path<String>,
) -> Result<Answer<KeyList>, ApiError> {
    let user = user_id(&raw_user)?;
    let keys = app.store.keys(&user).await?;
    Ok(Answer::ok(KeyList {
        success: Succeeded,
        user_id: user,
        keys,
    }))
}

/// `DELETE /v1/users/{userId}/keys/{keyId}` (admin): revokes a key at once.
#[utoipa::path(
    delete,
    path = "/v1/users/{userId}/keys/{keyId}",
    operation_id = "revokeKey",
    tag = "keys",
    summary = "Revoke one of the user's keys. Admin.",
    params(("userId" = UserId, Path), ("keyId" = String, Path, description = "The key's public id (24 hex digits, the part after `rfk_`); any other answers 404.", pattern = "^[0-9a-f]{24}$")),
    responses(
        (status = 200, description = "Revoked.", body = Done, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 404, response = named::NotFound),
        named::KeyedRefusals,
    )
)]
pub async fn revoke_key<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    AdminOnly(caller): AdminOnly,
    request: RequestId,
    Path((raw_user, key_id)): Path<(String, String)>,
) -> Result<Answer<Done>, ApiError> {
    let user = user_id(&raw_user)?;
    if !app.store.revoke_key(&user, &key_id).await? {
        return Err(ApiError::NotFound(format!(
            "user {user} has no key {key_id}"
        )));
    }
    let detail = json!({ "keyId": key_id });
    audit::record(
        &app.store,
        &caller,
        &request,
        Action::KeyRevoked,
        &user,
        detail,
    )
    .await;
    Ok(Answer::ok(Done { success: Succeeded }))
}

/// Any unknown route.
pub async fn no_route() -> ApiError {
    ApiError::NoRoute
}

/// A known route with the wrong method.
pub async fn wrong_method() -> ApiError {
    ApiError::MethodNotAllowed
}
