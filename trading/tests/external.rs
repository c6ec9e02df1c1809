//! External strategies (child processes speaking docs/strategy-protocol.md), run by the real
//! runtime: the Python sma-cross and scalping of sdk/python/examples trade exactly as the
//! built-in ones over the EUR-USD replay, and each way a strategy can misbehave ends as a crash
//! of that runner (or, for orders past the risk limit, as a built-in's orders do), leaving no
//! process behind. Needs python3: fails, never skips, without it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eurusd_config, eurusd_market, play, spec};
use runfleet_shared::config::{ExternalStrategySettings, MarketSettings};
use runfleet_shared::job::{JobSpec, StopMode, StrategyConfig};
use runfleet_shared::kind::{ReportSink, RunOutcome, RunStart, RunnerKind, StopCause, StopSignal};
use runfleet_shared::lease::LeaseDeadline;
use runfleet_shared::validate::ValidationOptions;
use runfleet_trading::TradingKind;
use runfleet_trading::broker::Fill;
use runfleet_trading::external::ExternalStrategies;
use runfleet_trading::feed::ReplayCache;
use runfleet_trading::paper::PaperBroker;
use runfleet_trading::runner as trading;
use runfleet_trading::session::Session;
use serde_json::{Value, json};

/// The real path of an interpreter, as it prints it with `args`; fails naming what to install
/// when it is missing. (The child's environment is empty, so a shim that needs one, like
/// pyenv's, would not do: the path is the interpreter's own.)
fn interpreter(program: &str, args: &[&str], install: &str) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("this test needs {program} on PATH ({install}): {e}"));
    assert!(out.status.success(), "{program} does not run: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn python() -> String {
    interpreter(
        "python3",
        &["-c", "import sys; print(sys.executable)"],
        "apt-get install python3",
    )
}

fn node() -> String {
    interpreter(
        "node",
        &["-e", "console.log(process.execPath)"],
        "apt-get install nodejs",
    )
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

fn sma_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "fastPeriod": {"type": "integer", "minimum": 1, "maximum": 200},
            "slowPeriod": {"type": "integer", "minimum": 2, "maximum": 500},
            "timeframe": {"type": "string", "default": "1m"}
        },
        "required": ["fastPeriod", "slowPeriod"],
        "additionalProperties": false
    })
}

fn scalping_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "rsiPeriod": {"type": "integer", "minimum": 2, "maximum": 100, "default": 14},
            "timeframe": {"type": "string", "default": "1m"}
        },
        "additionalProperties": false
    })
}

/// An entry running `script` (under the repository) with python3.
fn python_entry(kind: &str, script: &str, args: &[&str]) -> ExternalStrategySettings {
    let mut e = ExternalStrategySettings::new(kind, python());
    e.args = std::iter::once(repo(script))
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect();
    e.default_instruments = vec!["EUR-USD".into()];
    e
}

fn externals(entries: Vec<ExternalStrategySettings>) -> ExternalStrategies {
    for e in &entries {
        e.validate().unwrap();
    }
    ExternalStrategies::new(&entries).unwrap()
}

fn market() -> MarketSettings {
    eurusd_market()
}

fn config(kind: &str, parameters: Value) -> Value {
    eurusd_config(kind, parameters)
}

/// Plays the whole replay with an external strategy, as `common::play` does a built-in one.
async fn play_external(
    spec: &JobSpec,
    externals: &ExternalStrategies,
) -> (Session<PaperBroker>, Vec<Vec<Fill>>) {
    let (mut session, mut feed) =
        trading::start_with(spec, &market(), externals, None, &ReplayCache::default())
            .await
            .unwrap();
    session.start_strategy().await.unwrap();
    let mut steps = Vec::new();
    while let Some(bars) = feed.next_bars() {
        steps.push(session.step(&bars).await);
        assert_eq!(session.crashed(), None);
    }
    session
        .stop_strategy("requested", Duration::from_secs(1))
        .await;
    (session, steps)
}

