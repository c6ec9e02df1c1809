//! Issue 17, rate limits: a user key over its per-key limit is refused 429 `rate_limited` with
//! a Retry-After and nothing written, while another user's key goes on; the limits hold per
//! orchestrator.

use reqwest::Method;
use runfleet_tests::{Fleet, start_request};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_over_its_limit_is_refused_and_another_is_not() {
    let mut fleet = Fleet::new("rate-limits");
    fleet
        .set("RUNFLEET__RATE_LIMITS__STARTS_BURST", "3")
        .set("RUNFLEET__RATE_LIMITS__STARTS_PER_MINUTE", "1");
    fleet.cleanup().await;
    let (_a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    for user in ["rex", "sue"] {
        let (code, body) = api_a
            .put_admin(
                &format!("/v1/users/{user}/entitlement"),
                &json!({"tier": "enterprise", "days": 1}),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    let rex = api_a.with_key(Some(&api_a.user_key("rex").await));
    let sue = api_a.with_key(Some(&api_a.user_key("sue").await));
    let start = |api: &runfleet_tests::Api, user: &'static str, i: usize| {
        let api = api.clone();
        async move {
            api.request(
                Method::POST,
                "/v1/runners",
                Some(&start_request(user, &format!("s{i}"))),
                None,
            )
            .await
        }
    };
    for i in 0..3 {
        assert_eq!(start(&rex, "rex", i).await.status, 202);
    }
    let mut refused = 0;
    for i in 3..8 {
        let a = start(&rex, "rex", i).await;
        assert_eq!(a.status, 429, "{:?}", a.body);
        assert_eq!(a.body["error"]["code"], "rate_limited");
        let secs: u64 = a.retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
        refused += 1;
    }
    // Nothing written for the refused calls: rex holds the three admitted jobs only.
    let mut r = fleet.redis().await;
    let jobs: u64 = redis::cmd("ZCARD")
        .arg(format!("{}:user:rex:jobs", fleet.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(jobs, 3, "{refused} refused starts wrote nothing");
    // Another user's key is unaffected.
    for i in 0..3 {
        assert_eq!(start(&sue, "sue", i).await.status, 202);
    }
    // The limit is this orchestrator's: the other one has its own budget for rex's key.
    let rex_b = api_b.with_key(rex.key());
    assert_eq!(start(&rex_b, "rex", 10).await.status, 202);
    fleet.cleanup().await;
}
