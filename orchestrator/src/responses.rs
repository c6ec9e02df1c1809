//! How the API's answers go out. The answer types themselves are in
//! [`runfleet_shared::api`] (re-exported here), shared with `runfleet-client`, so that the
//! server and its clients read and write one definition.
//!
//! An answer goes out through [`Answer`], which serializes it to a `serde_json::Value` first:
//! the keys of every object, nested ones included, then come out in sorted order, byte for
//! byte what clients have received since the answers were `json!` maps.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use runfleet_shared::api::*;

/// An answer with its status: `T` as a JSON body, its keys sorted at every level.
#[derive(Debug)]
pub struct Answer<T>(pub StatusCode, pub T);

impl<T> Answer<T> {
    /// `body` with 200.
    pub fn ok(body: T) -> Self {
        Answer(StatusCode::OK, body)
    }
}

impl<T: Serialize> IntoResponse for Answer<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.1) {
            Ok(body) => (self.0, Json(body)).into_response(),
            Err(e) => crate::error::ApiError::Internal(e.into()).into_response(),
        }
    }
}
