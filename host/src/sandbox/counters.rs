//! Live per-agent counters and the usage receipt built from them.

pub use crate::model::UsageReceipt;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Log records kept in memory per agent for the report (all are sent to tracing).
pub const MAX_KEPT_LOG_RECORDS: usize = 1_000;

/// Live counters of one agent, shared between its Store and whoever watches it.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls into `qi:agent` interfaces.
    pub host_calls: AtomicU64,
    /// Tool calls attempted (counted whether they succeed or not).
    pub tool_calls: AtomicU64,
    /// WASI filesystem operations and file tool calls.
    pub file_operations: AtomicU64,
    /// Socket uses the allow-list permitted.
    pub network_allowed: AtomicU64,
    /// Socket uses the allow-list refused.
    pub network_denied: AtomicU64,
    /// Units of `maxNetworkOperations` taken (every decided network use).
    pub network_operations: AtomicU64,
    /// `wasi:sockets/ip-name-lookup` calls, refused ones included (each is also counted in
    /// `network_allowed` or `network_denied`).
    pub dns_lookups: AtomicU64,
    /// Log bytes accepted.
    pub log_bytes: AtomicU64,
    /// Log records dropped because the log budget was spent.
    pub logs_dropped: AtomicU64,
    /// Requests refused by access checks (tools not allowed or prohibited, links out of a
    /// mount or across mounts).
    pub access_denied: AtomicU64,
    /// Bytes the agent added to its writable mounts (logical size growth, see
    /// `resourceLimits.maxDiskBytes`).
    pub disk_bytes: AtomicU64,
    /// Files, directories and links the agent created on its writable mounts.
    pub files_created: AtomicU64,
    /// WASI calls counted so far: filesystem and socket calls (bumped by the counting WASI
    /// layers), clock and random calls, and writes to stdout/stderr. `wasi:io` stream and poll
    /// calls, `wasi:cli` environment and exit, and resource drops are not counted.
    pub wasi_calls: AtomicU64,
    /// Bytes of stdout discarded past the 64 KiB capture.
    pub stdout_dropped: AtomicU64,
    /// Bytes of stderr discarded past the 64 KiB capture.
    pub stderr_dropped: AtomicU64,
    /// Audit entries the agent's actions caused (see
    /// [`MAX_AUDIT_ENTRIES_PER_AGENT`](super::state::MAX_AUDIT_ENTRIES_PER_AGENT)),
    /// written or not.
    pub audit_entries: AtomicU64,
    /// Bytes written to the context store and event bus (see
    /// [`MAX_STORED_BYTES_PER_AGENT`](crate::interfaces::limits::MAX_STORED_BYTES_PER_AGENT)).
    pub stored_bytes: AtomicU64,
    /// Context writes attempted (see `resourceLimits.maxContextWrites`).
    pub context_writes: AtomicU64,
    /// Bytes of context writes attempted (see `resourceLimits.maxContextBytes`).
    pub context_bytes: AtomicU64,
    /// `context.get` calls answered from the agent's context cache.
    pub context_cache_hits: AtomicU64,
    /// `context.get` calls that read the context store (cache miss, stale or bypassed).
    pub context_cache_misses: AtomicU64,
    /// Contexts `context.prefetch` read into the agent's cache.
    pub context_cache_prefetched: AtomicU64,
    /// Channel messages sent (and stored).
    pub channel_sent: AtomicU64,
    /// Channel messages received.
    pub channel_received: AtomicU64,
    /// Model calls answered or refused after the call budget was taken (see
    /// `resourceLimits.maxLlmCalls`).
    pub llm_calls: AtomicU64,
    /// Of those, answers replayed from a recording.
    pub llm_replayed: AtomicU64,
    /// Input tokens the providers reported (replayed answers included).
    pub input_tokens: AtomicU64,
    /// Output tokens the providers reported (replayed answers included).
    pub output_tokens: AtomicU64,
    /// What live answers cost, in micro-dollars, from the configured prices.
    pub cost_micro_usd: AtomicU64,
}

/// A host call recorded at `monitored` isolation.
#[derive(Debug, Clone, Serialize)]
pub struct HostCallRecord {
    /// Interface and function, e.g. `tools.call`.
    pub call: String,
    /// Target (tool name, path) where there is one.
    pub target: String,
    /// Bytes of arguments passed by the guest.
    pub arg_bytes: u64,
    /// Microseconds the host spent on it.
    pub duration_us: u64,
    /// `ok`, or the error kind.
    pub outcome: String,
}

/// One log record emitted by the agent.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    /// Level name.
    pub level: String,
    /// Message (truncated to the per-record limit).
    pub message: String,
    /// Structured fields.
    pub fields: Vec<(String, String)>,
}

impl UsageReceipt {
    pub(crate) fn from_counters(c: &Counters) -> Self {
        UsageReceipt {
            host_calls: c.host_calls.load(Ordering::Relaxed),
            tool_calls: c.tool_calls.load(Ordering::Relaxed),
            file_operations: c.file_operations.load(Ordering::Relaxed),
            network_allowed: c.network_allowed.load(Ordering::Relaxed),
            network_denied: c.network_denied.load(Ordering::Relaxed),
            dns_lookups: c.dns_lookups.load(Ordering::Relaxed),
            access_denied: c.access_denied.load(Ordering::Relaxed),
            log_bytes: c.log_bytes.load(Ordering::Relaxed),
            logs_dropped: c.logs_dropped.load(Ordering::Relaxed),
            disk_bytes_written: c.disk_bytes.load(Ordering::Relaxed),
            files_created: c.files_created.load(Ordering::Relaxed),
            wasi_calls: c.wasi_calls.load(Ordering::Relaxed),
            stdout_dropped: c.stdout_dropped.load(Ordering::Relaxed),
            stderr_dropped: c.stderr_dropped.load(Ordering::Relaxed),
            audit_dropped: c
                .audit_entries
                .load(Ordering::Relaxed)
                .saturating_sub(super::state::MAX_AUDIT_ENTRIES_PER_AGENT),
            stored_bytes: c.stored_bytes.load(Ordering::Relaxed),
            context_writes: c.context_writes.load(Ordering::Relaxed),
            context_bytes: c.context_bytes.load(Ordering::Relaxed),
            context_cache_hits: c.context_cache_hits.load(Ordering::Relaxed),
            context_cache_misses: c.context_cache_misses.load(Ordering::Relaxed),
            context_cache_prefetched: c.context_cache_prefetched.load(Ordering::Relaxed),
            channel_messages_sent: c.channel_sent.load(Ordering::Relaxed),
            channel_messages_received: c.channel_received.load(Ordering::Relaxed),
            llm_calls: c.llm_calls.load(Ordering::Relaxed),
            llm_replayed: c.llm_replayed.load(Ordering::Relaxed),
            input_tokens: c.input_tokens.load(Ordering::Relaxed),
            output_tokens: c.output_tokens.load(Ordering::Relaxed),
            cost: c.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1_000_000.0,
            ..Default::default()
        }
    }
}
