//! The HTTP API through the router (`oneshot`), on the in-memory backend: status codes, JSON
//! error bodies naming the field, authentication and authorization, backpressure, and that a
//! refused request writes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use runfleet_orchestrator::{AppState, app};
use runfleet_shared::config::Settings;
use runfleet_shared::crypto::CredentialCipher;
use runfleet_shared::ids::UserId;
use runfleet_shared::queue::{JobQueue, MemoryQueue};
use runfleet_shared::store::{EventId, FleetPolicy, JobStore, MemoryStore, Subscriptions};
use serde_json::{Value, json};
use tower::ServiceExt;

const ADMIN: &str = "sesame";

struct TestApp {
    router: Router,
    store: MemoryStore,
    queue: MemoryQueue,
}

fn test_app(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::default();
    settings.security.admin_key = Some(ADMIN.into());
    settings.http.body_limit_bytes = 4096;
    tweak(&mut settings);
    let (store, queue) = (
        MemoryStore::new(FleetPolicy::from_settings(&settings)),
        MemoryQueue::new(),
    );
    let kinds = runfleet_trading::kinds(&settings).unwrap();
    let state = AppState::new(
        store.clone(),
        queue.clone(),
        CredentialCipher::ephemeral(),
        Arc::new(settings),
        kinds,
    );
    TestApp {
        router: app(state),
        store,
        queue,
    }
}

struct Reply {
    status: StatusCode,
    body: Value,
    retry_after: Option<String>,
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after,
    }
}

async fn admin(router: &Router, method: &str, uri: &str, body: Option<Value>) -> Reply {
    call(router, method, uri, body, Some(ADMIN)).await
}

