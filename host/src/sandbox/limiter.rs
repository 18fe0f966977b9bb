//! The Store's memory limiter: caps all linear memories of one agent together.

use super::AgentShared;
use crate::error::LimitKind;
use std::sync::Arc;

/// Caps all linear memories of one Store together and records the peak.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit_bytes: usize,
    current_bytes: usize,
    /// Highest total linear memory seen.
    pub peak_bytes: usize,
    shared: Arc<AgentShared>,
}

impl MemoryLimiter {
    /// A limiter capping the agent's linear memories at `limit_bytes` in total.
    pub fn new(limit_bytes: usize, shared: Arc<AgentShared>) -> Self {
        MemoryLimiter {
            limit_bytes,
            current_bytes: 0,
            peak_bytes: 0,
            shared,
        }
    }

    /// Bytes still available below the cap.
    pub fn remaining(&self) -> usize {
        self.limit_bytes.saturating_sub(self.current_bytes)
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.current_bytes - current.min(self.current_bytes) + desired;
        if total > self.limit_bytes {
            self.shared.record_violation(
                LimitKind::Memory,
                self.limit_bytes as u64 >> 20,
                format!(
                    "growing linear memory to {total} bytes refused (cap {} bytes)",
                    self.limit_bytes
                ),
            );
            // `memory.grow` returns -1: a well-written guest can handle it, and the report
            // names the limit either way.
            return Ok(false);
        }
        self.current_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; 100k entries is far beyond any real agent.
        Ok(desired <= 100_000)
    }
}
