//! HTTP serving shared by both binaries: an axum router run as a lifecycle service.

use std::sync::Arc;

use axum::Router;
use runfleet_lifecycle::{RunnerOptions, ServiceRunner};
use tokio_util::sync::CancellationToken;

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
