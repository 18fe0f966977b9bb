//! `net.*` attacks.

use qi_guest_sdk::serde_json::Value;
use qi_guest_sdk::{AgentError, TaskOutput};

/// Runs attack `net.<attack>`.
pub fn run(attack: &str, _input: &Value) -> Result<TaskOutput, AgentError> {
    Err(crate::unknown(&format!("net.{attack}")))
}
