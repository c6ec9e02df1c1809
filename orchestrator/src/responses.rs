//! The API's answers as types: one struct per answer shape, so that a handler cannot send a
//! field the others do not know of, and the shapes are written in one place.
//!
//! An answer goes out through [`Answer`], which serializes it to a `serde_json::Value` first:
//! the keys of every object, nested ones included, then come out in sorted order, byte for
//! byte what clients have received since the answers were `json!` maps.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use runfleet_shared::ids::{JobId, UserId};
use runfleet_shared::job::{JobRecord, JobStatus, Position, Stats};
use runfleet_shared::store::{
    AdminEntry, ApiKeyInfo, FleetSample, NodeInfo, PnlPoint, RunnerEvent,
};
use runfleet_shared::tier::Tier;
use serde::Serialize;
use utoipa::ToSchema;

/// An answer with its status: `T` as a JSON body, its keys sorted at every level.
#[derive(Debug)]
pub struct Answer<T>(pub StatusCode, pub T);

impl<T> Answer<T> {
    /// `body` with 200.
    pub fn ok(body: T) -> Self {
        Answer(StatusCode::OK, body)
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.1) {
            Ok(body) => (self.0, Json(body)).into_response(),
            Err(e) => crate::error::ApiError::Internal(e.into()).into_response(),
        }
    }
}

/// A field that is always the same value (a JSON boolean or string), as a type: so its schema
/// says which (`enum: [true]`), and a handler cannot send another.
macro_rules! constant {
    ($($(#[$doc:meta])* $name:ident: $json:ident = $value:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl Serialize for $name {
            fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
                $value.serialize(s)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::$json)
                    .enum_values(Some([$value]))
                    .into()
            }
        }

        impl ToSchema for $name {}
    )*};
}

constant! {
    /// `"success": true` (every answer but a refusal, which is [`crate::error::ErrorBody`]).
    Succeeded: Boolean = true;
    /// `"success": false` (a refusal, and a flatten that failed).
    Refused: Boolean = false;
    /// `"status": "ok"` ([`Health`]).
    HealthOk: String = "ok";
    /// `"status": "queued"` ([`StartAccepted`]).
    Queued: String = "queued";
    /// `"code": "FLATTEN_FAILED"` ([`FlattenError`]).
    FlattenFailedCode: String = "FLATTEN_FAILED";
}

/// `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok`.
    pub status: HealthOk,
    /// The store's clock (ms).
    pub store_time: u64,
}

/// An accepted start (`POST /v1/runners`, and each accepted item of a batch).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartAccepted {
    /// Always true.
    pub success: Succeeded,
    /// The runner's id.
    pub job_id: JobId,
    /// The same as `jobId` (the seed's name).
    pub worker_id: JobId,
    /// Always `queued`.
    pub status: Queued,
    /// How many of the tier's runners are in use.
    pub message: String,
}

/// One item of a batch's `results`: the answer a single start would have had, with its place
/// in the batch and the status it would have had.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    /// Admitted and queued.
    Accepted {
        /// The start's answer.
        #[serde(flatten)]
        answer: StartAccepted,
        /// The element of `runners` this answers.
        index: usize,
        /// 202.
        #[serde(rename = "httpStatus")]
        http_status: u16,
    },
    /// Refused.
    Refused {
        /// The refusal's body.
        #[serde(flatten)]
        answer: crate::error::ErrorBody,
        /// The element of `runners` this answers.
        index: usize,
        /// The status a single start would have had.
        #[serde(rename = "httpStatus")]
        http_status: u16,
    },
}

/// `POST /v1/runners/batch`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchStartResult {
    /// Always true.
    pub success: Succeeded,
    /// How many runners were admitted.
    pub accepted: usize,
    /// How many were refused.
    pub refused: usize,
    /// One answer per runner, in order.
    pub results: Vec<BatchItem>,
}

/// A runner that has stopped (or had ended already), with what it left.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopResult {
    /// Always true.
    pub success: Succeeded,
    /// The runner's status now.
    pub status: JobStatus,
    /// What happened.
    pub message: String,
    /// Positions the stop closed.
    pub flattened_positions: u32,
    /// Positions still open.
    pub positions: Vec<Position>,
    /// The run's statistics.
    pub stats: Stats,
}

/// A stop sent to the runner's node and not confirmed within `http.stop_wait_ms` (202).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopPending {
    /// Always true.
    pub success: Succeeded,
    /// `running`, still.
    pub status: JobStatus,
    /// Always null: nothing is known yet.
    #[schema(required = true)]
    pub flattened_positions: Option<u32>,
    /// Where the stop went.
    pub message: String,
}

/// A flatten stop whose positions the broker did not confirm closed (502).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlattenFailed {
    /// Always false.
    pub success: Refused,
    /// The runner's status now.
    pub status: JobStatus,
    /// `FLATTEN_FAILED` and the broker's reason.
    pub error: FlattenError,
    /// Positions the stop closed.
    pub flattened_positions: u32,
    /// Positions still open.
    pub positions: Vec<Position>,
    /// The run's statistics.
    pub stats: Stats,
}

