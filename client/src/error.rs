//! What a call can fail with: a refusal by the API (its status and its `error` body, machine
//! code first), or no usable answer at all (nothing listening, no answer in time, an answer
//! that is not what the API sends).

use std::time::Duration;

use runfleet_shared::api::{ErrorBody, ErrorDetail};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with a refusal: its HTTP status and its `error` (`code`, `message`,
    /// `field`, and what the refusal adds, such as `tier` and `maxWorkers`).
    #[error("{} (HTTP {status}): {}", error.code, error.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The body's `error`.
        error: Box<ErrorDetail>,
        /// The `Retry-After` header, when the answer had one.
        retry_after: Option<Duration>,
    },
    /// No connection to the server (nothing listening, DNS, TLS, a connection cut mid-answer).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What the transport said.
        #[source]
        source: reqwest::Error,
    },
    /// The server did not answer in time.
    #[error("no answer from {url} in time")]
    Timeout {
        /// The server's base URL.
        url: String,
    },
    /// An answer that is not what the API sends for this call.
    #[error("cannot read the answer (HTTP {status}): {message}")]
    Decode {
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        message: String,
    },
    /// The server URL given cannot be used.
    #[error("invalid server URL {url:?}: {message}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why.
        message: String,
    },
}

impl ClientError {
    /// The refusal of an answer with `status` and `body`: the API's own `error` when the body
    /// is one, else (a proxy's page, the 408 of a request timeout) an `error` whose code is
    /// `http_<status>` and whose message is the body's start.
    pub(crate) fn refusal(status: u16, body: &[u8], retry_after: Option<Duration>) -> Self {
        let error = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => b.error,
            Err(_) => ErrorDetail {
                code: format!("http_{status}").into(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                field: None,
                tier: None,
                max_workers: None,
                current_workers: None,
                retry_after_seconds: None,
            },
        };
        let retry_after = retry_after.or(error.retry_after_seconds.map(Duration::from_secs));
        ClientError::Api {
            status,
            error: Box::new(error),
            retry_after,
        }
    }

    /// A transport failure talking to `url`.
    pub(crate) fn transport(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            ClientError::Timeout { url: url.into() }
        } else {
            ClientError::Unreachable {
                url: url.into(),
                source: e,
            }
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's machine code of a refusal (`runner_limit_reached`, `not_found`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => Some(&error.code),
            _ => None,
        }
    }

    /// The field a refusal names (`invalid_request`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ClientError::Api { error, .. } => error.field.as_deref(),
            _ => None,
        }
    }

    /// The whole `error` of a refusal.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            ClientError::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the call is worth making again as it is: a 503 (the API changed nothing).
    pub fn is_retryable(&self) -> bool {
        self.status() == Some(503)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_refusal_carries_its_code_field_and_status() {
        let body = br#"{"success":false,"error":{"code":"invalid_request","message":"bad","field":"config.type"}}"#;
        let e = ClientError::refusal(400, body, None);
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.code(), Some("invalid_request"));
        assert_eq!(e.field(), Some("config.type"));
        assert_eq!(e.to_string(), "invalid_request (HTTP 400): bad");
        assert!(!e.is_retryable());
    }

    #[test]
    fn a_body_that_is_no_api_error_still_names_its_status() {
        let e = ClientError::refusal(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.code(), Some("http_502"));
        assert_eq!(e.detail().unwrap().message, "<html>bad gateway</html>");
    }

    #[test]
    fn the_body_retry_after_serves_when_no_header_came() {
        let body = br#"{"success":false,"error":{"code":"fleet_full","message":"full","retryAfterSeconds":3}}"#;
        let e = ClientError::refusal(503, body, None);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.is_retryable());
    }
}
