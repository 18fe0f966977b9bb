//! `stack-overflow`: recurses without bound, so the host's tests can check that exhausting a
//! stack traps this agent only.
//!
//! Input `{"mode": "wasm-stack"}` (default) recurses with tiny frames that live on the engine's
//! wasm call stack, which the host caps (`max_wasm_stack`): the host reports a stack limit.
//! `{"mode": "wasm-stack", "depth": N}` stops after N frames and returns N.
//! `{"mode": "shadow-stack"}` keeps a 4 KiB array per frame on Rust's shadow stack in linear
//! memory; running off its bottom is an out-of-bounds access, which the host reports as a trap.

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
        let mode = task.input_value()["mode"]
            .as_str()
            .unwrap_or("wasm-stack")
            .to_string();
        let depth = match mode.as_str() {
            // With `"depth": N` it stops after N frames, to show that depth within the limit works.
            "wasm-stack" => match task.input_value()["depth"].as_u64() {
                Some(max) => recurse_bounded(0, max),
                None => recurse_small(0),
            },
            "shadow-stack" => recurse(0),
            other => {
                return Err(AgentError::InvalidInput(format!(
                    "unknown mode `{other}`; use wasm-stack or shadow-stack"
                )));
            }
        };
        // Not reached: the recursion only stops when the stack is exhausted.
        TaskOutput::json(&depth)
    }
}

/// No locals in linear memory: every frame is on the wasm call stack only.
#[inline(never)]
fn recurse_small(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    recurse_small(black_box(depth + 1)).wrapping_add(black_box(depth))
}

/// Like `recurse_small`, stopping at `max` frames.
#[inline(never)]
fn recurse_bounded(depth: u64, max: u64) -> u64 {
    if black_box(depth) >= max {
        return depth;
    }
    recurse_bounded(black_box(depth + 1), max).wrapping_sub(black_box(1)) + 1
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
