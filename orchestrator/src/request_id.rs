//! Request ids: every answer carries an `x-request-id`, taken from the request when the client
//! sent a usable one and made up (a UUID) otherwise. The id is a field of the request's log span,
//! so every log line of the request carries it, and the admin audit trail records it.

use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId as TowerRequestId;

use crate::error::ApiError;

/// The header (tower-http's layers use the same name).
const X_REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a client; a longer one is replaced.
const MAX_LEN: usize = 128;

/// Whether a client's request id can be kept: short, and only characters that are safe in a
/// log line and a header (letters, digits, `-`, `_`, `.`, `:`).
fn usable(id: &HeaderValue) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// Middleware run before tower-http's `SetRequestId`: drops a client's id that is not
/// [usable], so that a fresh one is made instead of logging and echoing whatever was sent.
pub async fn drop_unusable(mut req: Request, next: Next) -> Response {
    if req.headers().get(X_REQUEST_ID).is_some_and(|v| !usable(v)) {
        req.headers_mut().remove(X_REQUEST_ID);
    }
    next.run(req).await
}

/// The request's id, for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The id of a request that went through the router's layers (empty otherwise).
    pub fn of(extensions: &axum::http::Extensions) -> Self {
        Self(
            extensions
                .get::<TowerRequestId>()
                .and_then(|id| id.header_value().to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self::of(&parts.extensions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(usable(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!usable(&HeaderValue::from_static("")));
        assert!(!usable(&HeaderValue::from_static("has space")));
        assert!(!usable(&HeaderValue::from_static("quote\"")));
        assert!(!usable(
            &HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap()
        ));
    }
}
