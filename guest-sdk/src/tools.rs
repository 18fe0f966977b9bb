//! Calls to host tools (WIT interface `tools`): built-in ones (`fs.read`, `fs.write`, `fs.list`,
//! `clock.now`) and any the embedding application registers.
//!
//! Every call is checked by the host against the agent's grants and counted against its budget;
//! a refusal comes back as a [`ToolError`], never as a trap.
//!
//! ```
//! use qi_guest_sdk::{serde_json::{json, Value}, tools, AgentError};
//!
//! # fn demo() -> Result<(), AgentError> {
//! let now: Value = tools::call("clock.now", &json!({}))?;
//! for result in tools::call_many(&[("fs.read", r#"{"path":"a.txt"}"#), ("clock.now", "{}")]) {
//!     match result {
//!         Ok(output_json) => { /* ... */ }
//!         Err(error) => qi_guest_sdk::log::warn!("tool failed: {error}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::ToolError;
use crate::wit::qi::agent::tools as raw;

/// Calls the tool `name` with `input_json` (JSON text) and returns its output as JSON text.
///
/// # Errors
///
/// The host's [`ToolError`]: refused (`access-denied`, `limit-exceeded`), unknown
/// (`not-found`), bad input (`invalid-input`) or failed while running (`failed`).
pub fn call_raw(name: &str, input_json: &str) -> Result<String, ToolError> {
    raw::call(name, input_json)
}

/// Calls the tool `name` with `input` serialized as JSON and parses its output as `O`.
///
/// # Errors
///
/// Everything [`call_raw`] returns, plus [`ToolError::InvalidInput`] when `input` cannot be
/// serialized (the tool is not called) and [`ToolError::Failed`] when the output is not a
/// valid `O`.
pub fn call<I, O>(name: &str, input: &I) -> Result<O, ToolError>
where
    I: Serialize + ?Sized,
    O: DeserializeOwned,
{
    let input_json = serde_json::to_string(input).map_err(|error| {
        ToolError::InvalidInput(format!(
            "could not serialize the input for `{name}`: {error}"
        ))
    })?;
    let output_json = call_raw(name, &input_json)?;
    serde_json::from_str(&output_json).map_err(|error| {
        ToolError::Failed(format!(
            "the output of `{name}` is not a valid `{}`: {error}",
            crate::task::short_type_name::<O>()
        ))
    })
}

/// Runs several calls concurrently on the host; `requests` are `(name, input_json)` pairs and
/// the results come back in the same order.
///
/// Each call counts against the tool-call budget. A batch larger than the agent's
/// `maxConcurrentOperations` is refused whole with `limit-exceeded` before any call runs.
pub fn call_many(requests: &[(&str, &str)]) -> Vec<Result<String, ToolError>> {
    let requests: Vec<raw::ToolRequest> = requests
        .iter()
        .map(|(name, input)| raw::ToolRequest {
            name: (*name).to_owned(),
            input: (*input).to_owned(),
        })
        .collect();
    raw::call_many(&requests)
}

/// Names of the tools this agent may call, sorted.
pub fn available() -> Vec<String> {
    raw::available()
}