async fn user_key(router: &Router, user: &str) -> String {
    let r = admin(router, "POST", &format!("/v1/users/{user}/keys"), None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["apiKey"].as_str().unwrap().to_owned()
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
    let t = test_app(|_| {});
    let r = admin(&t.router, "POST", "/v1/runners", Some(start_body("u1"))).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["success"], true);
    assert!(r.body["jobId"].as_str().unwrap().starts_with("job-"));
    assert_eq!(t.queue.depth().await.unwrap(), 1);

    // The seed's route, in the seed's shape: `error` is the message (`toContain('limit')`).
    let r = admin(&t.router, "POST", "/runner/start", Some(start_body("u1"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.body["success"], false);
    assert_eq!(r.body["code"], "runner_limit_reached");
    assert!(r.body["error"].as_str().unwrap().contains("limit"));
    assert_eq!(
        (
            r.body["maxWorkers"].clone(),
            r.body["currentWorkers"].clone()
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
    let t = test_app(|_| {});
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
                b["config"]["type"] = json!("panic-test");
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
        let r = admin(&t.router, "POST", "/v1/runners", Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
        assert_eq!(r.body["success"], false);
        assert_eq!(r.body["error"]["code"], "invalid_request");
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
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
    let t = test_app(|_| {});
    let not_json = Request::post("/v1/runners")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(
        t.router.clone().oneshot(not_json).await.unwrap().status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let huge = json!({"userId": "u".repeat(10_000)});
    let r = admin(&t.router, "POST", "/v1/runners", Some(huge)).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("payload_too_large"))
    );
    let r = admin(&t.router, "GET", "/v2/nothing", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("no_route"))
    );
    let r = admin(&t.router, "DELETE", "/v1/runners", None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
    let r = admin(&t.router, "GET", "/runner/status", None).await;
    assert_eq!(
        (r.status, r.body["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("userId"))
    );
}

#[tokio::test]
async fn stopping_a_queued_runner_stops_it_at_once_and_frees_the_slot() {
    let t = test_app(|_| {});
    let job = admin(&t.router, "POST", "/v1/runners", Some(start_body("u1")))
        .await
        .body["jobId"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = admin(
        &t.router,
        "POST",
        &format!("/v1/runners/{job}/stop"),
        Some(json!({"userId": "u2"})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "naming the wrong owner finds nothing: {}",
        r.body
    );
    let r = admin(
        &t.router,
        "POST",
        &format!("/v1/runners/{job}/stop"),
        Some(json!({"mode": "hold", "flattenPositions": true})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("mode"))
    );

    let r = admin(
        &t.router,
        "POST",
        "/runner/stop",
        Some(json!({"userId": "u1", "workerId": job, "flattenPositions": true})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (
            r.body["success"].clone(),
            r.body["status"].clone(),
            r.body["flattenedPositions"].clone()
        ),
        (json!(true), json!("stopped"), json!(0))
    );
    assert_eq!(t.queue.depth().await.unwrap(), 0, "removed from the queue");
    assert_eq!(t.store.active_count(&UserId::new("u1")).await.unwrap(), 0);

    let r = admin(&t.router, "GET", "/runner/status?userId=u1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["workers"][0]["worker"]["status"], "stopped");
    assert_eq!(r.body["workers"][0]["worker"]["workerId"], job.as_str());
    assert_eq!(
        r.body["queueStats"],
        json!({"queuedJobs": 0, "runningWorkers": 0, "totalWorkers": 1, "failedJobs": 0})
    );
    let shown = r.body.to_string();
    assert!(
        !shown.contains("secret") && !shown.contains("credentials"),
        "no credentials in status: {shown}"
    );
    assert_eq!(
        admin(&t.router, "GET", &format!("/v1/runners/{job}"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        admin(
            &t.router,
            "GET",
            &format!("/v1/runners/{job}?userId=u2"),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn every_request_needs_a_key_and_a_user_key_acts_only_for_its_user() {
    let t = test_app(|_| {});
    let (alice, bob) = (
        user_key(&t.router, "alice").await,
        user_key(&t.router, "bob").await,
    );

    // No key, or a wrong one: 401, and nothing happens.
    for key in [
        None,
        Some("nope"),
        Some("rfk_000000000000000000000000_0000"),
        Some(&alice[..alice.len() - 1]),
    ] {
        let r = call(
            &t.router,
            "POST",
            "/v1/runners",
            Some(start_body("alice")),
            key,
        )
        .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].clone()),
            (StatusCode::UNAUTHORIZED, json!("unauthorized")),
            "{key:?}"
        );
    }
    assert_eq!(t.queue.depth().await.unwrap(), 0);

    // Alice's key starts and sees Alice's runner.
    let r = call(
        &t.router,
        "POST",
        "/v1/runners",
        Some(start_body("alice")),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let job = r.body["jobId"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &t.router,
            "GET",
            "/v1/users/alice/runners",
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &t.router,
            "GET",
            &format!("/v1/runners/{job}"),
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &t.router,
            "GET",
            "/v1/users/alice/entitlement",
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::OK
    );

    // Bob's key reaches none of it: 403, and the runner keeps running.
    let forbidden = [
        call(
            &t.router,
            "POST",
            "/v1/runners",
            Some(start_body("alice")),
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "GET",
            "/v1/users/alice/runners",
            None,
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "GET",
            "/runner/status?userId=alice",
            None,
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "GET",
            &format!("/v1/runners/{job}"),
            None,
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "POST",
            &format!("/v1/runners/{job}/stop"),
            Some(json!({})),
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "POST",
            "/runner/stop",
            Some(json!({"workerId": job})),
            Some(&bob),
        )
        .await,
        call(
            &t.router,
            "GET",
            "/v1/users/alice/entitlement",
            None,
            Some(&bob),
        )
        .await,
    ];
    for r in forbidden {
        // `/v1` nests the code under `error`; the seed's routes put it beside the message.
        let code = r.body["error"]
            .get("code")
            .unwrap_or(&r.body["code"])
            .clone();
        assert_eq!(
            (r.status, code),
            (StatusCode::FORBIDDEN, json!("forbidden")),
            "{}",
            r.body
        );
    }
    assert_eq!(
        t.queue.depth().await.unwrap(),
        1,
        "alice's runner is still queued"
    );

    // Admin-only endpoints refuse user keys.
    for (method, uri, body) in [
        (
            "PUT",
            "/v1/users/alice/entitlement",
            Some(json!({"tier": "pro", "days": 1})),
        ),
        ("POST", "/v1/users/alice/keys", None),
        ("GET", "/v1/users/alice/keys", None),
        ("GET", "/v1/nodes", None),
    ] {
        let r = call(&t.router, method, uri, body, Some(&alice)).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.body
        );
    }

    // Keys are listed without their secret, and a revoked key stops working at once.
    let listed = admin(&t.router, "GET", "/v1/users/alice/keys", None).await;
    let key_id = listed.body["keys"][0]["keyId"].as_str().unwrap().to_owned();
    assert!(
        !listed.body.to_string().contains(&alice[29..]),
        "listing shows no secret"
    );
    assert_eq!(
        admin(
            &t.router,
            "DELETE",
            &format!("/v1/users/alice/keys/{key_id}"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        admin(
            &t.router,
            "DELETE",
            &format!("/v1/users/alice/keys/{key_id}"),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &t.router,
            "GET",
            "/v1/users/alice/runners",
            None,
            Some(&alice)
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    // The health check needs no key.
    assert_eq!(
        call(&t.router, "GET", "/healthz", None, None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn upgrades_need_the_admin_key() {
    let disabled = test_app(|s| s.security.admin_key = None);
    let upgrade = json!({"tier": "pro", "days": 30});
    let r = call(
        &disabled.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade.clone()),
        Some("x"),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "with no admin key configured, no key is the admin's"
    );

    let t = test_app(|_| {});
    assert_eq!(
        call(
            &t.router,
            "PUT",
            "/v1/users/u1/entitlement",
            Some(upgrade.clone()),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let r = call(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(upgrade.clone()),
        Some("sesam"),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let r = admin(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(json!({"tier": "gold", "days": 3})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("tier"))
    );
    let r = admin(
        &t.router,
        "PUT",
        "/v1/users/u1/entitlement",
        Some(json!({"tier": "pro", "days": 0})),
    )
    .await;
    assert_eq!(
        (r.status, r.body["error"]["field"].clone()),
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

    let r = admin(&t.router, "PUT", "/v1/users/u1/entitlement", Some(upgrade)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let check = admin(&t.router, "GET", "/v1/users/u1/entitlement", None)
        .await
        .body;
    assert_eq!(
        (
            check["tier"].clone(),
            check["maxWorkers"].clone(),
            check["currentWorkers"].clone(),
            check["isEntitled"].clone()
        ),
        (json!("pro"), json!(10), json!(0), json!(true))
    );
}

#[tokio::test]
async fn past_the_fleet_limits_starts_are_refused_with_retry_after() {
    let t = test_app(|s| {
        s.limits.max_queued = 2;
        s.limits.max_runners = 3;
        s.limits.retry_after_ms = 7_000;
    });
    for user in ["a", "b"] {
        assert_eq!(
            admin(&t.router, "POST", "/v1/runners", Some(start_body(user)))
                .await
                .status,
            StatusCode::ACCEPTED
        );
    }
    let r = admin(&t.router, "POST", "/v1/runners", Some(start_body("c"))).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::TOO_MANY_REQUESTS, json!("queue_full")),
        "{}",
        r.body
    );
    assert_eq!(r.retry_after.as_deref(), Some("7"));
    assert_eq!(
        t.queue.depth().await.unwrap(),
        2,
        "the queue does not grow past its limit"
    );

    // Jobs that left the queue still hold fleet slots: take one and the fleet limit bites.
    t.queue
        .claim(
            &runfleet_shared::ids::NodeId::new("n"),
            2,
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    let claimed = t.store.user_jobs(&UserId::new("a")).await.unwrap()[0]
        .job_id
        .clone();
    let lease = std::time::Duration::from_secs(30);
    runfleet_shared::store::LeaseStore::claim(
        &t.store,
        &runfleet_shared::ids::NodeId::new("n"),
        &[claimed],
        lease,
    )
    .await
    .unwrap();
    assert_eq!(
        admin(&t.router, "POST", "/v1/runners", Some(start_body("c")))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let r = admin(&t.router, "POST", "/v1/runners", Some(start_body("d"))).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("fleet_full")),
        "{}",
        r.body
    );
    assert_eq!(r.retry_after.as_deref(), Some("7"));
    assert!(
        t.store
            .user_jobs(&UserId::new("d"))
            .await
            .unwrap()
            .is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_a_503_with_retry_after() {
    use runfleet_shared::config::RedisSettings;
    use runfleet_shared::keys::Keys;
    use runfleet_shared::queue::RedisQueue;
    use runfleet_shared::redis_pool::RedisPools;
    use runfleet_shared::store::RedisStore;

    // Nothing listens on port 1: this is the outage, not a stand-in for Redis.
    let redis = RedisSettings {
        url: "redis://127.0.0.1:1".into(),
        connect_timeout_ms: 200,
        wait_timeout_ms: 200,
        ..Default::default()
    };
    let pools = RedisPools::new(&redis).unwrap();
    let keys = Keys::new("unreachable");
    let mut settings = Settings::default();
    settings.security.admin_key = Some(ADMIN.into());
    let kinds = runfleet_trading::kinds(&settings).unwrap();
    let state = AppState::new(
        RedisStore::new(pools.clone(), keys.clone(), FleetPolicy::default()),
        RedisQueue::new(pools, keys, "jobs"),
        CredentialCipher::ephemeral(),
        Arc::new(settings),
        kinds,
    );
    let router = app(state);
    let r = call(&router, "GET", "/healthz", None, None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("store_unavailable"))
    );
    assert!(r.retry_after.is_some());
    assert_eq!(
        admin(&router, "POST", "/v1/runners", Some(start_body("u1")))
            .await
            .status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// Issue 10: the seed's own test body (`config: {name, type}` only) is accepted and stored
/// with the documented defaults.
#[tokio::test]
async fn the_seeds_minimal_start_runs_with_documented_defaults() {
    let t = test_app(|_| {});
    let body = json!({
        "userId": "test-user", "strategyId": "test-strategy", "brokerId": "deribit",
        "credentials": {"apiKey": "test", "apiSecret": "test"},
        "config": {"name": "Test", "type": "scalping"},
    });
    let r = admin(&t.router, "POST", "/runner/start", Some(body)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["success"], true);
    let job = r.body["jobId"].as_str().unwrap();
    let r = admin(&t.router, "GET", &format!("/v1/runners/{job}"), None).await;
    let config = &r.body["worker"]["config"];
    assert_eq!(config["instruments"], json!(["BTC-PERPETUAL"]));
    assert_eq!(
        config["parameters"],
        json!({"rsiPeriod": 14, "timeframe": "1m"})
    );
    assert!(config.get("riskManagement").is_none());
}

/// Issue 10: a JSON value followed by anything is not valid JSON; nothing is written.
#[tokio::test]
async fn a_body_with_trailing_characters_is_refused() {
    let t = test_app(|_| {});
    let body = format!("{}xyz", start_body("u1"));
    let req = Request::post("/v1/runners")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::from(body))
        .unwrap();
    let resp = t.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["field"], "body", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("trailing"));
    assert_eq!(t.queue.depth().await.unwrap(), 0, "nothing queued");
    assert!(
        t.store
            .user_jobs(&UserId::new("u1"))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Issue 10: the seed's `getStatus({userId: 'system'})` is the fleet-wide load, for the admin
/// only; `system` can be no real user.
#[tokio::test]
async fn the_status_of_system_is_fleet_wide_and_system_is_no_user() {
    let t = test_app(|s| s.tiers.free = 2);
    for user in ["u1", "u2", "u2"] {
        let r = admin(&t.router, "POST", "/v1/runners", Some(start_body(user))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
    let r = admin(&t.router, "GET", "/runner/status?userId=system", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["queueStats"]["queuedJobs"], 3);
    assert_eq!(r.body["queueStats"]["runningWorkers"], 0);
    assert_eq!(r.body["queueStats"]["totalWorkers"], 3);
    let r = admin(&t.router, "GET", "/v1/users/system/runners", None).await;
    assert_eq!(r.body["queueStats"]["queuedJobs"], 3, "{}", r.body);

    let key = user_key(&t.router, "u1").await;
    let r = call(
        &t.router,
        "GET",
        "/v1/users/system/runners",
        None,
        Some(&key),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    let r = admin(&t.router, "POST", "/v1/runners", Some(start_body("system"))).await;
    assert_eq!(
        (r.status, r.body["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("userId")),
        "{}",
        r.body
    );
    let r = admin(&t.router, "POST", "/v1/users/system/keys", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

/// Sends one request with optional `x-request-id`; returns status, the answer's request id and
/// the body.
async fn call_with_id(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
    request_id: Option<&str>,
) -> (StatusCode, String, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(key) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if let Some(id) = request_id {
        req = req.header("x-request-id", id);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let id = resp
        .headers()
        .get("x-request-id")
        .expect("every answer carries x-request-id")
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        id,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_answer_carries_a_request_id_the_clients_when_usable() {
    let t = test_app(|_| {});
    let (status, id, _) = call_with_id(
        &t.router,
        "GET",
        "/healthz",
        None,
        None,
        Some("client-id.1:a"),
    )
    .await;
    assert_eq!((status, id.as_str()), (StatusCode::OK, "client-id.1:a"));
    // Refusals too, with an id made up when none was sent.
    let (status, made, _) = call_with_id(&t.router, "GET", "/v1/nodes", None, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(made.len(), 36, "a UUID: {made}");
    let (_, other, _) = call_with_id(&t.router, "GET", "/nope", None, None, None).await;
    assert_ne!(made, other, "a fresh id per request");
    // An id that is too long or carries odd characters is replaced, not echoed.
    for bad in ["a b", "<script>", &"x".repeat(129)] {
        let (_, id, _) = call_with_id(&t.router, "GET", "/healthz", None, None, Some(bad)).await;
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
    }
}

#[tokio::test]
async fn admin_actions_are_in_the_audit_trail_with_who_what_and_the_request_id() {
    let t = test_app(|_| {});
    let r = &t.router;
    let (s, _, issued) = call_with_id(
        r,
        "POST",
        "/v1/users/ann/keys",
        None,
        Some(ADMIN),
        Some("req-issue"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (key, key_id) = (
        issued["apiKey"].as_str().unwrap().to_owned(),
        issued["keyId"].as_str().unwrap().to_owned(),
    );
    let (s, _, _) = call_with_id(
        r,
        "PUT",
        "/v1/users/ann/entitlement",
        Some(json!({"tier": "pro", "days": 7})),
        Some(ADMIN),
        Some("req-tier"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // A user's own start and stop are not admin actions; the admin's stop of ann's runner is.
    let (s, _, started) = call_with_id(
        r,
        "POST",
        "/v1/runners",
        Some(start_body("ann")),
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let job = started["jobId"].as_str().unwrap().to_owned();
    let (s, _, _) = call_with_id(
        r,
        "POST",
        &format!("/v1/runners/{job}/stop"),
        Some(json!({})),
        Some(ADMIN),
        Some("req-stop"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = call_with_id(
        r,
        "DELETE",
        &format!("/v1/users/ann/keys/{key_id}"),
        None,
        Some(ADMIN),
        Some("req-revoke"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Refused admin calls are not actions.
    let (s, _, _) = call_with_id(
        r,
        "PUT",
        "/v1/users/ann/entitlement",
        Some(json!({"tier": "pro", "days": 0})),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let trail = admin(r, "GET", "/v1/audit", None).await;
    assert_eq!(trail.status, StatusCode::OK, "{}", trail.body);
    let entries = trail.body["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["requestId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("key.revoked", "req-revoke"),
            ("runner.stopped", "req-stop"),
            ("tier.changed", "req-tier"),
            ("key.issued", "req-issue"),
        ],
        "newest first: {entries:?}"
    );
    for e in entries {
        assert_eq!(e["actor"], "admin");
        assert_eq!(e["user"], "ann");
        assert!(e["at"].as_u64().unwrap() > 0);
        assert!(!e.to_string().contains(ADMIN), "never the admin key: {e}");
        assert!(!e.to_string().contains(&key), "never a user key: {e}");
    }
    assert_eq!(entries[0]["detail"]["keyId"], key_id.as_str());
    assert_eq!(entries[1]["detail"]["jobId"], job.as_str());
    assert_eq!(entries[2]["detail"]["tier"], "pro");

    let one = admin(r, "GET", "/v1/audit?count=1", None).await;
    assert_eq!(one.body["entries"].as_array().unwrap().len(), 1);
    let bad = admin(r, "GET", "/v1/audit?count=0", None).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.body["error"]["field"], "count");
    let other = user_key(r, "bo").await;
    let r2 = call(r, "GET", "/v1/audit", None, Some(&other)).await;
    assert_eq!(r2.status, StatusCode::FORBIDDEN, "the trail is the admin's");
}

#[tokio::test]
async fn a_key_over_its_limit_gets_429_with_retry_after_and_writes_nothing() {
    let t = test_app(|s| {
        s.rate_limits.starts_burst = 2;
        s.rate_limits.starts_per_minute = 2;
        s.rate_limits.reads_burst = 3;
        s.rate_limits.reads_per_minute = 3;
    });
    let r = &t.router;
    admin(
        r,
        "PUT",
        "/v1/users/hal/entitlement",
        Some(json!({"tier": "pro", "days": 1})),
    )
    .await;
    let (hal, ivy) = (user_key(r, "hal").await, user_key(r, "ivy").await);
    for _ in 0..2 {
        let ok = call(
            r,
            "POST",
            "/v1/runners",
            Some(start_body("hal")),
            Some(&hal),
        )
        .await;
        assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.body);
    }
    let depth = t.queue.depth().await.unwrap();
    let refused = call(
        r,
        "POST",
        "/v1/runners",
        Some(start_body("hal")),
        Some(&hal),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.body
    );
    assert_eq!(
        refused.body["error"]["code"], "rate_limited",
        "{}",
        refused.body
    );
    let secs: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=30).contains(&secs), "{secs}");
    let seed = call(
        r,
        "POST",
        "/runner/start",
        Some(start_body("hal")),
        Some(&hal),
    )
    .await;
    assert_eq!(seed.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        seed.body["code"], "rate_limited",
        "the seed's shape: {}",
        seed.body
    );
    assert_eq!(t.queue.depth().await.unwrap(), depth, "nothing queued");
    assert_eq!(
        t.store.active_count(&UserId::new("hal")).await.unwrap(),
        2,
        "nothing admitted"
    );
    // Another user's key, and the admin, are unaffected; reads are limited apart from starts.
    let other = call(
        r,
        "POST",
        "/v1/runners",
        Some(start_body("ivy")),
        Some(&ivy),
    )
    .await;
    assert_eq!(other.status, StatusCode::ACCEPTED, "{}", other.body);
    let by_admin = admin(r, "POST", "/v1/runners", Some(start_body("hal"))).await;
    assert_eq!(by_admin.status, StatusCode::ACCEPTED, "{}", by_admin.body);
    for _ in 0..3 {
        let read = call(r, "GET", "/v1/users/hal/runners", None, Some(&hal)).await;
        assert_eq!(read.status, StatusCode::OK);
    }
    let read = call(r, "GET", "/v1/users/hal/runners", None, Some(&hal)).await;
    assert_eq!(read.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(read.retry_after.is_some());
}

/// Opens `GET /v1/events` on the router; the body is the stream, unread until polled.
async fn open_events(router: &Router, key: &str, last_event_id: Option<&str>) -> Body {
    open_events_with(router, key, "/v1/events", last_event_id).await
}

async fn open_events_at(router: &Router, key: &str, uri: &str) -> Body {
    open_events_with(router, key, uri, None).await
}

async fn open_events_with(
    router: &Router,
    key: &str,
    uri: &str,
    last_event_id: Option<&str>,
) -> Body {
    let mut req = Request::builder()
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/event-stream",
        "an SSE stream"
    );
    resp.into_body()
}

/// Reads SSE events (their JSON data) from `body` until `want` of them came, or the stream
/// ended, or nothing came for a second. Returns them and whether the stream ended.
async fn read_events(body: &mut Body, want: usize) -> (Vec<Value>, bool) {
    let (mut events, mut buf) = (Vec::new(), String::new());
    while events.len() < want {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame()).await;
        let Ok(frame) = frame else {
            return (events, false);
        };
        let Some(frame) = frame else {
            return (events, true);
        };
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        buf.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let chunk: String = buf.drain(..end + 2).collect();
            if let Some(data) = chunk.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    (events, false)
}

#[tokio::test]
async fn a_slow_event_client_is_dropped_and_resumes_from_its_last_id_without_loss() {
    let t = test_app(|s| {
        s.events.live_buffer = 4;
        s.limits.max_runners = 1000;
    });
    let mut slow = open_events(&t.router, ADMIN, None).await;
    // Ten events while the client reads nothing: more than its buffer of 4.
    for i in 0..10 {
        let r = admin(
            &t.router,
            "POST",
            "/v1/runners",
            Some(start_body(&format!("u{i}"))),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
    // Let the hub's tailer pass them all on (the client still reads nothing).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let (got, ended) = read_events(&mut slow, 10).await;
    assert!(
        ended,
        "a client that fell behind is dropped, not buffered for"
    );
    assert!(got.len() < 10, "it got {} of 10 before the drop", got.len());

    // It reconnects with its last id (or from the start) and loses nothing, duplicates nothing.
    let last = got
        .last()
        .map_or("0-0".to_owned(), |e| e["id"].as_str().unwrap().to_owned());
    let mut resumed = open_events(&t.router, ADMIN, Some(&last)).await;
    let (rest, ended) = read_events(&mut resumed, 10 - got.len()).await;
    assert!(!ended);
    let users: Vec<&str> = got
        .iter()
        .chain(&rest)
        .map(|e| e["user"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    assert_eq!(users, expected);
    assert!(got.iter().chain(&rest).all(|e| e["type"] == "admitted"));
    // Nothing more is pending.
    assert_eq!(read_events(&mut resumed, 1).await, (vec![], false));
}

#[tokio::test]
async fn the_event_stream_shows_a_user_only_its_own_runners_and_refuses_bad_input() {
    let t = test_app(|s| s.tiers.free = 5);
    let (ann, bob) = (
        user_key(&t.router, "ann").await,
        user_key(&t.router, "bob").await,
    );
    let mut ann_live = open_events(&t.router, &ann, None).await;
    let mut bob_live = open_events(&t.router, &bob, None).await;
    for user in ["bob", "ann", "bob"] {
        let r = admin(&t.router, "POST", "/v1/runners", Some(start_body(user))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
    let (seen, _) = read_events(&mut ann_live, 2).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["user"], "ann");
    let (seen, _) = read_events(&mut bob_live, 3).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|e| e["user"] == "bob"));

    // Refusals name the field and open no stream.
    let cases = [
        (
            Some(ann.as_str()),
            "/v1/events?userId=bob",
            None,
            StatusCode::FORBIDDEN,
            None,
        ),
        (
            Some(&ann),
            "/v1/events",
            Some("x"),
            StatusCode::BAD_REQUEST,
            Some("Last-Event-ID"),
        ),
        (
            Some(&ann),
            "/v1/events?lastEventId=12-",
            None,
            StatusCode::BAD_REQUEST,
            Some("lastEventId"),
        ),
        (
            Some(&ann),
            "/v1/events?lastEventId=-1-0",
            None,
            StatusCode::BAD_REQUEST,
            Some("lastEventId"),
        ),
        (
            Some(&ann),
            "/v1/events?jobId=a%20b",
            None,
            StatusCode::BAD_REQUEST,
            Some("jobId"),
        ),
        (
            Some(&ann),
            "/v1/events?bogus=1",
            None,
            StatusCode::BAD_REQUEST,
            Some("query"),
        ),
        (None, "/v1/events", None, StatusCode::UNAUTHORIZED, None),
    ];
    for (key, uri, last, status, field) in cases {
        let mut req = Request::builder().uri(uri);
        if let Some(key) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(last) = last {
            req = req.header("last-event-id", last);
        }
        let resp = t
            .router
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{uri}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        if let Some(field) = field {
            assert_eq!(body["error"]["field"], field, "{uri}: {body}");
        }
    }
    // The admin may follow one user; a user may name itself.
    let mut bob_only = open_events_at(&t.router, ADMIN, "/v1/events?userId=bob").await;
    let mut ann_self = open_events_at(&t.router, &ann, "/v1/events?userId=ann").await;
    for user in ["ann", "bob"] {
        let r = admin(&t.router, "POST", "/v1/runners", Some(start_body(user))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    }
    let (seen, _) = read_events(&mut bob_only, 2).await;
    assert_eq!(
        (seen.len(), &seen[0]["user"]),
        (1, &json!("bob")),
        "{seen:?}"
    );
    let (seen, _) = read_events(&mut ann_self, 2).await;
    assert_eq!(
        (seen.len(), &seen[0]["user"]),
        (1, &json!("ann")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_batch_start_admits_or_refuses_each_runner_on_its_own() {
    let t = test_app(|_| {});
    let ann = user_key(&t.router, "ann").await;
    let mut bad = start_body("ann");
    bad["config"]["riskManagement"]["stopLossPercent"] = json!(-1);
    let batch = json!({"runners": [
        start_body("ann"),          // admitted: ann's one free slot
        bad,                        // refused: a bad field, named within the batch
        start_body("ann"),          // refused: ann's tier is full now
        start_body("bob"),          // refused: not ann's to start
        {"userId": "ann"},          // refused: missing fields
    ]});
    let r = call(
        &t.router,
        "POST",
        "/v1/runners/batch",
        Some(batch),
        Some(&ann),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (r.body["accepted"].clone(), r.body["refused"].clone()),
        (json!(1), json!(4))
    );
    let results = r.body["results"].as_array().unwrap();
    let summary: Vec<(u64, u64, &str)> = results
        .iter()
        .map(|v| {
            (
                v["index"].as_u64().unwrap(),
                v["httpStatus"].as_u64().unwrap(),
                v["error"]["code"].as_str().unwrap_or("accepted"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, 202, "accepted"),
            (1, 400, "invalid_request"),
            (2, 403, "runner_limit_reached"),
            (3, 403, "forbidden"),
            (4, 400, "invalid_request"),
        ]
    );
    assert_eq!(
        results[1]["error"]["field"],
        "runners[1].config.riskManagement.stopLossPercent"
    );
    assert!(
        results[4]["error"]["field"]
            .as_str()
            .unwrap()
            .starts_with("runners[4].")
    );
    assert!(results[0]["jobId"].as_str().unwrap().starts_with("job-"));
    // Exactly the accepted one was recorded and queued.
    assert_eq!(t.queue.depth().await.unwrap(), 1);
    assert_eq!(t.store.active_count(&UserId::new("ann")).await.unwrap(), 1);
    assert_eq!(
        t.store.user_jobs(&UserId::new("bob")).await.unwrap().len(),
        0
    );

    // The admin starts runners of many users at once.
    let many: Vec<Value> = (0..20).map(|i| start_body(&format!("u{i}"))).collect();
    let r = admin(
        &t.router,
        "POST",
        "/v1/runners/batch",
        Some(json!({"runners": many})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["accepted"], 20);
    assert_eq!(t.queue.depth().await.unwrap(), 21);
}

#[tokio::test]
async fn a_batch_is_refused_whole_when_empty_too_large_or_over_the_keys_rate() {
    let t = test_app(|s| {
        s.limits.batch_max = 12;
        s.rate_limits.enabled = true;
        s.rate_limits.starts_burst = 10;
        s.rate_limits.starts_per_minute = 1;
        s.tiers.free = 10;
    });
    let ann = user_key(&t.router, "ann").await;
    let batch = |n: usize| json!({"runners": vec![start_body("ann"); n]});
    let cases = [
        (json!({"runners": []}), StatusCode::BAD_REQUEST, "runners"),
        (batch(13), StatusCode::BAD_REQUEST, "runners"),
        (
            json!({"runners": [], "extra": 1}),
            StatusCode::BAD_REQUEST,
            "extra",
        ),
        (json!({}), StatusCode::BAD_REQUEST, "runners"),
        // Not an array of objects: malformed as a whole (schemathesis found it answered 200).
        (
            json!({"runners": [[null, null]]}),
            StatusCode::BAD_REQUEST,
            "runners[0]",
        ),
        (
            json!({"runners": [start_body("ann"), 7]}),
            StatusCode::BAD_REQUEST,
            "runners[1]",
        ),
        // More than the key's burst of starts can ever allow at once.
        (batch(11), StatusCode::BAD_REQUEST, "runners"),
    ];
    for (body, status, field) in cases {
        let r = call(
            &t.router,
            "POST",
            "/v1/runners/batch",
            Some(body.clone()),
            Some(&ann),
        )
        .await;
        assert_eq!(r.status, status, "{body}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{body}: {}", r.body);
    }
    assert_eq!(t.queue.depth().await.unwrap(), 0, "nothing written");
    // Each call above counted as one start (7 of the burst of 10): three more fit, then
    // three more do not (429, none of them written).
    let send = |n| {
        call(
            &t.router,
            "POST",
            "/v1/runners/batch",
            Some(batch(n)),
            Some(&ann),
        )
    };
    let r = send(3).await;
    assert_eq!(
        (r.status, r.body["accepted"].clone()),
        (StatusCode::OK, json!(3)),
        "{}",
        r.body
    );
    let r = send(3).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.retry_after.is_some());
    assert_eq!(t.queue.depth().await.unwrap(), 3);
}

#[tokio::test]
async fn a_user_key_holds_at_most_its_share_of_event_streams() {
    let app = test_app(|s| s.events.max_streams_per_key = 2);
    let key = user_key(&app.router, "alice").await;
    let (a, b) = (
        open_events(&app.router, &key, None).await,
        open_events(&app.router, &key, None).await,
    );
    let third = call(&app.router, "GET", "/v1/events", None, Some(&key)).await;
    assert_eq!(
        third.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        third.body
    );
    assert_eq!(third.body["error"]["code"], "rate_limited");
    assert!(third.retry_after.is_some(), "with a Retry-After");
    // Another user, and the admin, are not held by alice's streams.
    let bob = user_key(&app.router, "bob").await;
    let _bob = open_events(&app.router, &bob, None).await;
    let _admin = open_events(&app.router, ADMIN, None).await;
    // A stream that ends gives its place back.
    drop(a);
    let _c = open_events(&app.router, &key, None).await;
    drop(b);
}

#[tokio::test]
async fn resuming_from_before_what_the_stream_kept_starts_with_a_gap_event() {
    let t = test_app(|s| {
        s.events.max_len = 3;
        s.tiers.free = 20;
    });
    let mut first_id = None;
    for _ in 0..10 {
        let r = admin(&t.router, "POST", "/v1/runners", Some(start_body("gus"))).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        if first_id.is_none() {
            first_id = t
                .store
                .events_after(&EventId::ZERO, 1, None)
                .await
                .unwrap()
                .first()
                .map(|e| e.id.clone());
        }
    }
    let first_id = first_id.unwrap();
    let mut body = open_events(&t.router, ADMIN, Some(&first_id)).await;
    let frame = tokio::time::timeout(std::time::Duration::from_secs(1), body.frame())
        .await
        .expect("a first frame")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let text = std::str::from_utf8(&frame).unwrap();
    assert!(text.starts_with("event: gap\n"), "{text}");
    assert!(text.contains(&first_id), "{text}");
    // Then the three events still kept, in order.
    let (kept, _) = read_events(&mut body, 3).await;
    assert_eq!(kept.len(), 3, "{kept:?}");
    // Resuming from the newest kept one: no gap.
    let last = kept[2]["id"].as_str().unwrap();
    let mut body = open_events(&t.router, ADMIN, Some(last)).await;
    let nothing = tokio::time::timeout(std::time::Duration::from_millis(300), body.frame()).await;
    assert!(
        nothing.is_err(),
        "no gap event and nothing else: {nothing:?}"
    );
}
