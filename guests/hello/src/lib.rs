//! `hello`: echoes its task back, so the host's tests can check that a task and its input reach
//! an agent and its output comes back intact.
//!
//! Output: `{"echo": <task description>, "input": <parsed input or null>, "agent": "hello",
//! "env_vars": <count>, "args": <count>}`; the counts show what the host leaks into the sandbox
//! (it must be zero for both).

use qi_guest_sdk::serde_json::json;
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};

/// The `hello` agent.
pub struct Hello;

impl Agent for Hello {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "hello".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["echo".into()],
            description: "Echoes its task description and input back as JSON.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        log::info!(task_id = task.id; "hello received a task");
        TaskOutput::json(&json!({
            "echo": task.description,
            "input": task.input_value(),
            "agent": "hello",
            "env_vars": std::env::vars().count(),
            "args": std::env::args().count(),
        }))
    }
}

qi_guest_sdk::export_agent!(Hello);