async fn same_as_built_in(
    built_in: &str,
    external: &str,
    script: &str,
    schema: Value,
    params: Value,
) {
    let (builtin, builtin_steps) = play(
        &spec("job-builtin", config(built_in, params.clone())),
        &market(),
    )
    .await
    .unwrap();
    let mut entry = python_entry(external, script, &[]);
    entry.parameters = schema;
    let ext = externals(vec![entry]);
    let (external, external_steps) =
        play_external(&spec("job-external", config(external, params)), &ext).await;
    let trades = builtin.report().stats.total_trades;
    assert!(trades > 10, "the replay trades ({trades} trades)");
    assert_eq!(external_steps.len(), builtin_steps.len());
    assert_eq!(
        external_steps, builtin_steps,
        "the same fills, step by step"
    );
    assert_eq!(external.report().stats, builtin.report().stats);
    assert_eq!(external.report().positions, builtin.report().positions);
    assert_eq!(external.events(), builtin.events());
    println!(
        "{external:?}: {trades} trades, pnl {}",
        builtin.report().stats.total_pnl,
        external = external.instruments().len()
    );
}

#[tokio::test]
async fn python_sma_cross_trades_exactly_as_the_built_in_one() {
    same_as_built_in(
        "sma-cross",
        "py-sma-cross",
        "sdk/python/examples/sma_cross.py",
        sma_schema(),
        json!({"fastPeriod": 10, "slowPeriod": 30, "timeframe": "1h"}),
    )
    .await;
}

#[tokio::test]
async fn python_scalping_trades_exactly_as_the_built_in_one() {
    same_as_built_in(
        "scalping",
        "py-scalping",
        "sdk/python/examples/scalping.py",
        scalping_schema(),
        json!({"rsiPeriod": 14, "timeframe": "1h"}),
    )
    .await;
}

#[tokio::test]
async fn a_resumed_python_strategy_continues_from_its_saved_state_exactly() {
    let params = json!({"fastPeriod": 10, "slowPeriod": 30, "timeframe": "1h"});
    let (builtin, _) = play(
        &spec("job-whole", config("sma-cross", params.clone())),
        &market(),
    )
    .await
    .unwrap();
    let mut entry = python_entry("py-sma-cross", "sdk/python/examples/sma_cross.py", &[]);
    entry.parameters = sma_schema();
    let ext = externals(vec![entry]);
    let spec = spec("job-resumed", config("py-sma-cross", params));
    // The first half, then the saved state as the node stores it (the feed's place included).
    let (mut first, mut feed) =
        trading::start_with(&spec, &market(), &ext, None, &ReplayCache::default())
            .await
            .unwrap();
    first.start_strategy().await.unwrap();
    for _ in 0..2_500 {
        let bars = feed.next_bars().unwrap();
        first.step(&bars).await;
    }
    let saved = first.report_with(Some(feed.state())).state.unwrap();
    first.stop_strategy("shutdown", Duration::ZERO).await;
    let saved = saved.parse().unwrap();
    assert!(
        saved["strategy"]["tracks"]["EUR-USD"]["closes"]
            .as_array()
            .is_some_and(|c| c.len() == 30),
        "the child's own state is in the checkpoint: {}",
        saved["strategy"]
    );
    // A new child, whose hello carries that state, plays the rest.
    let (mut second, mut feed) = trading::start_with(
        &spec,
        &market(),
        &ext,
        Some(&saved),
        &ReplayCache::default(),
    )
    .await
    .unwrap();
    second.start_strategy().await.unwrap();
    while let Some(bars) = feed.next_bars() {
        second.step(&bars).await;
        assert_eq!(second.crashed(), None);
    }
    second.stop_strategy("requested", Duration::ZERO).await;
    assert_eq!(second.events().ticks, 5_000);
    assert_eq!(
        second.report().stats,
        builtin.report().stats,
        "stopped and resumed halfway, it ends exactly where the uninterrupted built-in one does"
    );
}

/// A marker in the child's argv, unique to a test, to find its processes in /proc.
fn marker(test: &str) -> String {
    format!("--runfleet-test-marker={test}-{}", std::process::id())
}

/// Processes whose command line holds `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(name);
        }
    }
    found
}

