//! Small shared types at the bottom of the crate, so that `error` and the layers above can name
//! them without importing each other.

use serde::Serialize;

/// Measured usage of one agent, never estimated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsageReceipt {
    /// Fuel units consumed (instantiation, `describe` and `run`).
    pub fuel_consumed: u64,
    /// Highest total linear memory, in bytes.
    pub peak_memory_bytes: u64,
    /// Wall time from spawn to result, in microseconds.
    pub wall_time_us: u64,
    /// Calls into `qi:agent` interfaces.
    pub host_calls: u64,
    /// Tool calls made (including refused ones).
    pub tool_calls: u64,
    /// WASI filesystem operations plus file tool calls.
    pub file_operations: u64,
    /// Socket uses allowed by the allow-list.
    pub network_allowed: u64,
    /// Socket uses refused.
    pub network_denied: u64,
    /// Name lookups, refused ones included (each also in `network_allowed` or
    /// `network_denied`).
    pub dns_lookups: u64,
    /// Host calls refused by access checks.
    pub access_denied: u64,
    /// Log bytes accepted.
    pub log_bytes: u64,
    /// Log records dropped over budget.
    pub logs_dropped: u64,
    /// Bytes the agent added to its writable mounts: the growth of each file's logical size
    /// (overwriting existing bytes is free; shrinking a file gives nothing back).
    pub disk_bytes_written: u64,
    /// Files, directories and links the agent created on its writable mounts.
    pub files_created: u64,
    /// WASI calls: filesystem and socket calls, clock and random calls, and writes to
    /// stdout/stderr (`wasi:io` streams and polls, `wasi:cli` environment and exit, and resource
    /// drops are not counted). Separate from `host_calls`, which counts `qi:agent` calls only.
    pub wasi_calls: u64,
    /// Bytes of stdout kept (at most 64 KiB).
    pub stdout_bytes: u64,
    /// Bytes of stderr kept (at most 64 KiB).
    pub stderr_bytes: u64,
    /// Bytes of stdout written past the 64 KiB capture and discarded.
    pub stdout_dropped: u64,
    /// Bytes of stderr written past the 64 KiB capture and discarded.
    pub stderr_dropped: u64,
    /// Audit entries the agent's actions caused past `MAX_AUDIT_ENTRIES_PER_AGENT` (10,000,
    /// `crate::sandbox::state`), which were dropped (the decisions were still enforced and
    /// counted).
    pub audit_dropped: u64,
    /// Bytes the agent wrote to the context store and event bus: documents, merge patches,
    /// event data, sync payloads and shared agent ids, plus an overhead per stored row (at most
    /// `MAX_STORED_BYTES_PER_AGENT`, `crate::interfaces::limits`).
    pub stored_bytes: u64,
}

/// `chars` lowercase hex digits from the operating system's random source, for ids that must
/// not repeat across processes sharing a data directory (agent id prefixes, run ids).
pub(crate) fn random_hex(chars: usize) -> String {
    let mut bytes = vec![0u8; chars.div_ceil(2)];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let mut s = hex::encode(bytes);
    s.truncate(chars);
    s
}
