//! Helpers for reading a [`Task`]'s JSON input and producing a JSON [`TaskOutput`].

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{AgentError, Task, TaskOutput};

impl Task {
    /// The input text, with an empty input read as `null`.
    fn input_text(&self) -> &str {
        if self.input.trim().is_empty() {
            "null"
        } else {
            &self.input
        }
    }

    /// Parses the task input (JSON text) into `T`.
    ///
    /// An empty input is read as `null`, so use `Option<T>` when the input is optional.
    ///
    /// # Errors
    ///
    /// [`AgentError::InvalidInput`] naming the expected type and what did not parse, e.g.
    /// ``task input is not a valid `Input`: missing field `dir` at line 1 column 2``.
    pub fn input_json<T: DeserializeOwned>(&self) -> Result<T, AgentError> {
        serde_json::from_str(self.input_text()).map_err(|error| {
            AgentError::InvalidInput(format!(
                "task input is not a valid `{}`: {error}",
                short_type_name::<T>()
            ))
        })
    }

    /// The task input as a JSON value: `null` when there is none. Input that is not JSON at
    /// all (the host normally refuses it before the agent runs) is returned as a JSON string
    /// holding the raw text, so nothing is lost.
    pub fn input_value(&self) -> serde_json::Value {
        serde_json::from_str(self.input_text())
            .unwrap_or_else(|_| serde_json::Value::String(self.input.clone()))
    }
}

/// `T`'s name without module paths, and seen through `Option` (an optional input is still
/// described by its own type): `Option<my_agent::Input>` is `Input`.
pub(crate) fn short_type_name<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let full = full
        .strip_prefix("core::option::Option<")
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(full);
    let mut short = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            short.push_str(segment.rsplit("::").next().unwrap_or_default());
            segment.clear();
            short.push(c);
        }
    }
    short.push_str(segment.rsplit("::").next().unwrap_or_default());
    short
}

impl TaskOutput {
    /// Serializes `value` as the task's JSON output.
    ///
    /// # Errors
    ///
    /// [`AgentError::Failed`] when `value` cannot be serialized (e.g. a map with non-string
    /// keys).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<TaskOutput, AgentError> {
        serde_json::to_string(value)
            .map(|output| TaskOutput { output })
            .map_err(|error| {
                AgentError::Failed(format!("could not serialize the task output: {error}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(input: &str) -> Task {
        Task {
            id: "t-1".into(),
            description: "test".into(),
            input: input.into(),
        }
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Input {
        dir: String,
    }

    #[test]
    fn input_json_parses_and_names_failures() {
        let parsed: Input = task(r#"{"dir":"/w"}"#).input_json().unwrap();
        assert_eq!(parsed, Input { dir: "/w".into() });

        let none: Option<Input> = task("").input_json().unwrap();
        assert_eq!(none, None);

        let error = task("{}").input_json::<Input>().unwrap_err();
        let AgentError::InvalidInput(message) = error else {
            panic!("expected invalid-input, got {error:?}");
        };
        assert!(message.contains("`Input`"), "{message}");
        assert!(message.contains("missing field `dir`"), "{message}");
    }

    #[test]
    fn type_names_are_short() {
        assert_eq!(short_type_name::<Option<Input>>(), "Input");
        assert_eq!(
            short_type_name::<Vec<std::collections::BTreeMap<String, Input>>>(),
            "Vec<BTreeMap<String, Input>>"
        );
        assert_eq!(short_type_name::<u64>(), "u64");
    }

    #[test]
    fn input_value_is_null_when_empty() {
        assert_eq!(task("").input_value(), serde_json::Value::Null);
        assert_eq!(task("null").input_value(), serde_json::Value::Null);
        assert_eq!(task("[1]").input_value(), serde_json::json!([1]));
        assert_eq!(
            task("not json").input_value(),
            serde_json::json!("not json")
        );
    }

    #[test]
    fn output_json_serializes() {
        let output = TaskOutput::json(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(output.output, r#"{"a":1}"#);
    }
}
