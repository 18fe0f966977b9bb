//! Per-agent sandbox state: what an agent may do ([`grants`]), the memory limiter
//! ([`limiter`]), its live counters and measured receipt ([`counters`]), the process-wide
//! descriptor budget ([`descriptors`]), the spec's context quotas ([`quotas`]), what outlives a borrow of its Store ([`state`]: the
//! agent's identity, spec, grants, counters and access gate) and the bounded stdout/stderr
//! capture ([`stdio`]), and the memo of access-gate decisions ([`gate`]). The Store data that holds all of it is `crate::interfaces::AgentState`.

pub mod counters;
pub mod descriptors;
pub mod gate;
pub mod grants;
pub mod limiter;
pub mod quotas;
pub mod state;
pub mod stdio;

pub use counters::{Counters, HostCallRecord, LogRecord, MAX_KEPT_LOG_RECORDS, UsageReceipt};
pub use grants::{Grants, NetworkRule, resolve_grants};
pub use limiter::MemoryLimiter;
pub use state::{AgentShared, LazySemaphore};
pub use stdio::{BoundedCapture, STDIO_CAPTURE_BYTES, Stdio, StdioBuffers};
