//! What the faces (the dashboard at `/ui`, the CLI) read beyond the seed's calls: who a key
//! acts as, runners across users with filters, and the fleet's load over the last hour.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use runfleet_shared::ids::JobId;
use runfleet_shared::job::{JobRecord, JobStatus};
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;
use serde::Deserialize;

use crate::api::{job_id, owned_job};
use crate::auth::{AdminOnly, Caller};
use crate::error::ApiError;
use crate::extract::Path;
use crate::openapi::named;
use crate::responses::{Answer, FleetHistory, Me, RunnerList, RunnerPnl, RunnerView, Succeeded};
use crate::state::AppState;

/// `GET /v1/me`: the role of the key used and, for a user key, its user.
#[utoipa::path(
    get,
    path = "/v1/me",
    operation_id = "whoAmI",
    tag = "fleet",
    summary = "Who the key acts as.",
    description = "`role` is `admin` for the admin key, else `user` with the key's `userId`. The dashboard and the CLI ask it once to know what to show.",
    responses(
        (status = 200, description = "The caller.", body = Me, content_type = "application/json"),
        named::KeyedRefusals,
    )
)]
pub async fn me<S: FleetStore, Q: JobQueue + Clone>(
    State(_): State<AppState<S, Q>>,
    caller: Caller,
) -> Answer<Me> {
    let key_id = caller.key_id().to_owned();
    let (role, user_id) = match caller {
        Caller::Admin => ("admin", None),
        Caller::User { user, .. } => ("user", Some(user)),
    };
    Answer::ok(Me {
        success: Succeeded,
        role: role.into(),
        user_id,
        key_id,
    })
}

/// Query of `GET /v1/runners`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// One user's runners, ended ones included (a user key: only itself, the default).
    /// Without it the admin gets the runners holding a slot fleet-wide.
    pub user_id: Option<String>,
    /// Only runners in this status: `queued`, `running`, `crashed`, `stopped`, `failed`.
    pub status: Option<String>,
    /// Only runners of this strategy id.
    pub strategy_id: Option<String>,
    /// Only runners of this strategy type (`config.type`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
    /// Runners returned at most.
    #[param(minimum = 1, maximum = 1000, default = json!(DEFAULT_LIMIT))]
    pub limit: Option<usize>,
}

/// Runners `GET /v1/runners` returns when no limit is given.
pub const DEFAULT_LIMIT: usize = 200;
/// The most runners one `GET /v1/runners` returns.
pub const MAX_LIMIT: usize = 1_000;

/// `GET /v1/runners`: runners matching the filters, newest first.
#[utoipa::path(
    get,
    path = "/v1/runners",
    operation_id = "listRunners",
    tag = "runners",
    summary = "Runners, filtered, newest first.",
    description = "With `userId`: that user's runners, ended ones for `retention` after they end (a user key may name only its own user, and is its default). Without it (admin key): the runners holding a slot fleet-wide (queued, running, restarting). `status`, `strategyId` and `type` filter; `truncated` says more matched than `limit`.",
    params(ListQuery),
    responses(
        (status = 200, description = "The runners.", body = RunnerList<'_>, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
    )
)]
pub async fn list<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| {
        let text = e.body_text();
        ApiError::invalid(query_field(&text).to_owned(), text.clone())
    })?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be from 1 to {MAX_LIMIT}"),
        ));
    }
    let status = q
        .status
        .as_deref()
        .map(|s| {
            serde_json::from_value::<JobStatus>(s.into()).map_err(|_| {
                ApiError::invalid(
                    "status",
                    "must be one of queued, running, crashed, stopped, failed",
                )
            })
        })
        .transpose()?;
    let user = match (&caller, q.user_id.as_deref()) {
        (_, Some(raw)) => Some(caller.for_user(raw)?),
        (Caller::User { user, .. }, None) => Some(user.clone()),
        (Caller::Admin, None) => None,
    };
    let records = match &user {
        Some(user) => {
            let mut jobs = app.store.user_jobs(user).await?;
            jobs.reverse();
            jobs
        }
        // Filters apply after the read: over a fleet of more active runners than the limit,
        // the admin narrows by user.
        None => app.store.active_jobs(MAX_LIMIT).await?,
    };
    let keep = |r: &&JobRecord| {
        status.is_none_or(|s| r.status == s)
            && q.strategy_id
                .as_deref()
                .is_none_or(|s| r.strategy_id.as_str() == s)
            && q.kind.as_deref().is_none_or(|k| r.config.kind == k)
    };
    let matching: Vec<&JobRecord> = records.iter().filter(keep).collect();
    let truncated = matching.len() > limit;
    Ok(Answer::ok(RunnerList {
        success: Succeeded,
        workers: matching
            .into_iter()
            .take(limit)
            .map(RunnerView::of)
            .collect(),
        truncated,
    })
    .into_response())
}

