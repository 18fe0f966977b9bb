//! `compute`: deterministic CPU- and memory-bound work, so the host's benchmarks can measure
//! what fuel metering costs on guest code, and its tests can check the result is exact.
//!
//! Input `{"kind": "cpu", "iterations": N}`: N rounds of a xorshift64 generator whose every
//! state is folded into an FNV-1a hash.
//!
//! Input `{"kind": "memory", "iterations": N, "bytes": B}` (`B` defaults to 1 MiB): allocates B
//! bytes once (byte `i` starts as `i as u8`), then makes N passes over them; each pass walks the
//! buffer with a stride of [`STRIDE`] bytes (starting at offsets `0..STRIDE`), so every byte is
//! read, mixed and written once per pass: `b = b * 31 + (pass as u8 ^ 0x5a ^ i as u8)`
//! (wrapping). The checksum is FNV-1a over the final bytes.
//!
//! Output: `{"kind", "iterations", "bytes" (memory only), "checksum": "<u64 in decimal>"}`.
//! The checksum is a string because JSON numbers lose precision above 2^53.

use std::hint::black_box;

use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput};

/// The `compute` agent.
pub struct Compute;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Seed of the xorshift64 generator of the `cpu` kind.
pub const XORSHIFT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Distance between consecutive writes of one `memory` pass, in bytes.
pub const STRIDE: usize = 257;
/// Default buffer size of the `memory` kind: 1 MiB.
pub const DEFAULT_BYTES: u64 = 1 << 20;
/// Largest buffer the `memory` kind accepts: 1 GiB (the host's memory limit usually bites first).
pub const MAX_BYTES: u64 = 1 << 30;

impl Agent for Compute {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "compute".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["compute".into()],
            description: "Runs a deterministic CPU- or memory-bound loop and returns its checksum."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = task.input_value();
        let iterations = input
            .get("iterations")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("expected a non-negative integer `iterations`"))?;
        match input.get("kind").and_then(Value::as_str) {
            Some("cpu") => TaskOutput::json(&json!({
                "kind": "cpu",
                "iterations": iterations,
                "checksum": cpu(iterations).to_string(),
            })),
            Some("memory") => {
                let bytes = match input.get("bytes") {
                    None | Some(Value::Null) => DEFAULT_BYTES,
                    Some(b) => b
                        .as_u64()
                        .filter(|b| *b <= MAX_BYTES)
                        .ok_or_else(|| invalid("`bytes` must be an integer from 0 to 2^30"))?,
                };
                TaskOutput::json(&json!({
                    "kind": "memory",
                    "iterations": iterations,
                    "bytes": bytes,
                    "checksum": memory(iterations, bytes as usize).to_string(),
                }))
            }
            _ => Err(invalid("expected `kind` to be \"cpu\" or \"memory\"")),
        }
    }
}

fn invalid(message: &str) -> AgentError {
    AgentError::InvalidInput(message.into())
}

/// The `cpu` kind: xorshift64 states folded into FNV-1a.
fn cpu(iterations: u64) -> u64 {
    let mut x = black_box(XORSHIFT_SEED);
    let mut h = FNV_OFFSET;
    for _ in 0..black_box(iterations) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        h = (h ^ x).wrapping_mul(FNV_PRIME);
    }
    black_box(h)
}

/// The `memory` kind: strided read-modify-write passes over one buffer, then FNV-1a over it.
fn memory(iterations: u64, bytes: usize) -> u64 {
    let mut buf: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let buf = black_box(buf.as_mut_slice());
    let len = buf.len();
    for pass in 0..black_box(iterations) {
        let salt = (pass as u8) ^ 0x5a;
        for start in 0..STRIDE.min(len) {
            let mut i = start;
            while i < len {
                buf[i] = buf[i].wrapping_mul(31).wrapping_add(salt ^ i as u8);
                i += STRIDE;
            }
        }
        black_box(&mut *buf);
    }
    let h = buf.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    });
    black_box(h)
}

qi_guest_sdk::export_agent!(Compute);
