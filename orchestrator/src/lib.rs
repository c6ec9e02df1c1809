//! runfleet's orchestrator as a library: the HTTP API ([`app`]) over any [`FleetStore`] and
//! [`JobQueue`]. The `runfleet-orchestrator` binary serves it on Redis, or in the embedded mode
//! on the in-memory backend with a worker pool in the same process.

pub mod api;
pub mod audit;
pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod openapi;
pub mod overview;
pub mod rate_limit;
pub mod request_id;
pub mod responses;
pub mod seed;
pub mod state;
pub mod sweeper;
pub mod ui;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, delete, get, post};
use runfleet_shared::config::HttpSettings;
use runfleet_shared::queue::JobQueue;
use runfleet_shared::store::FleetStore;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use state::AppState;

/// One route of the API: its path and the handlers of its methods.
#[derive(Debug)]
pub struct Route<S, Q> {
    /// The path, with `{name}` parameters.
    pub path: &'static str,
    /// Its methods' handlers.
    pub methods: MethodRouter<AppState<S, Q>>,
}

impl<S, Q> Route<S, Q> {
    fn new(path: &'static str, methods: MethodRouter<AppState<S, Q>>) -> Self {
        Route { path, methods }
    }
}

/// The API's routes, in two lists. [`app`] builds the router from them and nothing else, so
/// they are also the list the OpenAPI test holds the document to.
#[derive(Debug)]
pub struct Routes<S, Q> {
    /// The REST API.
    pub api: Vec<Route<S, Q>>,
    /// The seed's routes, kept for clients written against it, answered in the seed's shapes.
    pub seed: Vec<Route<S, Q>>,
}

/// The API's [`Routes`].
pub fn routes<S: FleetStore, Q: JobQueue + Clone>(http: &HttpSettings) -> Routes<S, Q> {
    let api = vec![
        Route::new("/healthz", get(api::healthz::<S, Q>)),
        Route::new("/openapi.json", get(openapi::serve)),
        Route::new("/metrics", get(api::metrics::<S, Q>)),
        Route::new(
            "/v1/runners",
            post(api::start::<S, Q>).get(overview::list::<S, Q>),
        ),
        Route::new("/v1/me", get(overview::me::<S, Q>)),
        Route::new("/v1/fleet/history", get(overview::history::<S, Q>)),
        Route::new(
            "/v1/runners/batch",
            post(api::start_batch::<S, Q>)
                .layer(DefaultBodyLimit::max(http.batch_body_limit_bytes)),
        ),
        Route::new("/v1/runners/{job_id}", get(api::runner::<S, Q>)),
        Route::new("/v1/runners/{job_id}/stop", post(api::stop::<S, Q>)),
        Route::new("/v1/runners/{job_id}/pnl", get(overview::pnl::<S, Q>)),
        Route::new(
            "/v1/runners/{job_id}/events",
            get(api::runner_events::<S, Q>),
        ),
        Route::new("/v1/users/{user_id}/runners", get(api::status::<S, Q>)),
        Route::new(
            "/v1/users/{user_id}/entitlement",
            get(api::entitlement::<S, Q>).put(api::upgrade::<S, Q>),
        ),
        Route::new("/v1/events", get(events::stream::<S, Q>)),
        Route::new("/v1/nodes", get(api::nodes::<S, Q>)),
        Route::new("/v1/audit", get(audit::trail::<S, Q>)),
        Route::new(
            "/v1/users/{user_id}/keys",
            post(api::create_key::<S, Q>).get(api::list_keys::<S, Q>),
        ),
        Route::new(
            "/v1/users/{user_id}/keys/{key_id}",
            delete(api::revoke_key::<S, Q>),
        ),
    ];
    let seed = vec![
        Route::new("/runner/start", post(api::start::<S, Q>)),
        Route::new("/runner/stop", post(api::stop_compat::<S, Q>)),
        Route::new("/runner/status", get(api::status_compat::<S, Q>)),
    ];
    Routes { api, seed }
}

/// The API's router.
pub fn app<S: FleetStore, Q: JobQueue + Clone>(state: AppState<S, Q>) -> Router {
    let http = &state.settings.http;
    let timeout = Duration::from_millis(http.request_timeout_ms);
    let body_limit = http.body_limit_bytes;
    let rate_limits = std::sync::Arc::new(rate_limit::RateLimits::new(&state.settings.rate_limits));
    let Routes { api, seed } = routes::<S, Q>(http);
    let seed = seed
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.methods))
        .route_layer(axum::middleware::from_fn(seed::seed_shapes));
    api.into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.methods))
        .merge(seed)
        .merge(ui::routes())
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        // Read by the `Caller` extractor, so a call over its key's limit is refused there.
        .layer(axum::Extension(rate_limits))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        // Outermost last: the id is settled first, so the log span and every answer carry it.
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::from_fn(request_id::drop_unusable))
        .with_state(state)
}

/// The log span of one request: its method, path and request id, on every line it logs.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id::RequestId::of(req.extensions()).0,
    )
}
