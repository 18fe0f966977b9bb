//! `tool-spammer`: calls one tool over and over, so the host's tests can check the tool-call
//! budget: the call past the limit comes back as a `limit-exceeded` error value.
//!
//! Input: `{"count": N, "tool": "clock.now"}` (tool defaults to `clock.now`, called with `{}`;
//! without `count` it calls forever). The first tool error ends the run as `tool-failed` with
//! that error's text (e.g. `limit-exceeded: ...`). Output: `{"calls": N}`.

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log, tools};
use serde::Deserialize;

/// The `tool-spammer` agent.
pub struct ToolSpammer;

#[derive(Deserialize, Default)]
struct Input {
    count: Option<u64>,
    #[serde(default = "default_tool")]
    tool: String,
}

fn default_tool() -> String {
    "clock.now".to_owned()
}

impl Agent for ToolSpammer {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "tool-spammer".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["tool-calls".into()],
            description: "Calls one tool a given number of times, stopping at the first error."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = task
            .input_json::<Option<Input>>()?
            .unwrap_or_else(|| Input {
                count: None,
                tool: default_tool(),
            });
        log::info!(tool = input.tool; "calling repeatedly");
        let mut calls: u64 = 0;
        while input.count.is_none_or(|count| calls < count) {
            if let Err(error) = tools::call_raw(&input.tool, "{}") {
                log::warn!(calls = calls; "{} failed: {error}", input.tool);
                return Err(error.into());
            }
            calls += 1;
        }
        TaskOutput::json(&qi_guest_sdk::serde_json::json!({ "calls": calls }))
    }
}

qi_guest_sdk::export_agent!(ToolSpammer);
