//! The API's one error type. Every refusal is a JSON body
//! `{"success": false, "error": {"code", "message", "field"?}}` with a fitting status; internal
//! details are logged, never returned.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub use runfleet_shared::api::{ErrorBody, ErrorDetail};
use runfleet_shared::observability;
use runfleet_shared::queue::QueueError;
use runfleet_shared::redis_pool::RedisError;
use runfleet_shared::store::StoreError;

use crate::responses::{Answer, Refused};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is malformed or out of range. Names the field.
    #[error("{message}")]
    Invalid {
        /// JSON path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The body is not JSON (wrong content type).
    #[error("request body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    /// The body exceeds the size limit.
    #[error("request body is larger than the server accepts (http.body_limit_bytes)")]
    PayloadTooLarge,
    /// No credentials, or wrong ones.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The user holds every runner slot of their tier.
    #[error(
        "runner limit reached: user has {current} of {limit} runners allowed by tier {tier}; stop one or upgrade"
    )]
    LimitReached {
        /// Tier in force.
        tier: String,
        /// Its limit.
        limit: u32,
        /// Slots held.
        current: u32,
    },
    /// The user strategy's circuit breaker is open: it failed too often lately.
    #[error(
        "strategy {strategy} failed too often recently; its circuit breaker refuses starts for {retry_after_ms} ms more"
    )]
    CircuitOpen {
        /// The user's strategy id.
        strategy: String,
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The fleet holds as many runners as it is configured for.
    #[error("the fleet is at capacity (limits.max_runners); retry later")]
    FleetFull {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The queue holds as many waiting jobs as it is configured for.
    #[error("too many runners are waiting to start (limits.max_queued); retry later")]
    QueueFull {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// The caller's key made more calls of this kind than `rate_limits` allow.
    #[error("too many {class} requests with this API key; retry after the Retry-After")]
    RateLimited {
        /// `start`, `stop` or `read`.
        class: &'static str,
        /// When the next call of this kind will be allowed.
        retry_after_ms: u64,
    },
    /// No such resource (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists but not for this method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// Shared state (Redis) cannot be reached.
    #[error("the fleet's state store is unavailable; retry shortly")]
    Unavailable(#[source] anyhow::Error),
    /// The job queue (Redis lists or RabbitMQ) cannot be reached, or did not confirm in time.
    #[error("the job queue is unavailable; retry shortly")]
    QueueUnavailable(#[source] anyhow::Error),
    /// A bug or corrupt data.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// An [`ApiError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The stable machine code of this error (the body's `error.code`, and the `outcome` label
    /// of `runfleet_admissions_total` for refused starts).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::LimitReached { .. } => (StatusCode::FORBIDDEN, "runner_limit_reached"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ApiError::FleetFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "fleet_full"),
            ApiError::QueueFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ApiError::QueueUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER: Duration = Duration::from_secs(2);

impl ApiError {
    /// The status and JSON body of this refusal (`{"success": false, "error": {...}}`), as a
    /// whole answer or one item of a batch's answer.
    pub fn status_and_body(&self) -> (StatusCode, ErrorBody) {
        let (status, error) = self.parts();
        (
            status,
            ErrorBody {
                success: Refused,
                error,
            },
        )
    }

    /// This error inside element `at` of the request (`runners[3]`): a field it names is
    /// prefixed with that path.
    pub fn within(self, at: &str) -> Self {
        match self {
            ApiError::Invalid { field, message } => ApiError::Invalid {
                field: match field.as_str() {
                    "body" => at.to_owned(),
                    f if f.starts_with('[') => format!("{at}{f}"),
                    f => format!("{at}.{f}"),
                },
                message,
            },
            other => other,
        }
    }

    fn parts(&self) -> (StatusCode, ErrorDetail) {
        let (status, code) = self.status_and_code();
        let mut error = ErrorDetail {
            code: code.into(),
            message: self.to_string(),
            field: None,
            tier: None,
            max_workers: None,
            current_workers: None,
            retry_after_seconds: None,
        };
        if let ApiError::Invalid { field, .. } = &self {
            error.field = Some(field.clone());
        }
        if let ApiError::LimitReached {
            tier,
            limit,
            current,
        } = &self
        {
            error.tier = Some(tier.clone());
            error.max_workers = Some(*limit);
            error.current_workers = Some(*current);
        }
        let retry_after = match &self {
            ApiError::CircuitOpen { retry_after_ms, .. }
            | ApiError::FleetFull { retry_after_ms }
            | ApiError::QueueFull { retry_after_ms }
            | ApiError::RateLimited { retry_after_ms, .. } => {
                Some(retry_after_ms.div_ceil(1000).max(1))
            }
            ApiError::Unavailable(_) | ApiError::QueueUnavailable(_) => Some(RETRY_AFTER.as_secs()),
            _ => None,
        };
        error.retry_after_seconds = retry_after;
        (status, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "store unavailable"),
            ApiError::QueueUnavailable(e) => tracing::warn!(error = %e, "queue unavailable"),
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            _ => {}
        }
        let (status, body) = self.status_and_body();
        let retry_after = body.error.retry_after_seconds;
        let mut response = Answer(status, body).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        metrics::counter!(observability::STORE_ERRORS_TOTAL).increment(1);
        match e {
            StoreError::Unavailable(_) | StoreError::Contended(_) => {
                ApiError::Unavailable(e.into())
            }
            StoreError::Conflict { .. } | StoreError::Data(_) | StoreError::Fenced => {
                ApiError::Internal(e.into())
            }
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        metrics::counter!(observability::QUEUE_ERRORS_TOTAL).increment(1);
        match e {
            QueueError::Redis(RedisError::Data(_)) => ApiError::Internal(e.into()),
            _ => ApiError::QueueUnavailable(e.into()),
        }
    }
}
