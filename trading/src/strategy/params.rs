//! Declared strategy parameters: what a start request's `config.parameters` may hold for a
//! strategy, checked by validation, published as JSON Schema, and read back (with defaults)
//! when the strategy is built.

use runfleet_shared::validate::{FieldError, refuse};
use serde_json::{Map, Value, json};

use crate::catalog::timeframe_ms;

/// A declared strategy parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// An integer in `min..=max`.
    Int {
        /// Parameter name.
        name: &'static str,
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
        /// Used when absent; `None` makes the parameter required.
        default: Option<i64>,
    },
    /// One of a few strings.
    Choice {
        /// Parameter name.
        name: &'static str,
        /// Allowed values.
        options: &'static [&'static str],
        /// Used when absent; `None` makes the parameter required.
        default: Option<&'static str>,
    },
}

const TIMEFRAME_NAMES: &[&str] = &["1s", "5s", "1m", "5m", "15m", "30m", "1h", "4h", "1d"];

/// The `timeframe` parameter: the candle length a strategy trades on (1m by default).
pub const TIMEFRAME: Param = Param::Choice {
    name: "timeframe",
    options: TIMEFRAME_NAMES,
    default: Some("1m"),
};

impl Param {
    /// The parameter's name.
    pub fn name(&self) -> &'static str {
        match self {
            Param::Int { name, .. } | Param::Choice { name, .. } => name,
        }
    }

    /// Whether a start request must give it.
    pub fn required(&self) -> bool {
        self.default().is_none()
    }

    /// Its default, as JSON.
    pub fn default(&self) -> Option<Value> {
        match self {
            Param::Int { default, .. } => default.map(Value::from),
            Param::Choice { default, .. } => default.map(Value::from),
        }
    }

    fn expected(&self) -> String {
        match self {
            Param::Int { min, max, .. } => format!("a whole number from {min} to {max}"),
            Param::Choice { options, .. } => format!("one of {}", options.join(", ")),
        }
    }

    /// Checks a given value (`config.parameters.<name>`).
    pub fn check(&self, v: &Value) -> Result<(), FieldError> {
        let ok = match self {
            Param::Int { min, max, .. } => v.as_i64().is_some_and(|n| (*min..=*max).contains(&n)),
            Param::Choice { options, .. } => v.as_str().is_some_and(|s| options.contains(&s)),
        };
        if ok {
            Ok(())
        } else {
            refuse(
                format!("config.parameters.{}", self.name()),
                format!("must be {}", self.expected()),
            )
        }
    }

    /// Refuses its absence when it is required.
    pub fn check_present(&self, params: &Map<String, Value>) -> Result<(), FieldError> {
        if self.required() && !params.contains_key(self.name()) {
            return refuse(
                format!("config.parameters.{}", self.name()),
                format!("missing; must be {}", self.expected()),
            );
        }
        Ok(())
    }

    /// Its JSON Schema.
    pub fn schema(&self) -> Value {
        let mut s = match self {
            Param::Int { min, max, .. } => {
                json!({"type": "integer", "minimum": min, "maximum": max})
            }
            Param::Choice { options, .. } => json!({"type": "string", "enum": options}),
        };
        if let Some(d) = self.default() {
            s["default"] = d;
        }
        s
    }
}

/// The JSON Schema of a parameter list: a closed object, the parameters without a default
/// required.
pub fn schema(params: &[Param]) -> Value {
    let properties: Map<String, Value> = params
        .iter()
        .map(|p| (p.name().to_owned(), p.schema()))
        .collect();
    let required: Vec<&str> = params
        .iter()
        .filter(|p| p.required())
        .map(Param::name)
        .collect();
    let mut s = json!({"type": "object", "properties": properties, "additionalProperties": false});
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    s
}

/// A strategy's parameter values as a start request gave them, read with the declared
/// defaults. Assumes validated input.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    declared: &'static [Param],
    values: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// `values` read against `declared`.
    pub fn new(declared: &'static [Param], values: &'a Map<String, Value>) -> Self {
        Self { declared, values }
    }

    /// An integer parameter's value, or its default (0 when neither).
    pub fn int(&self, name: &str) -> i64 {
        let given = self.values.get(name).and_then(Value::as_i64);
        given
            .or_else(|| match self.declared(name) {
                Some(Param::Int { default, .. }) => *default,
                _ => None,
            })
            .unwrap_or(0)
    }

    /// A choice parameter's value, or its default (`""` when neither).
    pub fn choice(&self, name: &str) -> &'a str {
        let given = self.values.get(name).and_then(Value::as_str);
        given
            .or_else(|| match self.declared(name) {
                Some(Param::Choice { default, .. }) => *default,
                _ => None,
            })
            .unwrap_or("")
    }

    fn declared(&self, name: &str) -> Option<&'static Param> {
        self.declared.iter().find(|p| p.name() == name)
    }

    /// The `timeframe` parameter's length in ms (1m when unknown).
    pub fn timeframe_ms(&self) -> i64 {
        timeframe_ms(self.choice("timeframe")).unwrap_or(60_000) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TIMEFRAMES;

    #[test]
    fn the_timeframe_choices_are_the_catalogs() {
        let Param::Choice { options, .. } = TIMEFRAME else {
            panic!("a choice")
        };
        assert_eq!(
            options,
            TIMEFRAMES.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
    }
}
