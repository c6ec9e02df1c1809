//! The README's promise: its run command starts the embedded fleet and its curl examples work
//! as printed. This test takes both from README.md, not from a copy.

use std::time::Duration;

use runfleet_tests::{Api, free_port, log_dir, spawn};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md")
}

/// The first ```sh block after the line containing `marker`.
fn sh_block_after(text: &str, marker: &str) -> String {
    let rest = &text[text
        .find(marker)
        .unwrap_or_else(|| panic!("README lacks {marker:?}"))..];
    let start = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let len = rest[start..].find("```").expect("closed block");
    rest[start..start + len].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_run_command_and_curl_examples_work_as_printed() {
    let text = readme();
    // The run command: `VAR=value ... cargo run -p runfleet-orchestrator -- --embedded`.
    let run = sh_block_after(&text, "## The two commands");
    let run = run
        .lines()
        .find(|l| l.contains("cargo run"))
        .expect("a cargo run line");
    let (env_part, cmd) = run.split_once("cargo run").unwrap();
    assert!(
        cmd.trim() == "-p runfleet-orchestrator -- --embedded",
        "unexpected run command: {run}"
    );
    let env: Vec<(&str, String)> = env_part
        .split_whitespace()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k, v.to_owned()))
                .expect("VAR=value")
        })
        .collect();
    assert!(sh_block_after(&text, "Run the whole test suite").contains("scripts/test"));

    let port = free_port();
    let mut process = spawn(
        &log_dir("readme"),
        "embedded",
        "runfleet-orchestrator",
        &[
            "--embedded".into(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
        ],
        env,
    );
    let api = Api::new(format!("http://127.0.0.1:{port}"));
    api.wait_healthy(Duration::from_secs(20))
        .await
        .expect("embedded fleet healthy");

    let demo = sh_block_after(&text, "readme-test: embedded-demo")
        .replace("localhost:8080", &format!("127.0.0.1:{port}"));
    let out = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&demo)
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README block failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        answers.len(),
        5,
        "start, status, upgrade, entitlement, stop:\n{stdout}"
    );
    assert!(answers.iter().all(|a| a["success"] == true), "{stdout}");
    let job = answers[0]["jobId"].as_str().expect("jobId");
    assert_eq!(answers[1]["workers"][0]["worker"]["jobId"], job);
    assert_eq!(
        answers[1]["workers"][0]["worker"]["status"], "running",
        "{stdout}"
    );
    assert_eq!(answers[3]["tier"], "basic");
    assert_eq!(answers[3]["maxWorkers"], 3);
    assert_eq!(answers[4]["status"], "stopped");
    assert_eq!(answers[4]["positions"], serde_json::json!([]));

    // The refused example answers as the README says.
    let bad = sh_block_after(&text, "Bad input is refused");
    let expected = bad
        .lines()
        .find_map(|l| l.strip_prefix("# "))
        .expect("expected answer")
        .to_owned();
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(bad.replace("localhost:8080", &format!("127.0.0.1:{port}")))
        .output()
        .await
        .expect("bash");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);

    process.signal("TERM");
    let status = process
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits on SIGTERM");
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        process.output()
    );
}
