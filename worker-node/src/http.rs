//! HTTP serving shared by both binaries: an axum router run as a lifecycle service
//! ([`http_service`]), and the worker node's own small listener ([`node_router`]: `GET /metrics`
//! and `GET /healthz`, on `node.http_bind`).

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use runfleet::lifecycle::{RunnerOptions, ServiceRunner};
use runfleet::observability;
use runfleet::queue::JobQueue;
use runfleet::store::FleetStore;
use tokio_util::sync::CancellationToken;

use crate::WorkerNode;

/// An HTTP server as a service: serves `router` until its token is cancelled, then finishes
/// the requests in flight. A restart listens again on the same address.
pub fn http_service(
    name: &str,
    listener: tokio::net::TcpListener,
    router: Router,
) -> ServiceRunner {
    http_service_with(name, listener, router, || {})
}

/// [`http_service`] that calls `on_stop` as its graceful shutdown begins: e.g. to end
/// long-lived responses (event streams) that would otherwise hold it until the deadline.
pub fn http_service_with(
    name: &str,
    listener: tokio::net::TcpListener,
    router: Router,
    on_stop: impl Fn() + Clone + Send + Sync + 'static,
) -> ServiceRunner {
    let addr = listener.local_addr().ok();
    let first = Arc::new(std::sync::Mutex::new(Some(listener)));
    ServiceRunner::new(
        RunnerOptions::new(name.to_owned()),
        move |token: CancellationToken| {
            let (first, router, on_stop) = (first.clone(), router.clone(), on_stop.clone());
            async move {
                let taken = first.lock().unwrap_or_else(|p| p.into_inner()).take();
                let listener = match (taken, addr) {
                    (Some(l), _) => l,
                    (None, Some(addr)) => tokio::net::TcpListener::bind(addr).await?,
                    (None, None) => return Err(std::io::Error::other("no address to listen on")),
                };
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        token.cancelled().await;
                        on_stop();
                    })
                    .await
            }
        },
    )
}

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
