//! Issue 10's any-client enqueue: a runner started, observed and stopped from redis-py alone,
//! following only docs/redis-schema.md (tests/any_client/start_observe_stop.py), and run by a
//! real worker node. No orchestrator: the stop script's command goes straight to the node.

use std::path::Path;
use std::time::Duration;

use runfleet_tests::Fleet;

/// A Python with the packages of tests/any_client/requirements.txt. Never skipped: without it
/// the test fails and says how to get one.
fn python() -> String {
    match std::env::var("RUNFLEET_TEST_PYTHON") {
        Ok(python) if !python.is_empty() => python,
        _ => panic!(
            "this test runs tests/any_client/start_observe_stop.py and needs RUNFLEET_TEST_PYTHON: \
             a Python with the packages of tests/any_client/requirements.txt. scripts/test makes \
             one in target/any-client-venv and sets it; by hand:\n\n    python3 -m venv \
             target/any-client-venv && target/any-client-venv/bin/pip install -r \
             tests/any_client/requirements.txt\n    export \
             RUNFLEET_TEST_PYTHON=$PWD/target/any-client-venv/bin/python\n"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_is_started_observed_and_stopped_from_redis_py_alone() {
    let python = python();
    let fleet = Fleet::new("anyclient");
    fleet.cleanup().await;
    let node = fleet.worker("worker-1", 2);

    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/any_client/start_observe_stop.py");
    let run = tokio::process::Command::new(&python)
        .arg(&script)
        .args(["--redis-url", fleet.redis_url()])
        .args(["--prefix", &fleet.prefix])
        .args(["--queue", "jobs"])
        .args([
            "--credentials-key",
            fleet.setting("RUNFLEET__SECURITY__CREDENTIALS_KEY"),
        ])
        .args(["--timeout", "30"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the any-client script finished within 90 s")
        .unwrap_or_else(|e| panic!("cannot run {python} (RUNFLEET_TEST_PYTHON): {e}"));
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown with --nocapture: what each step saw.
    println!("{output}");
    assert!(
        out.status.success(),
        "{} exited {}:\n{output}\n--- worker node ---\n{}",
        script.display(),
        out.status,
        node.output()
    );
    assert!(output.contains("any-client: ok"), "{output}");
    fleet.cleanup().await;
}
