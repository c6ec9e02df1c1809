//! The admin audit trail: every admin action (a tier change, a key issued or revoked, a stop of
//! another user's runner) is written as one structured log line and appended to a capped store
//! stream (`<prefix>:admin-audit` in Redis) that the admin reads with `GET /v1/audit`.
//!
//! An entry is written after its action succeeded, so the trail never shows an action that did
//! not happen. If the store fails between the two, the log line still records the action and an
//! error line says the trail missed it.

use axum::extract::{Query, State};
use runfleet_shared::ids::UserId;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::{AdminAction, FleetStore};
use serde::Deserialize;
use serde_json::Value;

use crate::auth::{AdminOnly, Caller};
use crate::error::ApiError;
use crate::openapi::named;
use crate::request_id::RequestId;
use crate::responses::{Answer, AuditTrail, Succeeded};
use crate::state::AppState;

/// What an admin did, as the trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `PUT /v1/users/{userId}/entitlement`.
    TierChanged,
    /// `POST /v1/users/{userId}/keys`.
    KeyIssued,
    /// `DELETE /v1/users/{userId}/keys/{keyId}`.
    KeyRevoked,
    /// A stop of a user's runner with the admin key.
    RunnerStopped,
}

impl Action {
    /// The name recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::TierChanged => "tier.changed",
            Action::KeyIssued => "key.issued",
            Action::KeyRevoked => "key.revoked",
            Action::RunnerStopped => "runner.stopped",
        }
    }
}

/// Records an admin action that has just succeeded: a log line, then the trail entry.
pub async fn record<S: FleetStore>(
    store: &S,
    caller: &Caller,
    request: &RequestId,
    action: Action,
    user: &UserId,
    detail: Value,
) {
    let action = AdminAction {
        actor: caller.key_id().to_owned(),
        action: action.as_str().to_owned(),
        user: user.to_string(),
        detail,
        request_id: request.0.clone(),
    };
    tracing::info!(
        target: "runfleet_shared::admin_audit",
        actor = %action.actor,
        action = %action.action,
        user = %action.user,
        detail = %action.detail,
        request_id = %action.request_id,
        "admin action"
    );
    if let Err(e) = store.record_admin(&action).await {
        tracing::error!(
            target: "runfleet_shared::admin_audit",
            error = %e,
            action = %action.action,
            request_id = %action.request_id,
            "admin action not recorded in the audit trail"
        );
    }
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrailQuery {
    /// Entries wanted.
    // `maximum` takes only a literal: the `openapi` test holds it to `MAX_COUNT`.
    #[param(minimum = 1, maximum = 1000, default = json!(DEFAULT_COUNT))]
    pub count: Option<usize>,
}

/// Entries `GET /v1/audit` returns when no count is given.
pub const DEFAULT_COUNT: usize = 100;
/// The most entries one `GET /v1/audit` returns.
pub const MAX_COUNT: usize = 1_000;

/// `GET /v1/audit` (admin): the newest admin actions, newest first.
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "adminAudit",
    tag = "fleet",
    summary = "The admin audit trail, newest first. Admin.",
    description = "Every admin action: a tier change, a key issued or revoked, a stop of a user's runner with the admin key. Each entry says who (`actor`: the public id of the key used, `admin` for the admin key), what, on which user, when, and the request's `x-request-id`. The trail keeps the newest `admin_audit.max_entries` entries.",
    params(TrailQuery),
    responses(
        (status = 200, description = "The newest entries.", body = AuditTrail, content_type = "application/json"),
        (status = 400, response = named::BadRequest),
        named::KeyedRefusals,
    )
)]
pub async fn trail<S: FleetStore, Q: JobQueue + Clone>(
    State(app): State<AppState<S, Q>>,
    _: AdminOnly,
    query: Result<Query<TrailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer<AuditTrail>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("count", e.body_text()))?;
    let count = q.count.unwrap_or(DEFAULT_COUNT);
    if !(1..=MAX_COUNT).contains(&count) {
        return Err(ApiError::invalid(
            "count",
            format!("must be from 1 to {MAX_COUNT}"),
        ));
    }
    let entries = app.store.admin_trail(count).await?;
    Ok(Answer::ok(AuditTrail {
        success: Succeeded,
        entries,
    }))
}
