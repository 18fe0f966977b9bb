//! `sleeper`: blocks in `std::thread::sleep` (a WASI `monotonic-clock` wait), so the host's tests
//! can check that the wall-clock deadline also stops an agent that is blocked in the host
//! rather than computing.
//!
//! Input: `{"ms": N, "signal": optional key}`. With `signal` it first calls the host tool
//! `test.signal` with `{"key": <key>}`, so a test knows it is about to sleep. Output:
//! `{"slept_ms": N}`.

use std::time::Duration;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::{Deserialize, Serialize};

/// The `sleeper` agent.
pub struct Sleeper;

#[derive(Deserialize, Serialize)]
struct Sleep {
    ms: u64,
    #[serde(default)]
    signal: Option<String>,
}

impl Agent for Sleeper {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "sleeper".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["sleep".into()],
            description: "Sleeps for the number of milliseconds it is given.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let Some(Sleep { ms, signal }) = task.input_json::<Option<Sleep>>()? else {
            return Err(AgentError::InvalidInput(
                r#"expected input {"ms": <milliseconds>}"#.into(),
            ));
        };
        if let Some(key) = signal {
            let input = qi_guest_sdk::serde_json::json!({ "key": key }).to_string();
            qi_guest_sdk::tools::call_raw("test.signal", &input)
                .map_err(|e| AgentError::Failed(format!("test.signal: {e}")))?;
        }
        log::debug!(ms = ms; "sleeping");
        std::thread::sleep(Duration::from_millis(ms));
        TaskOutput::json(&qi_guest_sdk::serde_json::json!({ "slept_ms": ms }))
    }
}

qi_guest_sdk::export_agent!(Sleeper);
