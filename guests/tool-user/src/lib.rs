//! `tool-user`: calls host tools and reports every result, so the host's tests can check tool
//! grants, refusals, `call-many` batches and the tool-call budget from inside a guest.
//!
//! Input: `{"calls": [{"tool": "...", "input": <json>}], "batch": false}`; without input it calls
//! `clock.now` once. Before each call it checks `budget.remaining().tool-calls` and stops early
//! (`"stopped": "budget"`) when none are left. With `"batch": true` all calls go out in one
//! `call-many`. A tool error is reported, never returned as the agent's error.
//!
//! Output: `{"results": [{"tool", "ok": <output>} | {"tool", "error": {"kind", "message"}}],
//! "stopped": null | "budget", "remaining": {fuel, time_ms, tool_calls, file_operations,
//! memory_bytes}}`.

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{
    Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, ToolError, budget, log, tools,
};
use serde::Deserialize;

/// The `tool-user` agent.
pub struct ToolUser;

#[derive(Deserialize)]
struct Input {
    calls: Vec<Call>,
    #[serde(default)]
    batch: bool,
}

#[derive(Deserialize)]
struct Call {
    tool: String,
    /// Tool input; `{}` when absent.
    #[serde(default = "empty_object")]
    input: Value,
}

fn empty_object() -> Value {
    json!({})
}

impl Agent for ToolUser {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "tool-user".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["tool-calls".into()],
            description: "Calls the host tools it is given and reports each result.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = task
            .input_json::<Option<Input>>()?
            .unwrap_or_else(|| Input {
                calls: vec![Call {
                    tool: "clock.now".into(),
                    input: empty_object(),
                }],
                batch: false,
            });
        let requests: Vec<(String, String)> = input
            .calls
            .into_iter()
            .map(|call| (call.tool, call.input.to_string()))
            .collect();

        let mut results = Vec::with_capacity(requests.len());
        let mut stopped = None;
        if input.batch {
            if budget::remaining().tool_calls == 0 {
                stopped = Some("budget");
            } else {
                let borrowed: Vec<(&str, &str)> = requests
                    .iter()
                    .map(|(tool, input)| (tool.as_str(), input.as_str()))
                    .collect();
                for ((tool, _), result) in requests.iter().zip(tools::call_many(&borrowed)) {
                    results.push(report(tool, result));
                }
            }
        } else {
            for (tool, input) in &requests {
                if budget::remaining().tool_calls == 0 {
                    stopped = Some("budget");
                    break;
                }
                results.push(report(tool, tools::call_raw(tool, input)));
            }
        }
        if let Some(reason) = stopped {
            log::warn!(done = results.len(), planned = requests.len(); "stopped early: {reason}");
        }

        TaskOutput::json(&json!({
            "results": results,
            "stopped": stopped,
            "remaining": budget::remaining(),
        }))
    }
}

fn report(tool: &str, result: Result<String, ToolError>) -> Value {
    match result {
        // A tool's output is JSON text; anything else is kept as a string rather than dropped.
        Ok(output) => json!({
            "tool": tool,
            "ok": qi_guest_sdk::serde_json::from_str::<Value>(&output)
                .unwrap_or(Value::String(output)),
        }),
        Err(error) => json!({
            "tool": tool,
            "error": {"kind": error.kind(), "message": error.message()},
        }),
    }
}

qi_guest_sdk::export_agent!(ToolUser);
