//! `huge-output`: returns a very large output, so the host's tests can check the output size
//! limit.
//!
//! Input: `{"bytes": N}` (default 16777216). Output: a JSON string of exactly N `x` characters,
//! i.e. N + 2 bytes of JSON text.

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::Deserialize;

/// The `huge-output` agent.
pub struct HugeOutput;

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_bytes")]
    bytes: usize,
}

fn default_bytes() -> usize {
    16 * 1024 * 1024
}

impl Agent for HugeOutput {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "huge-output".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["output-burn".into()],
            description: "Returns a JSON string of as many bytes as it is asked for.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let bytes = task
            .input_json::<Option<Input>>()?
            .map_or_else(default_bytes, |input| input.bytes);
        log::info!(bytes = bytes; "producing a large output");
        let mut output = String::with_capacity(bytes.saturating_add(2));
        output.push('"');
        output.extend(std::iter::repeat_n('x', bytes));
        output.push('"');
        Ok(TaskOutput { output })
    }
}

qi_guest_sdk::export_agent!(HugeOutput);
