//! The seed's routes (`/runner/start`, `/runner/stop`, `/runner/status`) answer in the seed's
//! shapes; this is the one place where they differ from the `/v1` API (docs/api.md, "The
//! seed's routes"):
//!
//! - money in `positions` and `stats` is a JSON number (`"amount": 100`, `"totalPnL": 450.5`),
//!   as the seed's clients read it, where `/v1` keeps exact decimal strings;
//! - an error is `{"success": false, "error": "<message>", "code": "...", "field": "...", ...}`
//!   (the seed's clients test `error` as a string), where `/v1` nests `{code, message, field,
//!   ...}` under `error`.
//!
//! The handlers are the `/v1` ones; a middleware rewrites their JSON answers.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Map, Value};

/// Money fields of positions and stats, turned into numbers.
const MONEY: &[&str] = &[
    "amount",
    "entryPrice",
    "markPrice",
    "unrealizedPnL",
    "realizedPnL",
    "totalPnL",
    "winRate",
    "fees",
    "maxDrawdown",
    "profitFactor",
];

/// Largest answer rewritten (a user's status with many runners stays well below).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Middleware for the seed's routes: rewrites each JSON answer into the seed's shape.
pub async fn seed_shapes(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    to_seed_shape(&mut value);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&value).map_or(Body::from(bytes), Body::from);
    Response::from_parts(parts, body)
}

/// Rewrites one answer (see the module docs).
pub fn to_seed_shape(value: &mut Value) {
    let Value::Object(top) = value else { return };
    if let Some(Value::Object(mut error)) = top.remove("error") {
        let message = error.remove("message").unwrap_or(Value::Null);
        top.extend(error);
        top.insert("error".into(), message);
    }
    numbers_in(top);
}

/// Turns the money of every `positions` entry and `stats` object below `object` into numbers.
fn numbers_in(object: &mut Map<String, Value>) {
    for (key, v) in object.iter_mut() {
        match (key.as_str(), v) {
            ("positions", Value::Array(items)) => {
                for item in items {
                    if let Value::Object(p) = item {
                        money_to_numbers(p);
                    }
                }
            }
            ("stats", Value::Object(stats)) => money_to_numbers(stats),
            (_, Value::Object(inner)) => numbers_in(inner),
            (_, Value::Array(items)) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        numbers_in(inner);
                    }
                }
            }
            _ => {}
        }
    }
}

fn money_to_numbers(object: &mut Map<String, Value>) {
    for key in MONEY {
        if let Some(v) = object.get_mut(*key)
            && let Some(n) = v
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .and_then(serde_json::Number::from_f64)
        {
            *v = Value::Number(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn money_becomes_numbers_and_errors_strings() {
        let mut v = json!({
            "success": true,
            "workers": [{"worker": {"workerId": "w"},
                "positions": [{"instrumentName": "BTC-PERPETUAL", "amount": "100",
                    "entryPrice": "50000", "unrealizedPnL": "-0.00002281", "currency": "BTC"}],
                "stats": {"totalTrades": 10, "totalPnL": "450", "winRate": "70",
                    "profitFactor": null, "currency": "USD"}}],
        });
        to_seed_shape(&mut v);
        let w = &v["workers"][0];
        assert_eq!(w["positions"][0]["amount"], json!(100.0));
        assert_eq!(w["positions"][0]["entryPrice"], json!(50000.0));
        assert_eq!(w["positions"][0]["unrealizedPnL"], json!(-0.00002281));
        assert_eq!(w["positions"][0]["currency"], "BTC", "text stays text");
        assert_eq!(w["stats"]["totalPnL"], json!(450.0));
        assert_eq!(w["stats"]["winRate"], json!(70.0));
        assert_eq!(w["stats"]["totalTrades"], 10);
        assert!(w["stats"]["profitFactor"].is_null());

        let mut e = json!({"success": false, "error": {"code": "runner_limit_reached",
            "message": "runner limit reached: tier free allows 1", "field": null}});
        to_seed_shape(&mut e);
        assert_eq!(e["error"], "runner limit reached: tier free allows 1");
        assert_eq!(e["code"], "runner_limit_reached");
    }
}
