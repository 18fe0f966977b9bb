//! Helpers for reading a [`Task`]'s JSON input and producing a JSON [`TaskOutput`], and
//! [`SubtaskInput`], the input of a subtask of a coordinated run.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

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

/// The input a coordinated run (`qi-host run <manifest>`) hands every subtask, parsed from
/// [`Task::input`]:
///
/// ```json
/// {"subtask": "<subtask id>", "attempt": 1, "inputs": {"<name>": <value>}, "config": {...}}
/// ```
///
/// - `subtask`: the subtask's id in the manifest (also its participant id at sync points);
/// - `attempt`: 1 for the first run of the subtask, 2 for its first retry, ...;
/// - `inputs`: the subtask's named inputs (literal values from the manifest, or outputs of
///   the subtasks it depends on);
/// - `config`: the `config` object of the manifest's entry for the agent running it, or
///   `null`.
///
/// ```
/// use qi_guest_sdk::{AgentError, SubtaskInput, Task};
///
/// # fn demo(task: Task) -> Result<(), AgentError> {
/// let input = SubtaskInput::from_task(&task)?;
/// let files = input.require("files")?; // invalid-input naming `files` when missing
/// let focus = input.config["focus"].as_str().unwrap_or("todos");
/// qi_guest_sdk::log::info!("{} (attempt {}): {files} by {focus}", input.subtask, input.attempt);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubtaskInput {
    /// The subtask's id in the manifest.
    pub subtask: String,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// The subtask's named inputs (empty when the host sent none).
    pub inputs: Map<String, Value>,
    /// The agent's `config` from its manifest entry; `null` when it has none.
    pub config: Value,
}

impl SubtaskInput {
    /// Parses the task input of a subtask. Fields other than the four above are ignored;
    /// missing (or `null`) `inputs` is read as no inputs, missing `config` as `null`.
    ///
    /// # Errors
    ///
    /// [`AgentError::InvalidInput`] naming what is wrong: an input that is not a JSON object,
    /// a missing or empty `subtask`, an `attempt` that is not an integer from 1 to 2^32 - 1,
    /// or `inputs` that is not an object.
    pub fn from_task(task: &Task) -> Result<SubtaskInput, AgentError> {
        let invalid = |what: String| {
            AgentError::InvalidInput(format!("not the input of a coordinated subtask: {what}"))
        };
        let mut input = match task.input_value() {
            Value::Object(fields) => fields,
            other => {
                return Err(invalid(format!(
                    "expected a JSON object with `subtask`, `attempt`, `inputs` and `config`, \
                     got {}",
                    json_kind(&other)
                )));
            }
        };
        let subtask = match input.remove("subtask") {
            Some(Value::String(id)) if !id.is_empty() => id,
            None | Some(Value::Null) => return Err(invalid("missing `subtask`".into())),
            Some(other) => {
                return Err(invalid(format!(
                    "`subtask` must be a non-empty string, got {other}"
                )));
            }
        };
        let attempt = match input.remove("attempt") {
            None | Some(Value::Null) => return Err(invalid("missing `attempt`".into())),
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    invalid(format!(
                        "`attempt` must be an integer from 1 to {}, got {value}",
                        u32::MAX
                    ))
                })?,
        };
        let inputs = match input.remove("inputs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(inputs)) => inputs,
            Some(other) => {
                return Err(invalid(format!(
                    "`inputs` must be an object, got {}",
                    json_kind(&other)
                )));
            }
        };
        let config = input.remove("config").unwrap_or(Value::Null);
        Ok(SubtaskInput {
            subtask,
            attempt,
            inputs,
            config,
        })
    }

    /// The input `name`, if the host sent it (an explicit `null` counts as sent).
    pub fn input(&self, name: &str) -> Option<&Value> {
        self.inputs.get(name)
    }

    /// The input `name`, which the agent cannot do without.
    ///
    /// # Errors
    ///
    /// [`AgentError::InvalidInput`] naming the input and the subtask when it is missing or
    /// `null`.
    pub fn require(&self, name: &str) -> Result<&Value, AgentError> {
        match self.inputs.get(name) {
            Some(value) if !value.is_null() => Ok(value),
            _ => Err(AgentError::InvalidInput(format!(
                "subtask `{}` needs the input `{name}`, which is missing",
                self.subtask
            ))),
        }
    }
}

/// What kind of JSON value this is, for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

    #[test]
    fn subtask_input_parses() {
        let input = SubtaskInput::from_task(&task(
            r#"{"subtask":"scan-a","attempt":2,"inputs":{"files":["a.rs"],"n":null},"config":{"focus":"size"},"extra":1}"#,
        ))
        .unwrap();
        assert_eq!(input.subtask, "scan-a");
        assert_eq!(input.attempt, 2);
        assert_eq!(input.config, serde_json::json!({"focus": "size"}));
        assert_eq!(input.input("files"), Some(&serde_json::json!(["a.rs"])));
        assert_eq!(input.input("n"), Some(&Value::Null));
        assert_eq!(input.input("other"), None);
        assert!(input.require("files").is_ok());
        let error = input.require("n").unwrap_err();
        assert_eq!(error.kind(), "invalid-input");
        assert!(error.message().contains("`n`"), "{error}");
        assert!(error.message().contains("scan-a"), "{error}");

        let bare = SubtaskInput::from_task(&task(r#"{"subtask":"s","attempt":1}"#)).unwrap();
        assert!(bare.inputs.is_empty());
        assert_eq!(bare.config, Value::Null);
    }

    #[test]
    fn subtask_input_names_what_is_wrong() {
        let message = |input: &str| {
            let error = SubtaskInput::from_task(&task(input)).unwrap_err();
            assert_eq!(error.kind(), "invalid-input", "{error}");
            error.message().to_owned()
        };
        assert!(message("").contains("got null"));
        assert!(message("[1]").contains("got an array"));
        assert!(message(r#"{"attempt":1}"#).contains("missing `subtask`"));
        assert!(message(r#"{"subtask":"","attempt":1}"#).contains("`subtask`"));
        assert!(message(r#"{"subtask":"s"}"#).contains("missing `attempt`"));
        assert!(message(r#"{"subtask":"s","attempt":0}"#).contains("`attempt`"));
        assert!(message(r#"{"subtask":"s","attempt":1.5}"#).contains("`attempt`"));
        assert!(message(r#"{"subtask":"s","attempt":1,"inputs":[]}"#).contains("`inputs`"));
    }
}
