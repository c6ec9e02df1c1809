//! The OpenAPI document of an orchestrator whose settings register an external strategy: its
//! type is in `StrategyType` and has a `StrategyConfig` variant carrying the registered
//! parameter schema. A test binary of its own: the document reads the process' installed
//! runner kinds, which are installed once per process.

use runfleet_orchestrator::openapi;
use runfleet_shared::config::{ExternalStrategySettings, Settings};
use serde_json::json;

#[test]
fn registered_external_strategies_are_in_the_document() {
    let mut settings = Settings::default();
    let mut entry = ExternalStrategySettings::new("py-momentum", "/usr/bin/python3");
    entry.parameters = json!({
        "type": "object",
        "properties": {"lookback": {"type": "integer", "minimum": 2}},
        "required": ["lookback"],
        "additionalProperties": false
    });
    settings.external_strategies = vec![entry.clone()];
    settings.validate().unwrap();
    runfleet_trading::kinds(&settings).unwrap().install();
    let doc = openapi::document();
    let schemas = &doc["components"]["schemas"];
    let types = schemas["StrategyType"]["enum"].as_array().unwrap();
    assert!(types.contains(&json!("py-momentum")), "{types:?}");
    assert!(types.contains(&json!("sma-cross")), "the built-ins stay");
    let variant = &schemas["PyMomentumConfig"];
    assert_eq!(
        variant["properties"]["type"]["enum"],
        json!(["py-momentum"])
    );
    assert_eq!(variant["properties"]["parameters"], entry.parameters);
    assert!(
        variant["required"]
            .as_array()
            .unwrap()
            .contains(&json!("parameters")),
        "its schema requires a parameter: {variant}"
    );
    let mapping = &schemas["StrategyConfig"]["discriminator"]["mapping"];
    assert_eq!(
        mapping["py-momentum"],
        "#/components/schemas/PyMomentumConfig"
    );
}
