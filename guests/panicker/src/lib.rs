//! `panicker`: panics, so the host's tests can check that a guest panic (a trap) ends this agent
//! only and is reported as a guest bug.

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};

/// The `panicker` agent.
pub struct Panicker;

impl Agent for Panicker {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "panicker".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["crash".into()],
            description: "Panics as soon as it runs.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        log::info!(task_id = task.id; "about to panic");
        panic!("deliberate panic from panicker");
    }
}

qi_guest_sdk::export_agent!(Panicker);