/// Runs a misbehaving strategy (`misbehave.py MODE`) through the kind, as the node does, and
/// returns how the run ended; it must end by itself within 30 s.
async fn misbehave(mode: &str, tweak: impl FnOnce(&mut ExternalStrategySettings)) -> RunOutcome {
    let tag = marker(mode);
    let mut entry = python_entry(
        "misbehave",
        "trading/tests/strategies/misbehave.py",
        &[mode, &tag],
    );
    entry.answer_deadline_ms = 500;
    entry.start_deadline_ms = 5_000;
    tweak(&mut entry);
    let kind = TradingKind::new(market(), ValidationOptions::default())
        .with_externals(externals(vec![entry]));
    let (_tx, stop) = StopSignal::channel(LeaseDeadline::unarmed());
    let report = ReportSink::default();
    let run = kind.run(RunStart {
        spec: Arc::new(spec(&format!("job-{mode}"), config("misbehave", json!({})))),
        resume: None,
        stop,
        report,
    });
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("{mode}: the run did not end within 30 s"))
        .unwrap_or_else(|e| panic!("{mode}: a configuration failure, not a crash: {e}"));
    // The process group is killed when the crash is seen: nothing of it is left.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        processes_with(&tag),
        Vec::<String>::new(),
        "{mode}: processes left"
    );
    out
}

fn crash_reason(out: &RunOutcome) -> &str {
    out.crashed
        .as_deref()
        .unwrap_or_else(|| panic!("expected a crash, got {out:?}"))
}

