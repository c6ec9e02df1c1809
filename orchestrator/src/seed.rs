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
//! The handlers are the `/v1` ones; a middleware rewrites their JSON answers. The schemas of
//! those answers are the `/v1` ones rewritten the same way ([`seed_schemas`]).

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

/// Where a schema's `$ref`s point.
const SCHEMAS: &str = "#/components/schemas/";

/// The name of the schema `schema` refers to, if it is a `$ref` to one.
fn schema_ref(schema: &Value) -> Option<&str> {
    schema.get("$ref")?.as_str()?.strip_prefix(SCHEMAS)
}

/// The seed's versions of the answer schemas `answers` (each `Seed<name>`), derived from the
/// `/v1` `schemas` by the rule [`to_seed_shape`] applies to the answers themselves: every
/// reference to `Money` (an exact decimal string) becomes a JSON number, a schema that holds
/// money somewhere below gets a `Seed` version that refers to the others, and an answer's
/// `error` object is taken apart (its fields beside `error`, which becomes its message).
pub fn seed_schemas(schemas: &Map<String, Value>, answers: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for name in answers {
        let mut schema = seed_version(schemas, &schemas[*name], &mut out);
        flatten_error(schemas, &mut schema);
        if let Some(Value::String(d)) = schema.get_mut("description") {
            d.push_str(" On the seed's routes: money as JSON numbers, `error` the message.");
        }
        out.insert(format!("Seed{name}"), schema);
    }
    out
}

/// `schema` with money as numbers and its references to schemas holding money pointed at
/// their `Seed` versions, which are added to `out`.
fn seed_version(
    schemas: &Map<String, Value>,
    schema: &Value,
    out: &mut Map<String, Value>,
) -> Value {
    match schema {
        Value::Object(o) => {
            if let Some(name) = schema_ref(schema) {
                let mut at = o.clone();
                if name == "Money" {
                    at.remove("$ref");
                    at.insert("type".into(), "number".into());
                } else if holds_money(schemas, name, &mut Vec::new()) {
                    let seed = format!("Seed{name}");
                    if !out.contains_key(&seed) {
                        out.insert(seed.clone(), Value::Null); // claimed: a cycle stops here
                        let version = seed_version(schemas, &schemas[name], out);
                        out.insert(seed.clone(), version);
                    }
                    at.insert("$ref".into(), format!("{SCHEMAS}{seed}").into());
                }
                return Value::Object(at);
            }
            Value::Object(
                o.iter()
                    .map(|(k, v)| (k.clone(), seed_version(schemas, v, out)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| seed_version(schemas, v, out))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether the schema `name` refers to `Money`, itself or through the schemas it refers to.
fn holds_money<'a>(
    schemas: &'a Map<String, Value>,
    name: &'a str,
    seen: &mut Vec<&'a str>,
) -> bool {
    fn refs<'a>(v: &'a Value, found: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                if let Some(name) = schema_ref(v) {
                    found.push(name);
                }
                o.values().for_each(|x| refs(x, found));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, found)),
            _ => {}
        }
    }
    if name == "Money" {
        return true;
    }
    if seen.contains(&name) {
        return false;
    }
    seen.push(name);
    let mut found = Vec::new();
    if let Some(schema) = schemas.get(name) {
        refs(schema, &mut found);
    }
    found.into_iter().any(|n| holds_money(schemas, n, seen))
}

/// The schema side of [`to_seed_shape`]'s error rewrite: an `error` property that is an
/// object (through its `$ref`) is replaced by its fields, `message` becoming `error`.
fn flatten_error(schemas: &Map<String, Value>, schema: &mut Value) {
    let Some(error) = schema.pointer("/properties/error") else {
        return;
    };
    let detail = match schema_ref(error) {
        Some(name) => &schemas[name],
        None => error,
    };
    let (Some(fields), required) = (
        detail["properties"].as_object().cloned(),
        detail["required"].clone(),
    ) else {
        return;
    };
    let props = schema["properties"].as_object_mut().expect("properties");
    props.remove("error");
    for (k, v) in fields {
        props.insert(if k == "message" { "error".into() } else { k }, v);
    }
    let all = schema["required"].as_array_mut();
    if let (Some(all), Value::Array(more)) = (all, required) {
        for r in more {
            let r = if r == "message" {
                Value::from("error")
            } else {
                r
            };
            if !all.contains(&r) {
                all.push(r);
            }
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

    /// The seed's schemas in the document say what [`to_seed_shape`] does to the answers.
    #[test]
    fn seed_schemas_have_money_as_numbers_and_errors_as_strings() {
        let doc = crate::openapi::document();
        let schema = |name: &str| &doc["components"]["schemas"][name];
        assert_eq!(
            schema("Position")["properties"]["amount"]["$ref"],
            "#/components/schemas/Money"
        );
        assert_eq!(
            schema("SeedPosition")["properties"]["amount"]["type"],
            "number"
        );
        assert_eq!(
            schema("SeedStats")["properties"]["totalPnL"]["type"],
            "number"
        );
        assert_eq!(
            schema("SeedStats")["properties"]["totalTrades"],
            schema("Stats")["properties"]["totalTrades"]
        );
        let items = &schema("SeedUserRunners")["properties"]["workers"]["items"]["$ref"];
        assert_eq!(items, "#/components/schemas/SeedRunnerView");
        let error = schema("SeedErrorBody");
        assert_eq!(error["properties"]["error"]["type"], "string");
        assert!(error["properties"]["code"].is_object());
        assert!(
            error["required"]
                .as_array()
                .unwrap()
                .contains(&json!("code"))
        );
        let flatten = schema("SeedFlattenFailed");
        assert_eq!(
            flatten["properties"]["error"]["type"],
            json!(["string", "null"])
        );
        assert_eq!(
            flatten["properties"]["positions"]["items"]["$ref"],
            "#/components/schemas/SeedPosition"
        );
        // No schema without money gets a seed version.
        assert!(schema("SeedWorker").is_null());
    }
}
