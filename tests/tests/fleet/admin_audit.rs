//! Issue 17, audit trail: request ids on every answer and in the logs, and every admin action in
//! the capped `admin-audit` stream in Redis, read back through another orchestrator.

use std::time::Duration;

use reqwest::Method;
use runfleet_tests::{ADMIN_KEY, Fleet, eventually};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_actions_land_in_the_redis_trail_and_the_logs_with_their_request_ids() {
    let mut fleet = Fleet::new("admin-audit");
    fleet.set("RUNFLEET__ADMIN_AUDIT__MAX_ENTRIES", "3");
    fleet.set("RUNFLEET__TELEMETRY__FORMAT", "json");
    fleet.cleanup().await;
    let (a, api_a) = fleet.orchestrator("orchestrator-a").await;
    let (_b, api_b) = fleet.orchestrator("orchestrator-b").await;
    let _node = fleet.worker("worker", 2);

    let issued = api_a
        .request(
            Method::POST,
            "/v1/users/audra/keys",
            Some(&json!({})),
            Some("fleet-issue-1"),
        )
        .await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    assert_eq!(issued.request_id.as_deref(), Some("fleet-issue-1"));
    let key = issued.body["apiKey"].as_str().unwrap().to_owned();
    let tier = api_a
        .request(
            Method::PUT,
            "/v1/users/audra/entitlement",
            Some(&json!({"tier": "basic", "days": 3})),
            Some("fleet-tier-1"),
        )
        .await;
    assert_eq!(tier.status, 200, "{:?}", tier.body);
    let user = api_a.with_key(Some(&key));
    let started = user
        .request(
            Method::POST,
            "/v1/runners",
            Some(&runfleet_tests::start_request("audra", "s1")),
            None,
        )
        .await;
    assert_eq!(started.status, 202, "{:?}", started.body);
    let made = started.request_id.expect("a request id is made up");
    assert_eq!(made.len(), 36, "{made}");
    let job = started.body["jobId"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(15), "the runner runs", || async {
        let s = api_b.status("audra").await;
        (s["queueStats"]["runningWorkers"] == 1).then_some(())
    })
    .await;
    let stop = api_b
        .request(
            Method::POST,
            &format!("/v1/runners/{job}/stop"),
            Some(&json!({"mode": "hold"})),
            Some("fleet-stop-1"),
        )
        .await;
    assert_eq!(stop.status, 200, "{:?}", stop.body);
    let revoke = api_b
        .request(
            Method::DELETE,
            &format!(
                "/v1/users/audra/keys/{}",
                issued.body["keyId"].as_str().unwrap()
            ),
            None,
            Some("fleet-revoke-1"),
        )
        .await;
    assert_eq!(revoke.status, 200);

    // Four actions, through two orchestrators, into one trail capped at three.
    let trail = api_a
        .request(Method::GET, "/v1/audit", None, Some("fleet-read"))
        .await;
    assert_eq!(trail.status, 200);
    let entries = trail.body["entries"].as_array().unwrap().clone();
    let ids: Vec<&str> = entries
        .iter()
        .map(|e| e["requestId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fleet-revoke-1", "fleet-stop-1", "fleet-tier-1"]);
    assert!(entries.iter().all(|e| e["actor"] == "admin"));
    assert_eq!(entries[1]["action"], "runner.stopped");
    assert_eq!(entries[1]["detail"], json!({"jobId": job, "mode": "hold"}));

    // The stream in Redis itself: named apart from the fencing audit, trimmed, no secrets.
    let mut r = fleet.redis().await;
    let raw: redis::Value = redis::cmd("XRANGE")
        .arg(format!("{}:admin-audit", fleet.prefix))
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await
        .unwrap();
    let text = format!("{raw:?}");
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{}:admin-audit", fleet.prefix))
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(len, 3, "capped by admin_audit.max_entries");
    assert!(!text.contains(ADMIN_KEY) && !text.contains(&key), "{text}");

    // The structured log line, with the request id, in the orchestrator that did the action.
    let log = a.output();
    let line: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "admin action" && l["request_id"] == "fleet-tier-1")
        .unwrap_or_else(|| panic!("no audit log line for fleet-tier-1:\n{log}"));
    assert_eq!(
        (&line["actor"], &line["action"], &line["user"]),
        (&json!("admin"), &json!("tier.changed"), &json!("audra")),
        "{line}"
    );
    assert_eq!(
        line["span"]["request_id"], "fleet-tier-1",
        "the request's span: {line}"
    );
    assert!(
        !log.contains(ADMIN_KEY) && !log.contains(&key),
        "no keys in logs"
    );
    fleet.cleanup().await;
}
