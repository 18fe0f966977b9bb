//! `spin-forever`: computes forever without calling the host, so the host's tests can check that
//! fuel and the epoch deadline stop a busy agent while every other agent keeps running.
//!
//! Input: none, or `{"signal": "<key>"}`: then it first calls the host tool `test.signal` with
//! `{"key": <key>}`, so a test knows it is spinning from then on.

use std::hint::black_box;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};

/// The `spin-forever` agent.
pub struct SpinForever;

impl Agent for SpinForever {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "spin-forever".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["cpu-burn".into()],
            description: "Does arithmetic in an endless loop and never returns.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        log::info!(task_id = task.id; "spinning forever");
        if let Some(key) = task.input_value()["signal"].as_str() {
            let input = qi_guest_sdk::serde_json::json!({ "key": key }).to_string();
            qi_guest_sdk::tools::call_raw("test.signal", &input)
                .map_err(|e| AgentError::Failed(format!("test.signal: {e}")))?;
        }
        // `black_box` on every step keeps the optimizer from proving the loop useless.
        let mut state = black_box(task.id.len() as u64 | 1);
        loop {
            state = black_box(
                state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
    }
}

qi_guest_sdk::export_agent!(SpinForever);
