//! `[[external_strategies]]` as a settings file gives them: defaults filled in, the parameter
//! schema kept as JSON, and a bad entry (duplicate type, invalid schema, not an object schema,
//! a bad name) stopping the load with a message naming it.

use runfleet_shared::config::Settings;
use serde_json::json;

fn load(name: &str, toml: &str) -> Result<Settings, String> {
    let dir = std::env::temp_dir().join(format!("runfleet-ext-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("runfleet.toml");
    std::fs::write(&path, toml).unwrap();
    Settings::load(Some(&path)).map_err(|e| e.to_string())
}

#[test]
fn a_file_registers_external_strategies_with_defaults() {
    let s = load(
        "ok",
        r#"
[[external_strategies]]
type = "py-sma"
command = "/usr/bin/python3"
args = ["sma.py"]
parameters = { type = "object", required = ["fast"], properties = { fast = { type = "integer", minimum = 1 } } }

[[external_strategies]]
type = "node-momentum"
command = "node"
memory_limit_mb = 8192
"#,
    )
    .unwrap();
    let [py, node] = &s.external_strategies[..] else {
        panic!("two entries: {:?}", s.external_strategies)
    };
    assert_eq!(py.args, ["sma.py"]);
    assert_eq!(
        py.parameters,
        json!({"type": "object", "required": ["fast"], "properties": {"fast": {"type": "integer", "minimum": 1}}})
    );
    assert_eq!((py.answer_deadline_ms, py.memory_limit_mb), (2_000, 512));
    assert_eq!(py.timeframe, "1m");
    assert_eq!(
        node.parameters,
        json!({"type": "object"}),
        "any object by default"
    );
    assert_eq!(node.memory_limit_mb, 8_192);
    assert!(load("none", "").unwrap().external_strategies.is_empty());
}

#[test]
fn a_bad_registration_stops_the_load_naming_it() {
    let entry = |kind: &str, extra: &str| {
        format!("[[external_strategies]]\ntype = \"{kind}\"\ncommand = \"/bin/true\"\n{extra}\n")
    };
    let twice = format!("{}{}", entry("a", ""), entry("a", ""));
    let e = load("twice", &twice).unwrap_err();
    assert!(
        e.contains("external_strategies") && e.contains("registered twice"),
        "{e}"
    );
    let e = load(
        "schema",
        &entry(
            "b",
            "parameters = { type = \"object\", properties = { x = { type = \"nope\" } } }",
        ),
    )
    .unwrap_err();
    assert!(e.contains("not a valid JSON Schema"), "{e}");
    let e = load("array", &entry("c", "parameters = { type = \"array\" }")).unwrap_err();
    assert!(
        e.contains("\\\"type\\\": \\\"object\\\"") || e.contains("object"),
        "{e}"
    );
    let e = load("name", &entry("Bad Name", "")).unwrap_err();
    assert!(e.contains("type must be"), "{e}");
    let e = load("limits", &entry("d", "memory_limit_mb = 1")).unwrap_err();
    assert!(e.contains("memory_limit_mb"), "{e}");
}
