//! Keeps the generated OpenAPI document (`runfleet_orchestrator::openapi`) honest: the
//! document the server serves at `/openapi.json` lists exactly the routes the router serves
//! (the paths of `routes()`, which the router is built from, probed through the router with
//! every method, and the other way), its catalog enums and strategy parameters are the
//! catalog's, its stated bounds and closed objects are what the server enforces, and its
//! security claims hold. No source text is read.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use runfleet_orchestrator::{AppState, Routes, app, audit, openapi, routes};
use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::job::{JobStatus, StartRunnerRequest, StopMode};
use runfleet_shared::queue::MemoryQueue;
use runfleet_shared::store::{FleetPolicy, MemoryStore};
use runfleet_shared::tier::Tier;
use runfleet_trading::catalog::{BROKERS, INSTRUMENTS, TIMEFRAMES};
use runfleet_trading::strategy::{self, Param, STRATEGIES};
use runfleet_trading::validate;
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "openapi-admin";
const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The document as the server serves it.
fn doc() -> Value {
    serde_json::from_str(&openapi::OPENAPI).expect("the document is valid JSON")
}

fn router() -> Router {
    let mut settings = Settings::default();
    settings.security.admin_key = Some(ADMIN.into());
    let state = AppState::new(
        MemoryStore::new(FleetPolicy::default()),
        MemoryQueue::new(),
        CredentialCipher::ephemeral(),
        Arc::new(settings),
        runfleet_trading::kinds(&Settings::default()).unwrap(),
    );
    app(state)
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method.to_ascii_uppercase().as_str())
        .uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(key) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    // An event stream stays open: its status is the answer.
    if resp.headers().get(header::CONTENT_TYPE)
        == Some(&header::HeaderValue::from_static("text/event-stream"))
    {
        return (status, Value::Null);
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Follows a local `$ref` (and a one-element `allOf` wrapping one, and a `oneOf` of `null`
/// and one, which is how an optional field's schema says it may be null).
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    let null = json!({"type": "null"});
    loop {
        if let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').expect("only local $refs");
            v = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        } else if let Some([only]) = v.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            v = only;
        } else if let Some([a, b]) = v.get("oneOf").and_then(Value::as_array).map(Vec::as_slice)
            && (*a == null || *b == null)
        {
            v = if *a == null { b } else { a };
        } else {
            return v;
        }
    }
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc.pointer(&format!("/components/schemas/{name}"))
        .unwrap_or_else(|| panic!("no schema {name}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Every `(path, method)` of the document, path parameters written `{}`.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((normalize(path), method.to_owned()));
            }
        }
    }
    out
}

fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// Every `(path, method)` the router serves: the paths of [`routes`] (the list `app` builds
/// the router from), each probed with every method (a method the path does not serve is
/// answered 405 `method_not_allowed` by the router, before any handler or extractor runs).
async fn routed(router: &Router) -> BTreeSet<(String, String)> {
    let Routes { api, seed } = routes::<MemoryStore, MemoryQueue>(&Settings::default().http);
    let mut out = BTreeSet::new();
    for route in api.iter().chain(&seed) {
        let uri = normalize(route.path).replace("{}", "0123456789abcdef01234567");
        for method in METHODS {
            let (_, reply) = call(router, method, &uri, Some(&json!({})), Some(ADMIN)).await;
            if reply["error"]["code"] != "method_not_allowed" {
                out.insert((normalize(route.path), method.to_owned()));
            }
        }
    }
    assert!(out.len() >= 10, "routes not found: {out:?}");
    out
}

/// A concrete URI for a documented path: each parameter filled with a value its schema accepts.
fn concrete(doc: &Value, path: &str, item: &Value, op: &Value) -> String {
    let mut uri = path.to_owned();
    let params = item
        .get("parameters")
        .into_iter()
        .chain(op.get("parameters"))
        .flat_map(|p| p.as_array().unwrap());
    let mut query = Vec::new();
    for p in params {
        let p = resolve(doc, p);
        let name = p["name"].as_str().unwrap();
        let pattern = resolve(doc, &p["schema"])["pattern"].as_str().unwrap_or("");
        let value = if pattern.contains("0-9a-f]{24}") {
            "0123456789abcdef01234567"
        } else {
            "probe-1"
        };
        match p["in"].as_str().unwrap() {
            "path" => uri = uri.replace(&format!("{{{name}}}"), value),
            "query" if p["required"] == true => query.push(format!("{name}={value}")),
            _ => {}
        }
    }
    if !query.is_empty() {
        uri = format!("{uri}?{}", query.join("&"));
    }
    uri
}

