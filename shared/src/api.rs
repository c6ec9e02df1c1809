//! The HTTP API's answers as types: one struct per answer shape, written once, serialized by
//! the orchestrator and read by `runfleet-client` (and so by the CLI and the whole-fleet tests).
//! They live here, not in the orchestrator, so that the server and its clients cannot drift:
//! a field the server gains is a field the client reads.
//!
//! Every type derives `Serialize` and `Deserialize`. The fields that are always one value
//! (`"success": true`, `"status": "queued"`) are types of their own ([`Succeeded`], [`Queued`],
//! ...) that write that value and refuse any other when read, which also lets an untagged
//! [`BatchItem`] tell an accepted start from a refusal. The orchestrator sends an answer with
//! the keys of every object sorted (it goes through a `serde_json::Value`), so the field order
//! here is free.
//!
//! With the `openapi` feature every answer is also a `utoipa::ToSchema`, so the OpenAPI
//! document is generated from these definitions.

use std::borrow::Cow;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{JobId, UserId};
use crate::job::{JobRecord, JobStatus, Position, Stats};
use crate::store::{AdminEntry, ApiKeyInfo, FleetSample, NodeInfo, PnlPoint, RunnerEvent};
use crate::tier::Tier;

/// A field that is always the same value (a JSON boolean or string), as a type: its schema says
/// which (`enum: [true]`), a server cannot send another, and a client refuses another.
macro_rules! constant {
    ($($(#[$doc:meta])* $name:ident: $ty:ty, $json:ident = $value:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl Serialize for $name {
            fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
                $value.serialize(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v = <$ty>::deserialize(d)?;
                if v == $value {
                    Ok($name)
                } else {
                    Err(D::Error::custom(format_args!(
                        "expected {:?}, found {:?}",
                        $value, v
                    )))
                }
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::$json)
                    .enum_values(Some([$value]))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    )*};
}

constant! {
    /// `"success": true` (every answer but a refusal, which is [`ErrorBody`]).
    Succeeded: bool, Boolean = true;
    /// `"success": false` (a refusal, and a flatten that failed).
    Refused: bool, Boolean = false;
    /// `"status": "ok"` ([`Health`]).
    HealthOk: String, String = "ok";
    /// `"status": "queued"` ([`StartAccepted`]).
    Queued: String, String = "queued";
    /// `"code": "FLATTEN_FAILED"` ([`FlattenError`]).
    FlattenFailedCode: String, String = "FLATTEN_FAILED";
}

/// The body of every refusal: `{"success": false, "error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Always false.
    pub success: Refused,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an [`ErrorBody`]: a stable machine code and a human message, and what the
/// refusal has to add.
// The fields a refusal leaves out are absent, never null: `nullable = false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// The stable machine code ([`ApiError::code`]): invalid_request, unauthorized, forbidden,
    /// runner_limit_reached, not_found, no_route, method_not_allowed, payload_too_large,
    /// unsupported_media_type, queue_full, rate_limited, circuit_open, fleet_full,
    /// store_unavailable, queue_unavailable, internal_error.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub code: Cow<'static, str>,
    /// What is wrong, for people.
    pub message: String,
    /// `invalid_request`: the JSON path of the refused field (`config.parameters.rsiPeriod`,
    /// `body` for malformed JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub field: Option<String>,
    /// `runner_limit_reached`: the tier in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub tier: Option<String>,
    /// `runner_limit_reached`: its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max_workers: Option<u32>,
    /// `runner_limit_reached`: the slots held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub current_workers: Option<u32>,
    /// Refusals worth retrying: when (also the `Retry-After` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false, minimum = 1))]
    pub retry_after_seconds: Option<u64>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Always `ok`.
    pub status: HealthOk,
    /// The store's clock (ms).
    pub store_time: u64,
}

/// An accepted start (`POST /v1/runners`, and each accepted item of a batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
        answer: ErrorBody,
        /// The element of `runners` this answers.
        index: usize,
        /// The status a single start would have had.
        #[serde(rename = "httpStatus")]
        http_status: u16,
    },
}

/// `POST /v1/runners/batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StopPending {
    /// Always true.
    pub success: Succeeded,
    /// `running`, still.
    pub status: JobStatus,
    /// Always null: nothing is known yet.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub flattened_positions: Option<u32>,
    /// Where the stop went.
    pub message: String,
}

