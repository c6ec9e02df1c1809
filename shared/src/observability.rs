//! Prometheus metrics: the one recorder of a process and the names and help texts of every
//! metric runfleet records (docs/operations.md lists them). Call sites use the `metrics`
//! crate's `counter!`/`gauge!`/`histogram!` with these names; `/metrics` handlers render
//! [`render`]. Labels are bounded: an outcome code or a status, never a job or user id.

use std::sync::OnceLock;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Jobs in the queue's ready list (fleet-wide, read from Redis at each scrape).
pub const QUEUE_READY_JOBS: &str = "runfleet_queue_ready_jobs";
/// Jobs claimed by nodes and not yet acknowledged (fleet-wide).
pub const QUEUE_PROCESSING_JOBS: &str = "runfleet_queue_processing_jobs";
/// Runners by status (`queued`, `running`, `restarting`, `failed_last_hour`; fleet-wide).
pub const RUNNERS: &str = "runfleet_runners";
/// Worker nodes alive (fleet-wide).
pub const NODES_ALIVE: &str = "runfleet_nodes_alive";
/// Runner slots of the nodes alive (fleet-wide).
pub const NODE_CAPACITY_SLOTS: &str = "runfleet_node_capacity_slots";
/// Runners held: fleet-wide on an orchestrator, this node's on a node.
pub const NODE_RUNNERS: &str = "runfleet_node_runners";
/// Worker nodes the current load needs (fleet-wide; see `FleetGauges::nodes_needed`).
pub const NODES_NEEDED: &str = "runfleet_nodes_needed";
/// Start requests by outcome: `accepted` or the refusal's error code.
pub const ADMISSIONS_TOTAL: &str = "runfleet_admissions_total";
/// Admissions per call of the batch admission function (single starts gathered, see
/// `store::coalesce`).
pub const ADMISSION_BATCH: &str = "runfleet_admission_batch";
/// From a job's creation to its claim by a node (recorded by the claiming node).
pub const START_TO_RUNNING_SECONDS: &str = "runfleet_start_to_running_seconds";
/// Crashed runners queued again by this orchestrator's sweeps.
pub const RESTARTS_TOTAL: &str = "runfleet_restarts_total";
/// Duration of this orchestrator's sweep ticks.
pub const SWEEP_DURATION_SECONDS: &str = "runfleet_sweep_duration_seconds";
/// Expired leases this orchestrator's sweeps turned into crashes.
pub const EXPIRED_LEASES_TOTAL: &str = "runfleet_expired_leases_total";
/// Store (Redis) operations that failed in this process.
pub const STORE_ERRORS_TOTAL: &str = "runfleet_store_errors_total";
/// Queue operations that failed in this process.
pub const QUEUE_ERRORS_TOTAL: &str = "runfleet_queue_errors_total";
/// Free runner slots of this node.
pub const NODE_FREE_SLOTS: &str = "runfleet_node_free_slots";
/// Jobs per non-empty claim batch of this node.
pub const NODE_CLAIM_BATCH_JOBS: &str = "runfleet_node_claim_batch_jobs";
/// Duration of this node's heartbeat (one renew script call).
pub const HEARTBEAT_SECONDS: &str = "runfleet_heartbeat_seconds";
/// Size of this node's heartbeat payload (runner reports as sent).
pub const HEARTBEAT_BYTES: &str = "runfleet_heartbeat_bytes";
/// Lease renewals the store refused (the runner was fenced).
pub const LEASE_RENEWALS_REFUSED_TOTAL: &str = "runfleet_lease_renewals_refused_total";
/// Strategy steps that failed (the runner crashed).
pub const STRATEGY_ERRORS_TOTAL: &str = "runfleet_strategy_errors_total";
/// Positions closed by stops that flatten.
pub const FLATTENS_TOTAL: &str = "runfleet_flattens_total";

/// Clients following `GET /v1/events` on this orchestrator.
pub const EVENT_CLIENTS: &str = "runfleet_event_clients";
/// Event clients dropped for falling `events.live_buffer` events behind.
pub const EVENT_CLIENTS_DROPPED_TOTAL: &str = "runfleet_event_clients_dropped_total";
/// Circuit breakers opened (fleet-wide, counted in Redis by the script that opens them).
pub const BREAKER_OPENINGS_TOTAL: &str = "runfleet_breaker_openings_total";

/// Histogram buckets of latencies in seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Histogram buckets of heartbeat sizes in bytes.
const BYTES_BUCKETS: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];
/// Histogram buckets of claim batch sizes.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];

