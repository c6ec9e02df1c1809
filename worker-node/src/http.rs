//! The worker node's HTTP: an axum router run as a lifecycle service ([`http_service`], from
//! `runfleet_shared::http`, shared with the orchestrator), and the node's own small listener
//! ([`node_router`]: `GET /metrics` and `GET /healthz`, on `node.http_bind`).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use runfleet_shared::observability;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;

use crate::WorkerNode;

pub use runfleet_shared::http::{http_service, http_service_with};

/// The worker node's listener: `GET /metrics` (this node's metrics, Prometheus text; it shows
/// counts only, no job or user ids, so it needs no key and belongs on a private network) and
/// `GET /healthz` (200 while the node's services run, 503 otherwise: a liveness and readiness
/// probe).
pub fn node_router<S: FleetStore, Q: JobQueue + Clone>(node: WorkerNode<S, Q>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    observability::render(),
                )
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let node = node.clone();
                async move {
                    let status = if node.is_serving() {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let body = serde_json::json!({
                        "status": if node.is_serving() { "ok" } else { "stopped" },
                        "node": node.id(),
                        "runners": node.runner_count(),
                    });
                    (status, axum::Json(body)).into_response()
                }
            }),
        )
}