/// `GET /v1/fleet/history` (admin): the fleet's load over the kept window.
#[utoipa::path(
    get,
    path = "/v1/fleet/history",
    operation_id = "fleetHistory",
    tag = "fleet",
    summary = "The fleet's load over the last hour, oldest first. Admin.",
    description = "A sample every `sweep.history_every_ms` (10 s) taken by whichever orchestrator sweeps first, the newest `sweep.history_keep` (360: one hour) kept: queue depth, runners by status, live nodes and their capacity.",
    responses(
        (status = 200, description = "The samples.", body = FleetHistory, content_type = "application/json"),
        named::KeyedRefusals,
    )
)]
pub async fn history<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    _: AdminOnly,
) -> Result<Answer<FleetHistory>, ApiError> {
    Ok(Answer::ok(FleetHistory {
        success: Succeeded,
        every_ms: app.settings.sweep.history_every_ms,
        samples: app.store.history().await?,
    }))
}

/// `GET /v1/runners/{jobId}/pnl`: the runner's PnL over time (owner or admin).
#[utoipa::path(
    get,
    path = "/v1/runners/{jobId}/pnl",
    operation_id = "getRunnerPnl",
    tag = "runners",
    summary = "The runner's PnL over time, oldest first.",
    description = "Needs the owner's key or the admin key. A point (`at`, `totalPnL`: closed trades net of fees, in `stats.currency`) each time a heartbeat or the end of the run brought a total different from the last point; the newest 2000 are kept, and they expire with the runner's event history. Open positions' unrealized PnL is in the runner's positions.",
    params(("jobId" = JobId, Path, description = "The runner (`job-…`).")),
    responses(
        (status = 200, description = "The PnL history.", body = RunnerPnl, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        (status = 404, response = named::NotFound),
        named::KeyedRefusals,
    )
)]
pub async fn pnl<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    caller: Caller,
    Path(raw_job): Path<String>,
) -> Result<Answer<RunnerPnl>, ApiError> {
    let record = owned_job(&app, &caller, &job_id(&raw_job)?, None).await?;
    let points = app.store.pnl_history(&record.job_id).await?;
    Ok(Answer::ok(RunnerPnl {
        success: Succeeded,
        job_id: record.job_id,
        currency: record.stats.currency,
        points,
    }))
}

/// The parameter a query rejection names (`Failed to deserialize query string: limit: …`), or
/// `query` when it names none.
fn query_field(text: &str) -> &str {
    let rest = text.split_once("query string: ").map_or("", |(_, r)| r);
    match rest.split_once(": ") {
        Some((field, _)) if !field.is_empty() && !field.contains(' ') => field,
        _ => "query",
    }
}

#[cfg(test)]
mod tests {
    use super::query_field;

    #[test]
    fn a_query_refusal_names_the_parameter() {
        let unknown = "Failed to deserialize query string: foo: unknown field `foo`, expected one of `userId`";
        assert_eq!(query_field(unknown), "foo");
        let bad = "Failed to deserialize query string: limit: invalid digit found in string";
        assert_eq!(query_field(bad), "limit");
        assert_eq!(query_field("something else"), "query");
    }
}
