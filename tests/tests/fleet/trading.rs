//! Issue 4 through the API, in the embedded mode and on Redis with separate processes: a
//! scalping runner on BTC-PERPETUAL shows its positions and stats changing in status, and a
//! flatten stop answers with the positions it closed and the final stats. A moving-average
//! runner, always in the market once it has entered, shows that the count is exact.

use std::time::Duration;

use runfleet_tests::{ADMIN_KEY, Api, Fleet, eventually, free_port, log_dir, spawn};
use serde_json::{Value, json};

fn start_request(
    user: &str,
    kind: &str,
    parameters: Value,
    instruments: Value,
    risk: Value,
) -> Value {
    json!({
        "userId": user, "strategyId": format!("{kind}-btc"), "brokerId": "deribit",
        "credentials": {"apiKey": "key", "apiSecret": "secret"},
        "config": {"name": format!("BTC {kind}"), "type": kind, "parameters": parameters,
            "riskManagement": risk, "instruments": instruments}
    })
}

/// The user's one runner, as status shows it.
async fn runner(api: &Api, user: &str) -> Value {
    let s = api.status(user).await;
    s["workers"][0].clone()
}

/// A money field: an exact decimal string, never a float or exponent notation.
fn money(v: &Value) -> f64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("money as a decimal string: {v}"));
    assert!(
        !s.contains(['e', 'E']) && s.parse::<f64>().is_ok(),
        "plain decimal: {s}"
    );
    s.parse().unwrap()
}

async fn scalping_round(api: &Api, user: &str) {
    let body = start_request(
        user,
        "scalping",
        json!({"timeframe": "1m", "rsiPeriod": 5}),
        json!(["BTC-PERPETUAL"]),
        json!({"maxPositionSize": 100, "stopLossPercent": 2, "takeProfitPercent": 3}),
    );
    let (code, started) = api.post("/v1/runners", &body).await;
    assert_eq!(code, 202, "{started}");

    // Positions and stats change in status as the runner trades.
    let first = eventually(
        Duration::from_secs(30),
        "a closed trade in status",
        || async {
            let w = runner(api, user).await;
            (w["stats"]["totalTrades"].as_u64()? > 0).then_some(w)
        },
    )
    .await;
    assert_eq!(first["stats"]["currency"], "BTC", "{first}");
    money(&first["stats"]["totalPnL"]);
    money(&first["stats"]["fees"]);
    let trades = first["stats"]["totalTrades"].as_u64().unwrap();
    eventually(Duration::from_secs(30), "stats moving on", || async {
        let w = runner(api, user).await;
        (w["stats"]["totalTrades"].as_u64()? > trades).then_some(())
    })
    .await;
    // Stop while a position is open.
    let seen = eventually(Duration::from_secs(30), "an open position", || async {
        let w = runner(api, user).await;
        (!w["positions"].as_array()?.is_empty()).then_some(w)
    })
    .await;
    let p = &seen["positions"][0];
    assert_eq!(p["instrumentName"], "BTC-PERPETUAL");
    assert_eq!(p["currency"], "BTC");
    assert_eq!(p["amount"], "100");
    money(&p["unrealizedPnL"]);
    money(&p["entryPrice"]);
    let job = started["jobId"].as_str().unwrap();
    let (code, stopped) = api
        .post(
            &format!("/v1/runners/{job}/stop"),
            &json!({"userId": user, "flattenPositions": true}),
        )
        .await;
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(stopped["positions"], json!([]), "flat: {stopped}");
    let flattened = stopped["flattenedPositions"].as_u64().unwrap();
    assert!(flattened <= 1, "one instrument: {stopped}");
    let final_trades = stopped["stats"]["totalTrades"].as_u64().unwrap();
    let seen_trades = seen["stats"]["totalTrades"].as_u64().unwrap();
    assert!(
        final_trades >= seen_trades + flattened,
        "a flattened position is a closed trade: {seen} then {stopped}"
    );
    println!(
        "{user}: scalping stopped, flattened {flattened}, final stats {}",
        stopped["stats"]
    );
    // Status shows the same end.
    let w = runner(api, user).await;
    assert_eq!(w["worker"]["status"], "stopped");
    assert_eq!(w["stats"], stopped["stats"]);
}

async fn sma_cross_round(api: &Api, user: &str) {
    // Stop-loss and take-profit out of reach: once in, the strategy only flips.
    let body = start_request(
        user,
        "sma-cross",
        json!({"fastPeriod": 2, "slowPeriod": 5}),
        json!(["BTC-PERPETUAL", "ETH-PERPETUAL"]),
        json!({"maxPositionSize": 100, "stopLossPercent": 100, "takeProfitPercent": 1000}),
    );
    let (code, started) = api.post("/v1/runners", &body).await;
    assert_eq!(code, 202, "{started}");
    let seen = eventually(Duration::from_secs(30), "both positions open", || async {
        let w = runner(api, user).await;
        (w["positions"].as_array()?.len() == 2).then_some(w)
    })
    .await;
    assert_eq!(
        seen["stats"]["currency"], "USD",
        "BTC and ETH converted: {seen}"
    );
    let job = started["jobId"].as_str().unwrap();
    let (code, stopped) = api
        .post(
            &format!("/v1/runners/{job}/stop"),
            &json!({"userId": user, "mode": "flatten"}),
        )
        .await;
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["flattenedPositions"], 2, "{stopped}");
    assert_eq!(stopped["positions"], json!([]));
    println!(
        "{user}: sma-cross stopped, flattened 2, final stats {}",
        stopped["stats"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_trades_reports_and_flattens() {
    let port = free_port();
    let mut process = spawn(
        &log_dir("trading-embedded"),
        "embedded",
        "runfleet-orchestrator",
        &[
            "--embedded".into(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
        ],
        [
            ("RUNFLEET__SECURITY__ADMIN_KEY", ADMIN_KEY.to_owned()),
            ("RUNFLEET__HEARTBEAT__INTERVAL_MS", "200".into()),
            ("RUNFLEET__HEARTBEAT__LEASE_MS", "3000".into()),
            ("RUNFLEET__MARKET__TICK_MS", "20".into()),
        ],
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    api.wait_healthy(Duration::from_secs(20))
        .await
        .expect("embedded fleet healthy");
    scalping_round(&api, "trader-embedded").await;
    sma_cross_round(&api, "crosser-embedded").await;
    process.signal("TERM");
    process.wait_exit(Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_mode_trades_reports_and_flattens() {
    let fleet = Fleet::new("trading");
    fleet.cleanup().await;
    let (_orchestrator, api) = fleet.orchestrator("orchestrator").await;
    let _worker = fleet.worker("worker", 4);
    scalping_round(&api, "trader-redis").await;
    sma_cross_round(&api, "crosser-redis").await;
    fleet.cleanup().await;
}