/// The process's recorder, installed as the global `metrics` recorder on first use. Every
/// later call returns the same handle, so tests that build many routers in one process share
/// it instead of failing to install a second one.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(HEARTBEAT_BYTES.into()),
                    BYTES_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(NODE_CLAIM_BATCH_JOBS.into()),
                    BATCH_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(ADMISSION_BATCH.into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("the bucket lists are constant and non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (a test harness) keeps its place; this one still
        // renders whatever is recorded through it.
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    prometheus().render()
}

/// The kind of a metric, for its description.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: name, kind, unit and help text.
const HELP: &[(&str, Kind, Option<Unit>, &str)] = &[
    (
        QUEUE_READY_JOBS,
        Kind::Gauge,
        None,
        "Jobs in the queue's ready list (fleet-wide).",
    ),
    (
        QUEUE_PROCESSING_JOBS,
        Kind::Gauge,
        None,
        "Jobs claimed by nodes, not yet acknowledged (fleet-wide).",
    ),
    (
        RUNNERS,
        Kind::Gauge,
        None,
        "Runners by status (fleet-wide).",
    ),
    (
        NODES_ALIVE,
        Kind::Gauge,
        None,
        "Worker nodes alive (fleet-wide).",
    ),
    (
        NODE_CAPACITY_SLOTS,
        Kind::Gauge,
        None,
        "Runner slots of the nodes alive.",
    ),
    (
        NODE_RUNNERS,
        Kind::Gauge,
        None,
        "Runners held by the node(s).",
    ),
    (
        NODES_NEEDED,
        Kind::Gauge,
        None,
        "Worker nodes the current load needs.",
    ),
    (
        ADMISSIONS_TOTAL,
        Kind::Counter,
        None,
        "Start requests by outcome.",
    ),
    (
        ADMISSION_BATCH,
        Kind::Histogram,
        None,
        "Single starts per call of the batch admission function.",
    ),
    (
        START_TO_RUNNING_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        "From a job's creation to its first claim by a node.",
    ),
    (
        RESTARTS_TOTAL,
        Kind::Counter,
        None,
        "Crashed runners queued again by sweeps.",
    ),
    (
        SWEEP_DURATION_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Duration of sweep ticks.",
    ),
    (
        EXPIRED_LEASES_TOTAL,
        Kind::Counter,
        None,
        "Expired leases handled by sweeps.",
    ),
    (
        STORE_ERRORS_TOTAL,
        Kind::Counter,
        None,
        "Failed store (Redis) operations.",
    ),
    (
        QUEUE_ERRORS_TOTAL,
        Kind::Counter,
        None,
        "Failed queue operations.",
    ),
    (
        NODE_FREE_SLOTS,
        Kind::Gauge,
        None,
        "Free runner slots of this node.",
    ),
    (
        NODE_CLAIM_BATCH_JOBS,
        Kind::Histogram,
        None,
        "Jobs per non-empty claim batch.",
    ),
    (
        HEARTBEAT_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        "Duration of a heartbeat (renew script).",
    ),
    (
        HEARTBEAT_BYTES,
        Kind::Histogram,
        Some(Unit::Bytes),
        "Size of a heartbeat's reports.",
    ),
    (
        LEASE_RENEWALS_REFUSED_TOTAL,
        Kind::Counter,
        None,
        "Lease renewals refused (runner fenced).",
    ),
    (
        STRATEGY_ERRORS_TOTAL,
        Kind::Counter,
        None,
        "Strategy runs that failed.",
    ),
    (
        FLATTENS_TOTAL,
        Kind::Counter,
        None,
        "Positions closed by flattening stops.",
    ),
    (
        EVENT_CLIENTS,
        Kind::Gauge,
        None,
        "Clients following the live event stream.",
    ),
    (
        EVENT_CLIENTS_DROPPED_TOTAL,
        Kind::Counter,
        None,
        "Live event clients dropped for being too slow.",
    ),
    (
        BREAKER_OPENINGS_TOTAL,
        Kind::Counter,
        None,
        "Circuit breakers opened (fleet-wide).",
    ),
];

/// Describes every metric (help text, unit) to the recorder just installed.
fn describe() {
    for &(name, kind, unit, help) in HELP {
        match (kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(name, help),
            (Kind::Gauge, _) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_values_render_in_the_text_format() {
        prometheus();
        metrics::counter!(ADMISSIONS_TOTAL, "outcome" => "accepted").increment(2);
        let text = render();
        assert!(
            text.contains("runfleet_admissions_total{outcome=\"accepted\"} 2"),
            "{text}"
        );
        assert!(std::ptr::eq(prometheus(), prometheus()));
    }
}
