//! Per-agent sandbox state: what an agent may do ([`grants`]), the memory limiter
//! ([`limiter`]), its live counters and measured receipt ([`counters`]), the process-wide
//! descriptor budget ([`descriptors`]), the data of its Store ([`state`]: WASI context with
//! the granted preopens and network check), the bounded stdout/stderr capture ([`stdio`])
//! and the counted WASI clocks and random ([`wasi_calls`]).

pub mod counters;
pub mod descriptors;
pub mod grants;
pub mod limiter;
pub mod state;
pub mod stdio;
pub mod wasi_calls;

pub use counters::{Counters, HostCallRecord, LogRecord, MAX_KEPT_LOG_RECORDS, UsageReceipt};
pub use grants::{Grants, NetworkRule, resolve_grants};
pub use limiter::MemoryLimiter;
pub use state::{AgentShared, AgentState};
pub use stdio::{BoundedCapture, STDIO_CAPTURE_BYTES, Stdio};
