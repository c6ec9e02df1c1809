//! The client against a small axum server that answers as the API would: Retry-After honoured
//! (and capped), refusals decoded into their code, field and status, nothing listening, and the
//! event stream resumed from `Last-Event-ID` after the server cut it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use runfleet_client::{Client, ClientError, EventFilter, JobId, RetryPolicy, StreamEvent};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn json(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_owned(),
    )
        .into_response()
}

const FULL: &str = r#"{"success":false,"error":{"code":"fleet_full","message":"the fleet is at capacity","retryAfterSeconds":1}}"#;
const HEALTHY: &str = r#"{"status":"ok","storeTime":42}"#;

/// A `/healthz` that refuses with 503 and `Retry-After: retry_after` the first `refusals` times.
fn flaky(refusals: usize, retry_after: &'static str, calls: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/healthz",
        get(move || async move {
            if calls.fetch_add(1, Ordering::SeqCst) < refusals {
                let mut r = json(StatusCode::SERVICE_UNAVAILABLE, FULL);
                r.headers_mut()
                    .insert(header::RETRY_AFTER, retry_after.parse().unwrap());
                r
            } else {
                json(StatusCode::OK, HEALTHY)
            }
        }),
    )
}

fn quick(retries: usize, max_delay: Duration) -> RetryPolicy {
    RetryPolicy {
        retries,
        min_delay: Duration::from_millis(10),
        max_delay,
        reconnects: 3,
    }
}

#[tokio::test]
async fn a_503_is_retried_after_the_servers_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = serve(flaky(1, "1", calls.clone())).await;
    let client = Client::new(&url, Some("k"))
        .unwrap()
        .with_retry(quick(3, Duration::from_secs(5)));
    let began = Instant::now();
    let health = client.health().await.expect("healthy after one retry");
    assert_eq!(health.store_time, 42);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The backoff alone would have waited ~10 ms; the server asked for a second.
    assert!(
        began.elapsed() >= Duration::from_millis(950),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn retry_after_is_capped_and_retries_are_bounded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let url = serve(flaky(usize::MAX, "3600", calls.clone())).await;
    let client = Client::new(&url, None)
        .unwrap()
        .with_retry(quick(2, Duration::from_millis(100)));
    let began = Instant::now();
    let e = client.health().await.expect_err("always refused");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "capped: {:?}",
        began.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the first call and two retries"
    );
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.code(), Some("fleet_full"));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn refusals_are_decoded_and_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/v1/runners/{job}",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                json(
                    StatusCode::NOT_FOUND,
                    r#"{"success":false,"error":{"code":"not_found","message":"no runner job-x"}}"#,
                )
            }),
        )
        .route(
            "/v1/users/{user}/entitlement",
            get(|| async {
                json(
                    StatusCode::FORBIDDEN,
                    r#"{"success":false,"error":{"code":"runner_limit_reached","message":"limit","tier":"free","maxWorkers":1,"currentWorkers":1}}"#,
                )
            }),
        )
        .route(
            "/v1/nodes",
            get(|| async { json(StatusCode::OK, r#"{"success":true,"nodes":"oops"}"#) }),
        );
    let url = serve(app).await;
    let client = Client::new(&url, Some("k")).unwrap();

    let e = client.runner(&JobId::new("job-x")).await.unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 404, .. }), "{e:?}");
    assert_eq!(e.code(), Some("not_found"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 404 is not retried");

    let e = client
        .entitlement(&runfleet_client::UserId::new("u"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("runner_limit_reached"));
    assert_eq!(e.detail().unwrap().max_workers, Some(1));
    assert_eq!(e.field(), None);

    let e = client.nodes().await.unwrap_err();
    assert!(
        matches!(e, ClientError::Decode { status: 200, .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let app = Router::new().route(
        "/healthz",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            json(StatusCode::OK, HEALTHY)
        }),
    );
    let url = serve(app).await;
    let client = Client::new(&url, None)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let e = client.health().await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let e = client.health().await.unwrap_err();
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
}

fn event(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","job":"job-1","user":"u1","type":"admitted","epoch":0,"node":"","reason":"","at":1}}"#
    )
}

/// The first connection sends two events and ends; the second must resume after the second.
#[tokio::test]
async fn the_event_stream_resumes_from_the_last_event_id() {
    let connections = Arc::new(AtomicUsize::new(0));
    let seen_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, s) = (connections.clone(), seen_ids.clone());
    let app = Router::new().route(
        "/v1/events",
        get(move |headers: HeaderMap| async move {
            assert_eq!(
                headers["authorization"], "Bearer k",
                "the key goes in the header"
            );
            s.lock().unwrap().push(
                headers
                    .get("last-event-id")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            let events: Vec<Event> = if c.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![
                    Event::default().id("1-0").data(event("1-0")),
                    Event::default().id("2-0").data(event("2-0")),
                ]
            } else {
                vec![
                    Event::default()
                        .event("gap")
                        .data(r#"{"lastEventId":"2-0","message":"trimmed"}"#),
                    Event::default().id("3-0").data(event("3-0")),
                ]
            };
            let stream =
                futures::stream::iter(events.into_iter().map(Ok::<_, std::convert::Infallible>));
            Sse::new(stream)
        }),
    );
    let url = serve(app).await;
    let client = Client::new(&url, Some("k"))
        .unwrap()
        .with_retry(quick(0, Duration::from_millis(50)));
    let items: Vec<_> = client
        .events(EventFilter::default())
        .take(4)
        .collect()
        .await;
    let items: Vec<StreamEvent> = items.into_iter().map(|i| i.expect("event")).collect();
    let ids: Vec<String> = items
        .iter()
        .map(|i| match i {
            StreamEvent::Runner(e) => e.id.clone(),
            StreamEvent::Gap(g) => format!("gap after {}", g.last_event_id),
        })
        .collect();
    assert_eq!(ids, ["1-0", "2-0", "gap after 2-0", "3-0"]);
    assert_eq!(*seen_ids.lock().unwrap(), [None, Some("2-0".to_owned())]);
}

#[tokio::test]
async fn a_refused_event_stream_ends_with_its_error() {
    let app = Router::new().route(
        "/v1/events",
        get(|| async {
            json(
                StatusCode::UNAUTHORIZED,
                r#"{"success":false,"error":{"code":"unauthorized","message":"wrong key"}}"#,
            )
        }),
    );
    let url = serve(app).await;
    let client = Client::new(&url, Some("bad")).unwrap();
    let items: Vec<_> = client.events(EventFilter::default()).collect().await;
    assert_eq!(items.len(), 1);
    let e = items.into_iter().next().unwrap().unwrap_err();
    assert_eq!(e.code(), Some("unauthorized"));
}