/// The `error` of [`FlattenFailed`].
#[derive(Debug, Serialize, ToSchema)]
pub struct FlattenError {
    /// `FLATTEN_FAILED`.
    pub code: FlattenFailedCode,
    /// What the node recorded.
    #[schema(required = true)]
    pub message: Option<String>,
}

/// A runner's record as the API shows it: every field of the record but its positions and
/// stats (they sit beside it, in [`RunnerView`]), and `workerId`, the seed's name of `jobId`.
/// Written from the record itself, so a field the record gains shows here too (in its schema
/// as well, which is the record's, edited the same way).
#[derive(Debug)]
pub struct Worker<'a>(pub &'a JobRecord);

impl utoipa::PartialSchema for Worker<'_> {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::{RefOr, Schema};
        let RefOr::T(Schema::Object(mut record)) = JobRecord::schema() else {
            unreachable!("a struct's schema is an object")
        };
        for field in ["positions", "stats"] {
            record.properties.shift_remove(field);
            record.required.retain(|r| r != field);
        }
        let worker_id = utoipa::openapi::schema::RefBuilder::new()
            .ref_location_from_schema_name(JobId::name())
            .description(Some("Same as `jobId` (the seed's name)."));
        record
            .properties
            .insert("workerId".into(), worker_id.into());
        record.required.insert(0, "workerId".into());
        record.description =
            Some("A runner's record (`workerId` is the seed's name of `jobId`).".into());
        RefOr::T(Schema::Object(record))
    }
}

crate::openapi::schema_named!(Worker<'_> = "Worker"; needs what JobRecord;);

impl Serialize for Worker<'_> {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::Error;
        let mut record = serde_json::to_value(self.0).map_err(Ser::Error::custom)?;
        if let Some(fields) = record.as_object_mut() {
            fields.remove("positions");
            fields.remove("stats");
            fields.insert("workerId".into(), self.0.job_id.as_str().into());
        }
        record.serialize(s)
    }
}

/// A runner as the status calls show it: `{worker, positions, stats}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnerView<'a> {
    /// The record.
    pub worker: Worker<'a>,
    /// Open positions.
    pub positions: &'a [Position],
    /// The run's statistics.
    pub stats: &'a Stats,
}

impl<'a> RunnerView<'a> {
    /// The view of `r`.
    pub fn of(r: &'a JobRecord) -> Self {
        RunnerView {
            worker: Worker(r),
            positions: &r.positions,
            stats: &r.stats,
        }
    }
}

/// `GET /v1/runners/{jobId}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Runner<'a> {
    /// Always true.
    pub success: Succeeded,
    /// The runner.
    #[serde(flatten)]
    pub view: RunnerView<'a>,
}

/// `GET /v1/users/{userId}/runners`: the user's runners.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserRunners<'a> {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: &'a UserId,
    /// The runners.
    pub workers: Vec<RunnerView<'a>>,
    /// Their counts.
    pub queue_stats: UserCounts,
}

/// The counts of a user's runners.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCounts {
    /// Queued.
    pub queued_jobs: usize,
    /// Running.
    pub running_workers: usize,
    /// All the user's runners listed.
    pub total_workers: usize,
    /// Failed.
    pub failed_jobs: usize,
}

/// The status of the user id `system` (admin): the whole fleet's counts.
// Not in the document: `GET /v1/users/system/runners` is documented as `UserRunners`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// Always true.
    pub success: Succeeded,
    /// `system`.
    pub user_id: &'static str,
    /// Always empty.
    pub workers: [(); 0],
    /// The fleet's counts.
    pub queue_stats: FleetCounts,
    /// The live nodes.
    pub nodes: NodeCounts,
}

/// The fleet's runner counts.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetCounts {
    /// Queued.
    pub queued_jobs: u64,
    /// Running.
    pub running_workers: u64,
    /// Holding a slot (queued, running or restarting).
    pub total_workers: u64,
    /// Waiting for a restart.
    pub restarting_jobs: u64,
}

/// The live nodes' totals.
#[derive(Debug, Serialize)]
pub struct NodeCounts {
    /// Live nodes.
    pub alive: u64,
    /// Their runner slots.
    pub capacity: u64,
    /// The runners they hold.
    pub runners: u64,
}

/// `GET /v1/runners/{jobId}/events`.
// `deny_unknown_fields` only for the schema (this is never read): `additionalProperties: false`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub struct RunnerEvents {
    /// Always true.
    pub success: Succeeded,
    /// The runner.
    pub job_id: JobId,
    /// Its events, oldest first.
    pub events: Vec<RunnerEvent>,
}

/// `GET /v1/users/{userId}/entitlement`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Entitlement {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// Whether a start would find a free slot.
    pub is_entitled: bool,
    /// The tier in force.
    pub tier: Tier,
    /// Its runner limit.
    pub max_workers: u32,
    /// Slots held.
    pub current_workers: u32,
    /// When a paid tier ends (ms); null for free.
    #[schema(required = true)]
    pub expires_at: Option<u64>,
}

