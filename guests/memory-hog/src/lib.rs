//! `memory-hog`: grows its linear memory, so the host's tests can check the memory limit.
//!
//! Input `{"target_mb": N}`: grows memory one 64 KiB page at a time (`memory.grow`) until it is
//! at least N MiB; a refused grow is reported as `failed: memory.grow refused at <bytes> bytes`.
//! Output: `{"memory_bytes": <final size>}`.
//!
//! Without input: allocates 1 MiB chunks forever, touching every page and keeping them all
//! alive, so only the host's memory limit (a trap) ends it.

use std::hint::black_box;

use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, log};
use serde::Deserialize;

/// The `memory-hog` agent.
pub struct MemoryHog;

#[derive(Deserialize)]
struct Input {
    target_mb: u64,
}

/// Size of a WebAssembly page.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const PAGE_BYTES: u64 = 64 * 1024;

const CHUNK_BYTES: usize = 1024 * 1024;

impl Agent for MemoryHog {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "memory-hog".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["memory-burn".into()],
            description: "Grows its memory to a target size, or without bound.".into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        match task.input_json::<Option<Input>>()? {
            Some(Input { target_mb }) => {
                log::info!(target_mb = target_mb; "growing linear memory");
                let memory_bytes = grow_to(target_mb.saturating_mul(1024 * 1024))?;
                TaskOutput::json(&qi_guest_sdk::serde_json::json!({ "memory_bytes": memory_bytes }))
            }
            None => {
                log::info!("allocating without bound");
                allocate_forever()
            }
        }
    }
}

/// Grows memory 0 a page at a time until it holds at least `target_bytes`; returns its size.
#[cfg(target_arch = "wasm32")]
fn grow_to(target_bytes: u64) -> Result<u64, AgentError> {
    use core::arch::wasm32::{memory_grow, memory_size};

    let size = || memory_size(0) as u64 * PAGE_BYTES;
    while size() < target_bytes {
        if memory_grow(0, 1) == usize::MAX {
            return Err(AgentError::Failed(format!(
                "memory.grow refused at {} bytes",
                size()
            )));
        }
    }
    Ok(size())
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_to(_target_bytes: u64) -> Result<u64, AgentError> {
    Err(AgentError::Failed(
        "memory-hog grows WebAssembly linear memory; build it for wasm32-wasip2".into(),
    ))
}

fn allocate_forever() -> ! {
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0_u8; CHUNK_BYTES];
        // Write every 4 KiB so the memory is really used, not just reserved.
        for offset in (0..CHUNK_BYTES).step_by(4096) {
            chunk[offset] = black_box(1);
        }
        chunks.push(black_box(chunk));
        black_box(&chunks);
    }
}

qi_guest_sdk::export_agent!(MemoryHog);