/// A flatten stop whose positions the broker did not confirm closed (502).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FlattenError {
    /// `FLATTEN_FAILED`.
    pub code: FlattenFailedCode,
    /// What the node recorded.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub message: Option<String>,
}

/// A runner as the status calls show it: `{worker, positions, stats}`, where `worker` is every
/// field of the record but its positions and stats, plus `workerId` (the seed's name of
/// `jobId`). Written from the record itself, so a field the record gains shows here too.
///
/// It holds the record whole: borrowed when the server answers (a status read copies nothing),
/// owned when a client reads it back ([`RunnerView::record`] is the record with its positions
/// and stats in place).
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerView<'a>(pub Cow<'a, JobRecord>);

impl<'a> RunnerView<'a> {
    /// The view of `r`, borrowed.
    pub fn of(r: &'a JobRecord) -> Self {
        RunnerView(Cow::Borrowed(r))
    }

    /// The runner's record.
    pub fn record(&self) -> &JobRecord {
        &self.0
    }

    /// The record, owned.
    pub fn into_record(self) -> JobRecord {
        self.0.into_owned()
    }
}

/// The `worker` of a [`RunnerView`], serialized.
struct Worker<'a>(&'a JobRecord);

impl Serialize for Worker<'_> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
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

impl Serialize for RunnerView<'_> {
    fn serialize<Ser: Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::SerializeStruct;
        let r: &JobRecord = &self.0;
        let mut view = s.serialize_struct("RunnerView", 3)?;
        view.serialize_field("worker", &Worker(r))?;
        view.serialize_field("positions", &r.positions)?;
        view.serialize_field("stats", &r.stats)?;
        view.end()
    }
}

impl<'de> Deserialize<'de> for RunnerView<'_> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Parts {
            worker: serde_json::Map<String, serde_json::Value>,
            positions: serde_json::Value,
            stats: serde_json::Value,
        }
        let Parts {
            mut worker,
            positions,
            stats,
        } = Parts::deserialize(d)?;
        worker.remove("workerId");
        worker.insert("positions".into(), positions);
        worker.insert("stats".into(), stats);
        let record =
            serde_json::from_value(serde_json::Value::Object(worker)).map_err(D::Error::custom)?;
        Ok(RunnerView(Cow::Owned(record)))
    }
}

/// `GET /v1/runners/{jobId}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Runner<'a> {
    /// Always true.
    pub success: Succeeded,
    /// The runner.
    #[serde(flatten)]
    pub view: RunnerView<'a>,
}

/// `GET /v1/users/{userId}/runners`: the user's runners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UserRunners<'a> {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// The runners.
    pub workers: Vec<RunnerView<'a>>,
    /// Their counts.
    pub queue_stats: UserCounts,
}

/// The counts of a user's runners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// Always true.
    pub success: Succeeded,
    /// `system`.
    pub user_id: Cow<'static, str>,
    /// Always empty.
    pub workers: [(); 0],
    /// The fleet's counts.
    pub queue_stats: FleetCounts,
    /// The live nodes.
    pub nodes: NodeCounts,
}

/// The fleet's runner counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCounts {
    /// Live nodes.
    pub alive: u64,
    /// Their runner slots.
    pub capacity: u64,
    /// The runners they hold.
    pub runners: u64,
}

/// `GET /v1/runners/{jobId}/events`.
// `deny_unknown_fields` for the schema (`additionalProperties: false`) and for clients alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub expires_at: Option<u64>,
}

/// `PUT /v1/users/{userId}/entitlement`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct IssuedKey {
    /// Always true.
    pub success: Succeeded,
    /// Whose.
    pub user_id: UserId,
    /// The key's public id.
    pub key_id: String,
    /// The whole key, `rfk_<keyId>_<secret>`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^rfk_[0-9a-f]+_[0-9a-f]+$"))]
    pub api_key: String,
    /// When it was issued (ms).
    pub created_at: u64,
}

/// `GET /v1/users/{userId}/keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditTrail {
    /// Always true.
    pub success: Succeeded,
    /// Newest first.
    pub entries: Vec<AdminEntry>,
}

/// An answer that says only that it was done (`DELETE /v1/users/{userId}/keys/{keyId}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Done {
    /// Always true.
    pub success: Succeeded,
}

