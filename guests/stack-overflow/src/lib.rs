//! `stack-overflow`: recurses without bound, so the host's tests can check that exhausting the
//! wasm stack traps this agent only.

use std::hint::black_box;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};

/// The `stack-overflow` agent.
pub struct StackOverflow;

impl Agent for StackOverflow {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "stack-overflow".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["stack-burn".into()],
            description: "Recurses without bound until the stack runs out.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        log::info!(task_id = task.id; "recursing without bound");
        let depth = recurse(0);
        // Not reached: the recursion only stops when the stack is exhausted.
        TaskOutput::json(&depth)
    }
}

/// Keeps a 4 KiB array alive across the recursive call (which is not a tail call), so every
/// frame costs real stack and the recursion cannot become a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 512]);
    // Never true; the condition only keeps the recursion from being unconditional.
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = recurse(black_box(depth + 1));
    black_box(frame[(below % 512) as usize]).wrapping_add(below)
}

qi_guest_sdk::export_agent!(StackOverflow);
