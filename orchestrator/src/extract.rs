//! Request extractors that refuse bad input with an [`ApiError`] naming the field.

use axum::body::Bytes;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Unlike `axum::Json`, a refusal says which field is wrong
/// (`config.riskManagement.stopLossPercent`), as a JSON error.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge,
            other => ApiError::invalid("body", other.body_text()),
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses JSON, reporting the path of the first bad field. Anything but white space after the
/// JSON value (`{...}xyz`) is refused: the body is not valid JSON.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = deserialize(&mut *de)?;
    de.end().map_err(|e| {
        ApiError::invalid(
            "body",
            format!("body is not valid JSON: trailing characters ({e})"),
        )
    })?;
    Ok(value)
}

/// Reads `T` from an already parsed JSON value (an element of a batch), reporting the path of
/// the first bad field as [`parse`] does.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    deserialize(value)
}

fn deserialize<'de, T: DeserializeOwned, D>(de: D) -> Result<T, ApiError>
where
    D: serde::Deserializer<'de, Error = serde_json::Error>,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let message = inner.to_string();
        // A missing field is named in serde's message, not in the path (an unknown one is in
        // both).
        // So is a duplicate one (`{"workerId": .., "jobId": ..}`, an alias of it).
        let missing = message
            .strip_prefix("missing field `")
            .or_else(|| message.strip_prefix("duplicate field `"))
            .and_then(|rest| rest.split('`').next());
        let syntax = inner.is_syntax() || inner.is_eof();
        let field = match (path.as_str(), missing) {
            _ if syntax => "body".to_owned(),
            (".", Some(name)) => name.to_owned(),
            (p, Some(name)) => format!("{p}.{name}"),
            (".", None) => "body".to_owned(),
            (p, None) => p.to_owned(),
        };
        let message = if syntax {
            format!("body is not valid JSON: {message}")
        } else {
            message
        };
        ApiError::invalid(field, message)
    })
}

/// Path parameters. Unlike `axum::extract::Path`, a refusal (a parameter that is not UTF-8 once
/// percent-decoded) is a JSON error naming the parameter (`jobId`), not a plain-text 400.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => camel_case(key),
                    _ => "path".to_owned(),
                };
                Err(ApiError::invalid(field, e.body_text()))
            }
            Err(other) => Err(ApiError::invalid("path", other.body_text())),
        }
    }
}

/// `job_id` (the router's name) as the API spells it: `jobId`.
fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use runfleet_shared::job::StartRunnerRequest;

    fn field_of(body: serde_json::Value) -> String {
        match parse::<StartRunnerRequest>(body.to_string().as_bytes()) {
            Err(ApiError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(field_of(serde_json::json!({})), "userId");
        let mut v = serde_json::json!({
            "userId": "u", "strategyId": "s", "brokerId": "paper",
            "credentials": {"apiKey": "k", "apiSecret": "s"},
            "config": {"name": "n", "type": "scalping", "riskManagement": {"maxPositionSize": "x", "stopLossPercent": 1, "takeProfitPercent": 1}}
        });
        assert_eq!(field_of(v.clone()), "config.riskManagement.maxPositionSize");
        v["config"]["colour"] = "red".into();
        v["config"]["riskManagement"]["maxPositionSize"] = 1.into();
        assert_eq!(field_of(v), "config.colour");
        assert!(
            matches!(parse::<StartRunnerRequest>(b"{nope"), Err(ApiError::Invalid { field, .. }) if field == "body")
        );
    }

    #[test]
    fn trailing_characters_after_the_json_value_are_refused() {
        let body = br#"{"userId": "u", "mode": "hold"}xyz"#;
        assert!(matches!(
            parse::<crate::api::StopBody>(body),
            Err(ApiError::Invalid { field, message }) if field == "body" && message.contains("trailing")
        ));
        let body = br#"{"userId": "u"} {"userId": "v"}"#;
        assert!(parse::<crate::api::StopBody>(body).is_err());
        assert!(parse::<crate::api::StopBody>(b" {\"userId\": \"u\"} \n").is_ok());
    }

    #[test]
    fn a_duplicate_field_is_named() {
        let body = br#"{"userId": "u", "workerId": "a", "jobId": "b"}"#;
        assert!(matches!(
            parse::<crate::api::StopBody>(body),
            Err(ApiError::Invalid { field, .. }) if field == "workerId"
        ));
        let body = br#"{"userId": "u", "credentials": {"apiKey": "k", "apiKey": "k"}}"#;
        assert!(matches!(
            parse::<StartRunnerRequest>(body),
            Err(ApiError::Invalid { field, .. }) if field == "credentials.apiKey"
        ));
    }

    #[tokio::test]
    async fn a_path_parameter_that_is_not_utf8_is_named() {
        use axum::Router;
        use axum::body::Body;
        use axum::http::StatusCode;
        use axum::routing::get;
        use tower::ServiceExt;

        async fn handler(Path(job): Path<String>) -> String {
            job
        }
        let app = Router::new().route("/v1/runners/{job_id}", get(handler));
        let req = Request::get("/v1/runners/%FF").body(Body::empty()).unwrap();
        let resp = app.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
            "application/json"
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["field"], "jobId", "{body}");
        assert_eq!(camel_case("user_id"), "userId");
    }
}