#[test]
fn the_document_has_its_top_level_fields() {
    let doc = doc();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string());
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"],
        json!({"type": "http", "scheme": "bearer",
            "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"]})
    );
    assert_eq!(doc["security"], json!([{"bearerAuth": []}]));
    // Every $ref resolves, and operation ids are unique.
    fn walk(doc: &Value, v: &Value) {
        match v {
            Value::Object(o) => {
                if o.contains_key("$ref") {
                    resolve(doc, v);
                }
                o.values().for_each(|x| walk(doc, x));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
            _ => {}
        }
    }
    walk(&doc, &doc);
    let mut ids = BTreeSet::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                let id = op["operationId"].as_str().unwrap();
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            }
        }
    }
}

/// The schemas' descriptions are the types' doc comments, read as prose: no rustdoc link
/// syntax or source line breaks are left in them.
#[test]
fn schema_descriptions_are_prose() {
    fn walk(v: &Value, at: &str) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(d)) = o.get("description") {
                    assert!(!d.contains("[`") && !d.contains('\n'), "{at}: {d:?}");
                }
                o.iter().for_each(|(k, x)| walk(x, &format!("{at}/{k}")));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, at)),
            _ => {}
        }
    }
    walk(&doc()["components"]["schemas"], "");
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_the_router_serves() {
    let doc = doc();
    let (documented, routed) = (documented(&doc), routed(&router()).await);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routed but not in openapi.json: {undocumented:?}; in openapi.json but not routed: {unrouted:?}"
    );
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_no_other_method_is() {
    let (doc, router) = (doc(), router());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let uri_op = item.get(method).unwrap_or(&Value::Null);
            let uri = concrete(&doc, path, item, uri_op);
            let body = json!({});
            let (status, reply) = call(&router, method, &uri, Some(&body), Some(ADMIN)).await;
            let code = reply["error"]["code"].as_str().unwrap_or("");
            if item.get(method).is_some() {
                assert!(
                    code != "no_route" && code != "method_not_allowed",
                    "{method} {uri} is documented but not routed: {status} {reply}"
                );
                assert!(
                    uri_op["responses"].get(status.as_str()).is_some(),
                    "{method} {uri} answered {status}, which the document does not list: {reply}"
                );
            } else {
                assert_eq!(
                    (status, code),
                    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
                    "{method} {uri} is routed but not documented: {reply}"
                );
            }
        }
    }
    let (status, reply) = call(&router, "get", "/v1/nope", None, Some(ADMIN)).await;
    assert_eq!(
        (status, &reply["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("no_route"))
    );
}

#[tokio::test]
async fn the_security_the_document_claims_holds() {
    let (doc, router) = (doc(), router());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let uri = concrete(&doc, path, item, op);
            let open = op.get("security") == Some(&json!([]));
            let body = op.get("requestBody").map(|_| json!({}));
            for auth in [
                None,
                Some("wrong-key"),
                Some("rfk_0123456789abcdef01234567_00"),
            ] {
                let (status, reply) = call(&router, method, &uri, body.as_ref(), auth).await;
                if open {
                    assert_eq!(
                        status,
                        StatusCode::OK,
                        "{method} {uri} needs no key: {reply}"
                    );
                } else {
                    // The seed's routes put the code beside the message.
                    let code = reply["error"].get("code").unwrap_or(&reply["code"]);
                    assert_eq!(
                        (status, code),
                        (StatusCode::UNAUTHORIZED, &json!("unauthorized")),
                        "{method} {uri} with {auth:?}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_server_serves_this_document() {
    let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
    let resp = router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "application/json"
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), doc());
}

#[test]
fn catalog_enums_are_the_catalogs() {
    let doc = doc();
    let names = |s: &str| strings(&schema(&doc, s)["enum"]);
    let public: Vec<&str> = STRATEGIES
        .iter()
        .filter(|s| !s.test_only)
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names("Instrument"),
        INSTRUMENTS.iter().map(|i| i.name).collect::<Vec<_>>()
    );
    assert_eq!(names("StrategyType"), public);
    assert_eq!(names("Broker"), BROKERS);
    assert_eq!(
        names("Timeframe"),
        TIMEFRAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    assert_eq!(
        names("Tier"),
        Tier::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>()
    );
    for s in names("StopMode") {
        serde_json::from_value::<StopMode>(json!(s)).unwrap();
    }
    let statuses = names("JobStatus");
    assert_eq!(statuses.len(), 5);
    assert!(statuses.iter().all(|s| JobStatus::parse(s).is_some()));
}

#[test]
fn each_strategy_variant_declares_the_catalogs_parameters() {
    let doc = doc();
    let variants = schema(&doc, "StrategyConfig")["oneOf"].as_array().unwrap();
    let mut kinds = Vec::new();
    for v in variants {
        let v = resolve(&doc, v);
        let kind = strings(&v["properties"]["type"]["enum"]);
        assert_eq!(kind.len(), 1);
        let kind = strategy::strategy(&kind[0]).expect("a catalog strategy");
        assert!(!kind.test_only, "{} is test-only", kind.name);
        kinds.push(kind.name);
        let params = resolve(&doc, &v["properties"]["parameters"]);
        assert_eq!(params["additionalProperties"], false, "{}", kind.name);
        let props = params["properties"].as_object().unwrap();
        assert_eq!(
            props.keys().map(String::as_str).collect::<BTreeSet<_>>(),
            kind.params.iter().map(Param::name).collect::<BTreeSet<_>>(),
            "{}",
            kind.name
        );
        let required: BTreeSet<String> = params
            .get("required")
            .map(strings)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for p in kind.params {
            let s = resolve(&doc, &props[p.name()]);
            assert_eq!(required.contains(p.name()), p.required(), "{}", p.name());
            match *p {
                Param::Int {
                    min, max, default, ..
                } => {
                    assert_eq!(s["type"], "integer", "{}", p.name());
                    assert_eq!((&s["minimum"], &s["maximum"]), (&json!(min), &json!(max)));
                    assert_eq!(s.get("default"), default.map(|d| json!(d)).as_ref());
                }
                Param::Choice {
                    options, default, ..
                } => {
                    assert_eq!(strings(&s["enum"]), options, "{}", p.name());
                    assert_eq!(s.get("default"), default.map(|d| json!(d)).as_ref());
                }
            }
        }
        let config_required = strings(&v["required"]);
        assert_eq!(
            config_required.contains(&"parameters".to_owned()),
            kind.params.iter().any(Param::required),
            "{}",
            kind.name
        );
    }
    let public: Vec<&str> = STRATEGIES
        .iter()
        .filter(|s| !s.test_only)
        .map(|s| s.name)
        .collect();
    assert_eq!(kinds, public);
}

/// The `.`-paths of every object in `value` whose schema is closed (`additionalProperties:
/// false`), following `$ref`s, `oneOf` (the variant whose `type` matches) and arrays.
fn closed_objects(doc: &Value, schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(variants) = schema.get("oneOf").and_then(Value::as_array) {
        let chosen = variants
            .iter()
            .map(|v| resolve(doc, v))
            .find(|v| {
                v["properties"]["type"]["enum"]
                    .as_array()
                    .is_some_and(|e| e.contains(&value["type"]))
            })
            .expect("a oneOf variant for the example");
        return closed_objects(doc, chosen, value, path, out);
    }
    match value {
        Value::Object(o) => {
            if schema.get("additionalProperties") == Some(&json!(false)) {
                out.push(path.to_owned());
            }
            for (k, v) in o {
                if let Some(s) = schema["properties"].get(k) {
                    let sub = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    closed_objects(doc, s, v, &sub, out);
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                closed_objects(doc, &schema["items"], v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn with_extra(value: &Value, path: &str) -> Value {
    let mut v = value.clone();
    let pointer: String = path
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{s}"))
        .collect();
    v.pointer_mut(&pointer).unwrap()["unexpectedField"] = json!(1);
    v
}

#[tokio::test]
async fn examples_are_accepted_and_closed_objects_refuse_unknown_fields() {
    let (doc, router) = (doc(), router());
    let cases = [
        (
            "post",
            "/v1/runners",
            "StartRunnerRequest",
            StatusCode::ACCEPTED,
        ),
        (
            "put",
            "/v1/users/user-123/entitlement",
            "UpgradeRequest",
            StatusCode::OK,
        ),
        (
            "post",
            "/v1/runners/job-none/stop",
            "StopRequest",
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, uri, name, expected) in cases {
        let s = schema(&doc, name);
        let example = &s["example"];
        let mut closed = Vec::new();
        closed_objects(&doc, s, example, "", &mut closed);
        assert!(!closed.is_empty(), "{name}");
        for path in &closed {
            let bad = with_extra(example, path);
            let (status, reply) = call(&router, method, uri, Some(&bad), Some(ADMIN)).await;
            let field = reply["error"]["field"].as_str().unwrap_or("");
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{name} at {path:?}: {reply}"
            );
            assert!(
                field.ends_with("unexpectedField"),
                "{name} at {path:?}: {reply}"
            );
        }
        let (status, reply) = call(&router, method, uri, Some(example), Some(ADMIN)).await;
        assert_eq!(status, expected, "{name}'s example: {reply}");
    }
}

#[tokio::test]
async fn the_documented_bounds_are_the_servers() {
    let (doc, router) = (doc(), router());
    // days
    let days = resolve(&doc, &schema(&doc, "UpgradeRequest")["properties"]["days"]);
    let (min, max) = (
        days["minimum"].as_i64().unwrap(),
        days["maximum"].as_i64().unwrap(),
    );
    for (d, ok) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let body = json!({"tier": "pro", "days": d});
        let (status, reply) = call(
            &router,
            "put",
            "/v1/users/u1/entitlement",
            Some(&body),
            Some(ADMIN),
        )
        .await;
        assert_eq!(status.is_success(), ok, "days {d}: {reply}");
    }

    // Start-request fields, through the catalog's defaults and validation, as a start takes
    // them.
    let example = schema(&doc, "StartRunnerRequest")["example"].clone();
    let check = |edit: &dyn Fn(&mut Value)| {
        let mut v = example.clone();
        v["config"]["instruments"] = json!(["BTC-USD"]);
        edit(&mut v);
        let mut req: StartRunnerRequest = serde_json::from_value(v).unwrap();
        validate::apply_defaults(&mut req.config);
        validate::validate_start(&req).is_ok()
    };
    let risk = resolve(&doc, schema(&doc, "RiskManagement"));
    for (name, s) in risk["properties"].as_object().unwrap() {
        let (min, max) = (
            s["minimum"].as_f64().unwrap(),
            s["maximum"].as_f64().unwrap(),
        );
        assert!(s.get("exclusiveMinimum").is_none() && min > 0.0, "{name}");
        let set = |x: f64| move |v: &mut Value| v["config"]["riskManagement"][name] = json!(x);
        assert!(check(&set(min)), "{name} = {min}");
        assert!(!check(&set(min / 10.0)), "{name} below {min}");
        assert!(!check(&set(0.0)), "{name} = 0");
        assert!(check(&set(max)), "{name} = {max}");
        assert!(!check(&set(max * 1.001)), "{name} above {max}");
    }
    let texts = [
        ("Credentials", "apiKey", "/credentials/apiKey"),
        ("Credentials", "apiSecret", "/credentials/apiSecret"),
        ("ScalpingConfig", "name", "/config/name"),
    ];
    for (schema_name, field, pointer) in texts {
        let s = &schema(&doc, schema_name)["properties"][field];
        let max = s["maxLength"].as_u64().unwrap() as usize;
        let set =
            |text: String| move |v: &mut Value| *v.pointer_mut(pointer).unwrap() = json!(text);
        assert!(check(&set("é".repeat(max))), "{field} of {max}");
        assert!(!check(&set("x".repeat(max + 1))), "{field} over {max}");
        assert!(!check(&set(" \t\u{3000}".into())), "{field} blank");
        assert!(!check(&set(String::new())), "{field} empty");
    }
    // The audit trail's count.
    let count = doc["paths"]["/v1/audit"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "count")
        .expect("a count parameter");
    assert_eq!(
        (&count["schema"]["maximum"], &count["schema"]["default"]),
        (&json!(audit::MAX_COUNT), &json!(audit::DEFAULT_COUNT))
    );
    // Ids: the pattern's length and characters.
    let id = schema(&doc, "Id");
    assert_eq!(id["pattern"], "^[A-Za-z0-9._:@-]{1,128}$");
    assert_eq!(
        (&id["minLength"], &id["maxLength"]),
        (&json!(1), &json!(128))
    );
    for (user, ok) in [
        ("a".repeat(128), true),
        ("a".repeat(129), false),
        ("Az09._:@-".into(), true),
        ("a/b".into(), false),
        ("a b".into(), false),
    ] {
        assert_eq!(
            check(&|v: &mut Value| v["userId"] = json!(user)),
            ok,
            "{user}"
        );
    }
    // No instruments are the strategy's default ones, when it has any.
    let instruments = &schema(&doc, "ScalpingConfig")["properties"]["instruments"];
    let defaults = !strategy::strategy("scalping")
        .unwrap()
        .default_instruments
        .is_empty();
    assert_eq!(
        (&instruments["minItems"], &instruments["uniqueItems"]),
        (&json!(if defaults { 0 } else { 1 }), &json!(true))
    );
    assert_eq!(
        check(&|v: &mut Value| v["config"]["instruments"] = json!([])),
        defaults
    );
    assert!(!check(
        &|v: &mut Value| v["config"]["instruments"] = json!(["BTC-USD", "BTC-USD"])
    ));
}