/// The SSE `gap` event's data (`GET /v1/events`): events after `lastEventId` may have been
/// trimmed before this client resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamGap {
    /// The id the client resumed from.
    pub last_event_id: String,
    /// What it means, for people.
    pub message: String,
}

/// The schemas that no derive can write: [`RunnerView`]'s (its `worker` is the record's schema
/// edited) and the constant fields'.
#[cfg(feature = "openapi")]
mod schema {
    use std::borrow::Cow;

    use utoipa::openapi::{RefOr, Schema};
    use utoipa::{PartialSchema, ToSchema};

    use super::RunnerView;
    use crate::ids::JobId;
    use crate::job::{JobRecord, Position, Stats};

    /// A runner's record as the API shows it: every field of the record but its positions and
    /// stats (they sit beside it, in [`RunnerView`]), and `workerId`, the seed's name of
    /// `jobId`. Its schema is the record's, edited, so a field the record gains shows here too.
    #[derive(Debug)]
    pub struct Worker;

    impl PartialSchema for Worker {
        fn schema() -> RefOr<Schema> {
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

    impl ToSchema for Worker {
        fn name() -> Cow<'static, str> {
            "Worker".into()
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            JobRecord::schemas(schemas);
        }
    }

    /// A runner as the status calls show it: `{worker, positions, stats}`.
    #[derive(utoipa::ToSchema)]
    #[allow(dead_code)]
    pub struct RunnerViewSchema {
        /// The record.
        worker: Worker,
        /// Open positions.
        positions: Vec<Position>,
        /// The run's statistics.
        stats: Stats,
    }

    impl PartialSchema for RunnerView<'_> {
        fn schema() -> RefOr<Schema> {
            RunnerViewSchema::schema()
        }
    }

    impl ToSchema for RunnerView<'_> {
        fn name() -> Cow<'static, str> {
            "RunnerView".into()
        }

        fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
            RunnerViewSchema::schemas(schemas);
        }
    }
}

/// `GET /v1/me`: who the key acts as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// Always true.
    pub success: Succeeded,
    /// `admin` (the admin key) or `user` (a user's API key).
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "user"))]
    pub role: Cow<'static, str>,
    /// The user a user key acts for; absent for the admin key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub user_id: Option<UserId>,
    /// The key's public id (`admin` for the admin key).
    pub key_id: String,
}

/// `GET /v1/runners`: runners matching the filters, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

    /// What a client reads back is the record the server sent, whole.
    #[test]
    fn a_runner_view_reads_back_into_the_record() {
        let r = record();
        let text = serde_json::to_string(&Runner {
            success: Succeeded,
            view: RunnerView::of(&r),
        })
        .unwrap();
        let back: Runner<'static> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.view.into_record(), r);
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
        let back: StartAccepted = serde_json::from_str(&text).unwrap();
        assert_eq!(back, body);
    }

    /// The constant fields refuse another value, which is how a batch's items are told apart.
    #[test]
    fn batch_items_read_back_as_what_they_were() {
        let text = r#"{"success":true,"accepted":1,"refused":1,"results":[
            {"index":0,"httpStatus":202,"success":true,"jobId":"job-1","workerId":"job-1","status":"queued","message":"m"},
            {"index":1,"httpStatus":403,"success":false,"error":{"code":"runner_limit_reached","message":"no","tier":"free","maxWorkers":1,"currentWorkers":1}}]}"#;
        let batch: BatchStartResult = serde_json::from_str(text).unwrap();
        assert!(matches!(
            batch.results[0],
            BatchItem::Accepted { index: 0, .. }
        ));
        let BatchItem::Refused { answer, .. } = &batch.results[1] else {
            panic!("refused: {batch:?}")
        };
        assert_eq!(answer.error.code, "runner_limit_reached");
        assert_eq!(answer.error.max_workers, Some(1));
        let again: Value = serde_json::to_value(&batch).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(text).unwrap());
        assert!(serde_json::from_str::<Succeeded>("false").is_err());
    }

    #[test]
    fn the_fleet_status_reads_back() {
        let text = r#"{"success":true,"userId":"system","workers":[],"queueStats":{"queuedJobs":1,"runningWorkers":2,"totalWorkers":3,"restartingJobs":0},"nodes":{"alive":1,"capacity":10,"runners":2}}"#;
        let status: FleetStatus = serde_json::from_str(text).unwrap();
        assert_eq!(status.nodes.capacity, 10);
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }
}