#[tokio::test]
async fn a_strategy_that_exits_at_start_is_a_crash() {
    let out = misbehave("crash-at-start", |_| {}).await;
    let reason = crash_reason(&out);
    assert!(
        reason.contains("(start)") && reason.contains("exited with status 3"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_strategy_that_raises_mid_run_is_a_crash_after_its_trades() {
    let out = misbehave("crash-mid-run", |_| {}).await;
    let reason = crash_reason(&out);
    assert!(
        reason.contains("(candle)") && reason.contains("exited with status 1"),
        "{reason}"
    );
    let state = out.report.state.unwrap().parse().unwrap();
    assert_eq!(
        state["events"]["ticks"], 6,
        "five candles answered, the sixth crashed it"
    );
}

#[tokio::test]
async fn a_strategy_that_never_answers_misses_its_deadline() {
    let out = misbehave("silent", |_| {}).await;
    assert!(crash_reason(&out).contains("no answer within the deadline"));
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let out = misbehave("garbage", |_| {}).await;
    assert!(crash_reason(&out).contains("protocol error"), "{out:?}");
}

#[tokio::test]
async fn a_flood_of_messages_passes_the_per_candle_budget() {
    let out = misbehave("flood", |e| e.max_messages_per_candle = 100).await;
    assert!(
        crash_reason(&out).contains("more than 100 messages"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_line_past_the_limit_is_refused_before_it_is_buffered() {
    let out = misbehave("long-line", |e| e.max_line_bytes = 4_096).await;
    assert!(
        crash_reason(&out).contains("longer than 4096 bytes"),
        "{out:?}"
    );
}

#[tokio::test]
async fn allocating_past_the_memory_limit_ends_the_strategy() {
    let out = misbehave("memory", |e| e.memory_limit_mb = 256).await;
    let reason = crash_reason(&out);
    assert!(
        reason.contains("exited with status 1"),
        "MemoryError: {reason}"
    );
}

#[tokio::test]
async fn spinning_the_cpu_past_its_limit_is_killed_by_the_kernel() {
    let out = misbehave("cpu", |e| {
        e.cpu_seconds = 1;
        e.answer_deadline_ms = 20_000;
    })
    .await;
    assert!(crash_reason(&out).contains("SIGXCPU"), "{out:?}");
}

/// Runs a well-behaved mode over the first candles of the replay and stops it (hold).
async fn behave(mode: &str, max_ticks: u64) -> Value {
    behave_with(mode, max_ticks, |_| {}).await
}

/// [`behave`], the registration changed by `tweak`.
async fn behave_with(
    mode: &str,
    max_ticks: u64,
    tweak: impl FnOnce(&mut ExternalStrategySettings),
) -> Value {
    let tag = marker(mode);
    let mut entry = python_entry(
        "misbehave",
        "trading/tests/strategies/misbehave.py",
        &[mode, &tag],
    );
    tweak(&mut entry);
    let kind = TradingKind::new(market(), ValidationOptions::default())
        .with_externals(externals(vec![entry]));
    let (tx, stop) = StopSignal::channel(LeaseDeadline::unarmed());
    let report = ReportSink::default();
    let task = tokio::spawn(kind.run(RunStart {
        spec: Arc::new(spec(
            &format!("job-{mode}"),
            json!({
                "name": "n", "type": "misbehave", "instruments": ["EUR-USD"],
                "riskManagement": {"maxPositionSize": 10000, "stopLossPercent": 50, "takeProfitPercent": 100}
            }),
        )),
        resume: None,
        stop,
        report: report.clone(),
    }));
    let ticks = |r: &ReportSink| {
        r.latest()
            .state
            .map(|s| s.parse().unwrap()["events"]["ticks"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    for _ in 0..3_000 {
        if ticks(&report) >= max_ticks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send_replace(Some(StopCause::Requested(StopMode::Hold)));
    let out = task.await.unwrap().unwrap();
    assert_eq!(out.crashed, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        processes_with(&tag),
        Vec::<String>::new(),
        "{mode}: processes left"
    );
    out.report.state.unwrap().parse().unwrap()
}

#[tokio::test]
async fn orders_past_the_risk_limit_are_clipped_as_a_built_in_strategys_are() {
    let state = behave("oversize", 50).await;
    assert!(
        state["events"]["clipped"].as_u64().unwrap() >= 1,
        "{}",
        state["events"]
    );
    assert!(
        state["events"]["refused"].as_u64().unwrap() >= 1,
        "{}",
        state["events"]
    );
    let position = &state["broker"]["account"]["positions"]["EUR-USD"];
    let size: rust_decimal::Decimal = position["size"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        size,
        rust_decimal::Decimal::from(10_000),
        "held at maxPositionSize: {position}"
    );
}

#[tokio::test]
async fn fills_and_account_updates_reach_the_strategy_before_its_next_candle() {
    let state = behave("observe", 6).await;
    let seen = &state["strategy"];
    let fills = seen["fills"].as_array().unwrap();
    let accounts = seen["accounts"].as_array().unwrap();
    assert!(fills.len() >= 2, "{seen}");
    assert_eq!(fills[0]["side"], "buy");
    assert_eq!(fills[0]["positionAfter"], "10000");
    assert_eq!(fills[1]["side"], "sell");
    assert_eq!(fills[1]["positionAfter"], "0");
    // One account update per candle after fills, showing the position the fill left.
    assert_eq!(accounts.len(), fills.len(), "{seen}");
    assert_eq!(accounts[0][0]["instrument"], "EUR-USD");
    assert_eq!(accounts[0][0]["size"], "10000");
}

#[tokio::test]
async fn the_strategy_sees_no_environment_and_no_credentials() {
    // The test process has an environment (PATH, HOME, cargo's variables): the node's would
    // hold its secrets. None of it reaches the child.
    let ours: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    assert!(ours.iter().any(|k| k == "PATH"));
    let state = behave("env", 5).await;
    let env = state["strategy"]["env"].as_object().unwrap();
    // Python itself may set LC_CTYPE (PEP 538 locale coercion); nothing else is there.
    let keys: Vec<&String> = env.keys().filter(|k| *k != "LC_CTYPE").collect();
    assert!(keys.is_empty(), "the child saw {keys:?}");
    assert!(
        !state.to_string().contains("secret"),
        "the job's apiSecret never reaches it"
    );
}

#[tokio::test]
async fn the_node_example_speaks_the_same_protocol() {
    let mut entry = ExternalStrategySettings::new("node-momentum", node());
    entry.args = vec![repo("sdk/node/momentum.js")];
    // V8 reserves gigabytes of address space up front: RLIMIT_AS must leave room for it.
    entry.memory_limit_mb = 16_384;
    entry.start_deadline_ms = 10_000;
    let ext = externals(vec![entry]);
    let spec = spec(
        "job-node",
        config("node-momentum", json!({"lookback": 10, "timeframe": "1h"})),
    );
    let (session, steps) = play_external(&spec, &ext).await;
    assert_eq!(steps.len(), 5_000);
    let stats = session.report().stats;
    println!("node momentum on EUR-USD 1h: {stats:?}");
    assert!(stats.total_trades > 10, "it traded: {stats:?}");
    assert_eq!(session.events().refused, 0, "targets stay within the limit");
}

#[tokio::test]
async fn the_strategy_runs_as_the_registered_user_in_its_workdir() {
    let euid = std::fs::metadata("/proc/self").unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&euid),
        0,
        "this test runs the child as nobody, which needs root (CI runs as root)"
    );
    // An interpreter the user nobody can run (a pyenv one under /root cannot).
    let system_python = "/usr/bin/python3";
    assert!(
        std::path::Path::new(system_python).exists(),
        "this test needs {system_python} (apt-get install python3)"
    );
    let state = behave_with("env", 3, |e| {
        e.command = system_python.into();
        e.uid = Some(65_534);
        e.gid = Some(65_534);
        e.workdir = Some("/tmp".into());
    })
    .await;
    let seen = &state["strategy"];
    assert_eq!(
        (seen["uid"].as_u64(), seen["gid"].as_u64()),
        (Some(65_534), Some(65_534))
    );
    assert_eq!(seen["cwd"], "/tmp");
}

#[test]
fn external_types_validate_against_their_schema_and_name_the_field() {
    let mut entry = python_entry("py-sma-cross", "sdk/python/examples/sma_cross.py", &[]);
    entry.parameters = sma_schema();
    let kind = TradingKind::new(MarketSettings::default(), ValidationOptions::default())
        .with_externals(externals(vec![entry]));
    assert!(kind.config_types().contains(&"py-sma-cross"));
    assert_eq!(kind.parameter_schema()["py-sma-cross"], sma_schema());
    let request = |params: Value| {
        serde_json::from_value::<runfleet_shared::job::StartRunnerRequest>(json!({
            "userId": "u1", "strategyId": "s1", "brokerId": "paper",
            "credentials": {"apiKey": "k", "apiSecret": "s"},
            "config": {"name": "n", "type": "py-sma-cross", "parameters": params}
        }))
        .unwrap()
    };
    let mut ok = request(json!({"fastPeriod": 5, "slowPeriod": 20}));
    kind.apply_defaults(&mut ok.config);
    kind.validate(&ok).unwrap();
    let StrategyConfig {
        instruments,
        parameters,
        ..
    } = &ok.config;
    assert_eq!(
        instruments,
        &vec!["EUR-USD".to_owned()],
        "the registered defaults"
    );
    assert_eq!(parameters["timeframe"], "1m", "the schema's default");
    let field = |params: Value| {
        let mut req = request(params);
        kind.apply_defaults(&mut req.config);
        kind.validate(&req).unwrap_err().field
    };
    assert_eq!(
        field(json!({"fastPeriod": 0, "slowPeriod": 20})),
        "config.parameters.fastPeriod"
    );
    assert_eq!(
        field(json!({"fastPeriod": 5})),
        "config.parameters.slowPeriod"
    );
    assert_eq!(
        field(json!({"fastPeriod": 5, "slowPeriod": 20, "shell": "rm -rf /"})),
        "config.parameters.shell"
    );
    assert_eq!(
        field(json!({"fastPeriod": 5, "slowPeriod": 20, "timeframe": "7m"})),
        "config.parameters.timeframe"
    );
}

#[tokio::test]
async fn a_program_that_is_not_there_is_a_configuration_failure_not_a_crash() {
    let entry = ExternalStrategySettings::new("gone", "/nonexistent/strategy");
    let kind = TradingKind::new(market(), ValidationOptions::default())
        .with_externals(externals(vec![entry]));
    let (_tx, stop) = StopSignal::channel(LeaseDeadline::unarmed());
    let e = kind
        .run(RunStart {
            spec: Arc::new(spec("job-gone", config("gone", json!({})))),
            resume: None,
            stop,
            report: ReportSink::default(),
        })
        .await
        .unwrap_err();
    assert!(e.contains("not an executable file"), "{e}");
}

#[test]
fn a_registration_that_clashes_with_a_built_in_or_is_no_schema_is_refused() {
    let clash = ExternalStrategySettings::new("sma-cross", "/bin/true");
    assert!(
        ExternalStrategies::new(&[clash])
            .unwrap_err()
            .contains("built-in")
    );
    let mut bad = ExternalStrategySettings::new("x", "/bin/true");
    bad.parameters = json!({"type": "object", "properties": {"a": {"type": "nonsense"}}});
    assert!(bad.validate().unwrap_err().contains("JSON Schema"));
    let mut not_object = ExternalStrategySettings::new("x", "/bin/true");
    not_object.parameters = json!({"type": "array"});
    assert!(not_object.validate().is_err());
}
