//! The HTTP API through the router (`oneshot`), on the in-memory backend: status codes, JSON
//! error bodies naming the field, and that a refused request writes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use runfleet::config::Settings;
use runfleet::crypto::CredentialCipher;
use runfleet::ids::UserId;
use runfleet::queue::{JobQueue, MemoryQueue};
use runfleet::store::{FleetPolicy, JobStore, MemoryStore, Subscriptions};
use runfleet_orchestrator::{AppState, app};
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    store: MemoryStore,
    queue: MemoryQueue,
}

fn test_app(admin_key: Option<&str>) -> TestApp {
    let mut settings = Settings::default();
    settings.security.admin_key = admin_key.map(str::to_owned);
    settings.http.body_limit_bytes = 4096;
    let (store, queue) = (MemoryStore::new(FleetPolicy::default()), MemoryQueue::new());
    let state = AppState {
        store: store.clone(),
        queue: queue.clone(),
        cipher: CredentialCipher::ephemeral(),
        settings: Arc::new(settings),
    };
    TestApp {
        router: app(state),
        store,
        queue,
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::builder().method(method).uri(uri);
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
    let retry = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

fn start_body(user: &str) -> Value {
    json!({
        "userId": user, "strategyId": "scalping-btc", "brokerId": "deribit",
        "credentials": {"apiKey": "key", "apiSecret": "secret"},
        "config": {"name": "BTC Scalping", "type": "scalping",
            "parameters": {"timeframe": "1m", "rsiPeriod": 14},
            "riskManagement": {"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3},
            "instruments": ["BTC-PERPETUAL"]}
    })
}

#[tokio::test]
async fn a_free_user_gets_one_runner_and_a_clear_refusal_for_the_second() {
    let t = test_app(None);
    let (code, body, _) = call(
        &t.router,
        "POST",
        "/v1/runners",
        Some(start_body("u1")),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["success"], true);
    assert!(body["jobId"].as_str().unwrap().starts_with("job-"));
    assert_eq!(t.queue.depth().await.unwrap(), 1);

    let (code, body, _) = call(
        &t.router,
        "POST",
        "/runner/start",
        Some(start_body("u1")),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "runner_limit_reached");
    assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
    assert_eq!(
        (
            body["error"]["maxWorkers"].clone(),
            body["error"]["currentWorkers"].clone()
        ),
        (json!(1), json!(1))
    );
    assert_eq!(
        t.queue.depth().await.unwrap(),
        1,
        "a refused start queues nothing"
    );
    assert_eq!(
        t.store.user_jobs(&UserId::new("u1")).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn bad_input_is_a_400_naming_the_field_and_writes_nothing() {
    let t = test_app(None);
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "userId"),
        (
            {
                let mut b = start_body("u1");
                b["userId"] = json!("has space");
                b
            },
            "userId",
        ),
        (
            {
                let mut b = start_body("u1");
                b["extra"] = json!(1);
                b
            },
            "extra",
        ),
        (
            {
                let mut b = start_body("u1");
                b["config"]["type"] = json!("nope");
                b
            },
            "config.type",
        ),
        (
            {
                let mut b = start_body("u1");
                b["config"]["instruments"] = json!(["DOGE"]);
                b
            },
            "config.instruments[0]",
        ),
        (
            {
                let mut b = start_body("u1");
                b["config"]["riskManagement"]["stopLossPercent"] = json!(-1);
                b
            },
            "config.riskManagement.stopLossPercent",
        ),
        (
            {
                let mut b = start_body("u1");
                b["credentials"]["apiKey"] = json!(5);
                b
            },
            "credentials.apiKey",
        ),
        (
            {
                let mut b = start_body("u1");
                b["config"]["parameters"]["rsiPeriod"] = json!(1000);
                b
            },
            "config.parameters.rsiPeriod",
        ),
    ];
    for (body, field) in cases {
        let (code, answer, _) = call(&t.router, "POST", "/v1/runners", Some(body), None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["success"], false);
        assert_eq!(answer["error"]["code"], "invalid_request");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    assert_eq!(t.queue.depth().await.unwrap(), 0);
    assert!(
        t.store
            .user_jobs(&UserId::new("u1"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let t = test_app(None);
    let not_json = Request::post("/v1/runners").body(Body::from("x")).unwrap();
    assert_eq!(
        t.router.clone().oneshot(not_json).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = json!({"userId": "u".repeat(10_000)});
    let (code, body, _) = call(&t.router, "POST", "/v1/runners", Some(huge), None).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "payload_too_large");
    let (code, body, _) = call(&t.router, "GET", "/v2/nothing", None, None).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("no_route"))
    );
    let (code, body, _) = call(&t.router, "DELETE", "/v1/runners", None, None).await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
    let (code, body, _) = call(&t.router, "GET", "/runner/status", None, None).await;
    assert_eq!(
        (code, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("userId"))
    );
}

#[tokio::test]
async fn stopping_a_queued_runner_stops_it_at_once_and_frees_the_slot() {
    let t = test_app(None);
    let (_, started, _) = call(
        &t.router,
        "POST",
        "/v1/runners",
        Some(start_body("u1")),
        None,
    )
    .await;
    let job = started["jobId"].as_str().unwrap().to_owned();

    let (code, body, _) = call(
        &t.router,
        "POST",
        &format!("/v1/runners/{job}/stop"),
        Some(json!({"userId": "u2"})),
        None,
    )
    .await;
    assert_eq!(
        code,
        StatusCode::NOT_FOUND,
        "another user's runner is not found: {body}"
    );
    let (code, body, _) = call(
        &t.router,
        "POST",
        &format!("/v1/runners/{job}/stop"),
        Some(json!({"userId": "u1", "mode": "hold", "flattenPositions": true})),
        None,
    )
    .await;
    assert_eq!(
        (code, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("mode"))
    );

    let (code, body, _) = call(
        &t.router,
        "POST",
        "/runner/stop",
        Some(json!({"userId": "u1", "workerId": job, "flattenPositions": true})),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (
            body["success"].clone(),
            body["status"].clone(),
            body["flattenedPositions"].clone()
        ),
        (json!(true), json!("stopped"), json!(0))
    );
    assert_eq!(t.queue.depth().await.unwrap(), 0, "removed from the queue");
    assert_eq!(t.store.active_count(&UserId::new("u1")).await.unwrap(), 0);

    let (code, body, _) = call(&t.router, "GET", "/runner/status?userId=u1", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["workers"][0]["worker"]["status"], "stopped");
    assert_eq!(body["workers"][0]["worker"]["workerId"], job.as_str());
    assert_eq!(
        body["queueStats"],
        json!({"queuedJobs": 0, "runningWorkers": 0, "totalWorkers": 1, "failedJobs": 0})
    );
    let shown = body.to_string();
    assert!(
        !shown.contains("secret") && !shown.contains("credentials"),
        "no credentials in status: {shown}"
    );

    let (code, _, _) = call(
        &t.router,
        "GET",
        &format!("/v1/runners/{job}?userId=u1"),
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let (code, _, _) = call(
        &t.router,
        "GET",
        &format!("/v1/runners/{job}?userId=u2"),
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn upgrades_need_the_admin_key() {
    let disabled = test_app(None);
    let upgrade = json!({"tier": "pro", "days": 30});
    let (code, _, _) = call(
        &disabled.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade.clone()),
        Some("x"),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    let t = test_app(Some("sesame"));
    let (code, _, _) = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade.clone()),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, body, _) = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade.clone()),
        Some("sesam"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let (code, body, _) = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(json!({"tier": "gold", "days": 3})),
        Some("sesame"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("tier"))
    );
    let (code, body, _) = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(json!({"tier": "pro", "days": 0})),
        Some("sesame"),
    )
    .await;
    assert_eq!(
        (code, body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("days"))
    );
    assert!(
        t.store
            .subscription(&UserId::new("u1"))
            .await
            .unwrap()
            .is_none(),
        "refusals write nothing"
    );

    let (code, body, _) = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade),
        Some("sesame"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (_, check, _) = call(&t.router, "GET", "/v1/users/u1/entitlement", None, None).await;
    assert_eq!(check["tier"], "pro");
    assert_eq!(check["maxWorkers"], 10);
    assert_eq!(check["currentWorkers"], 0);
    assert_eq!(check["isEntitled"], true);
}

#[tokio::test]
async fn an_unreachable_redis_is_a_503_with_retry_after() {
    use runfleet::config::RedisSettings;
    use runfleet::keys::Keys;
    use runfleet::queue::RedisQueue;
    use runfleet::redis_pool::RedisPools;
    use runfleet::store::RedisStore;

    // Nothing listens on port 1: this is the outage, not a stand-in for Redis.
    let redis = RedisSettings {
        url: "redis://127.0.0.1:1".into(),
        connect_timeout_ms: 200,
        wait_timeout_ms: 200,
        ..Default::default()
    };
    let pools = RedisPools::new(&redis).unwrap();
    let keys = Keys::new("unreachable");
    let state = AppState {
        store: RedisStore::new(pools.clone(), keys.clone(), FleetPolicy::default()),
        queue: RedisQueue::new(pools, keys, "jobs"),
        cipher: CredentialCipher::ephemeral(),
        settings: Arc::new(Settings::default()),
    };
    let router = app(state);
    let (code, body, retry) = call(&router, "GET", "/healthz", None, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert!(retry.is_some());
    let (code, _, _) = call(&router, "POST", "/v1/runners", Some(start_body("u1")), None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
}