/// `PUT /v1/users/{userId}/entitlement`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntitlementGranted {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// The tier granted.
    pub tier: Tier,
    /// Its runner limit.
    pub max_workers: u32,
    /// When it ends (ms).
    pub expires_at: u64,
}

/// `GET /v1/nodes`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nodes {
    /// Always true.
    pub success: Succeeded,
    /// Live nodes, newest heartbeat first.
    pub nodes: Vec<NodeInfo>,
    /// Jobs waiting in the queue.
    pub queued_jobs: u64,
}

/// `POST /v1/users/{userId}/keys` (201): the key, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedKey {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// The key's public id.
    pub key_id: String,
    /// The whole key, `rfk_<keyId>_<secret>`.
    #[schema(pattern = "^rfk_[0-9a-f]+_[0-9a-f]+$")]
    pub api_key: String,
    /// When it was issued (ms).
    pub created_at: u64,
}

/// `GET /v1/users/{userId}/keys`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyList {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// The keys (never their secrets).
    pub keys: Vec<ApiKeyInfo>,
}

/// `GET /v1/audit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditTrail {
    /// Always true.
    pub success: Succeeded,
    /// Newest first.
    pub entries: Vec<AdminEntry>,
}

/// An answer that says only that it was done (`DELETE /v1/users/{userId}/keys/{keyId}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// Always true.
    pub success: Succeeded,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A record with every optional field set, as the store would read it.
    fn record() -> JobRecord {
        serde_json::from_value(json!({
            "jobId": "job-1", "userId": "u1", "strategyId": "s1", "brokerId": "paper",
            "config": {"name": "n", "type": "scalping", "parameters": {"rsiPeriod": 14},
                       "instruments": ["BTC-PERPETUAL"]},
            "status": "failed", "nodeId": "node-1", "epoch": 3, "restarts": 2, "createdAt": 10,
            "startedAt": 11, "endedAt": 12, "lastHeartbeatAt": 13, "error": "boom",
            "stopMode": "hold", "flattenedPositions": 1,
            "positions": [{"instrumentName": "BTC-PERPETUAL", "side": "long", "amount": "10",
                           "entryPrice": "50000", "markPrice": "50100", "currency": "BTC"}],
            "stats": {"totalTrades": 4, "totalPnL": "0.5"}
        }))
        .unwrap()
    }

    /// The view is the record split in two, as the `json!` answers built it: the record's own
    /// fields (every one of them) plus `workerId` under `worker`, its positions and stats beside.
    #[test]
    fn a_runner_view_is_the_whole_record_split_in_two() {
        let r = record();
        let mut worker = serde_json::to_value(&r).unwrap();
        let o = worker.as_object_mut().unwrap();
        let positions = o.remove("positions").unwrap();
        let stats = o.remove("stats").unwrap();
        o.insert("workerId".into(), json!(r.job_id));
        let expected = json!({"worker": worker, "positions": positions, "stats": stats});
        let view = serde_json::to_value(RunnerView::of(&r)).unwrap();
        assert_eq!(view, expected);
        assert_eq!(view.to_string(), expected.to_string(), "byte for byte");
    }

    #[test]
    fn answers_go_out_with_sorted_keys() {
        let body = StartAccepted {
            success: Succeeded,
            job_id: JobId::new("job-1"),
            worker_id: JobId::new("job-1"),
            status: Queued,
            message: "m".into(),
        };
        let text = serde_json::to_value(&body).unwrap().to_string();
        assert_eq!(
            text,
            r#"{"jobId":"job-1","message":"m","status":"queued","success":true,"workerId":"job-1"}"#
        );
        let _: Value = serde_json::from_str(&text).unwrap();
    }
}

/// `GET /v1/me`: who the key acts as.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Always true.
    pub success: Succeeded,
    /// `admin` (the admin key) or `user` (a user's API key).
    #[schema(example = "user")]
    pub role: &'static str,
    /// The user a user key acts for; absent for the admin key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// The key's public id (`admin` for the admin key).
    pub key_id: String,
}

/// `GET /v1/runners`: runners matching the filters, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerList<'a> {
    /// Always true.
    pub success: Succeeded,
    /// The runners.
    pub workers: Vec<RunnerView<'a>>,
    /// Whether more runners matched than `limit` allowed.
    pub truncated: bool,
}

/// `GET /v1/fleet/history`: the fleet's load over the kept window, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetHistory {
    /// Always true.
    pub success: Succeeded,
    /// How often a sample is taken (ms, `sweep.history_every_ms`).
    pub every_ms: u64,
    /// The samples, oldest first.
    pub samples: Vec<FleetSample>,
}

/// `GET /v1/runners/{jobId}/pnl`: the runner's PnL over time.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerPnl {
    /// Always true.
    pub success: Succeeded,
    /// The runner.
    pub job_id: JobId,
    /// The currency of the points (`stats.currency`).
    pub currency: String,
    /// The points, oldest first.
    pub points: Vec<PnlPoint>,
}
