//! Request extractors that refuse bad input with an [`ApiError`] naming the field.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header;
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

/// Parses JSON, reporting the path of the first bad field.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let message = inner.to_string();
        // A missing field is named in serde's message, not in the path (an unknown one is in
        // both).
        let missing = message
            .strip_prefix("missing field `")
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

#[cfg(test)]
mod tests {
    use super::*;
    use runfleet::job::StartRunnerRequest;

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
}
