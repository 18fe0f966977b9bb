//! `SubAgentSpecification` as in the seeds, plus the fuel budget, directory grants and output
//! limit qi-host adds, and its validation.
//!
//! Validation names the offending field in the spec's own (camelCase) spelling and says what is
//! allowed. A spec that asks for more than its isolation level permits is rejected before
//! anything is instantiated.
//!
//! Modules: [`network`] (the `allowedNetworkHosts` patterns), [`ceilings`] (the per-isolation
//! ceiling of every budget a spec can set), [`validate`] (the checks).

mod ceilings;
mod network;
mod validate;

pub use ceilings::{IsolationCeilings, MAX_FUEL_YIELD_INTERVAL};
pub use network::{HostPattern, NetworkPattern, PortPattern};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
/// How strictly an agent is isolated (see DESIGN.md, "Isolation levels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationLevel {
    /// No filesystem, no network; only the tools in `allowedTools`.
    #[default]
    Sandbox,
    /// Preopened directories (read-only or restricted), network allow-list only.
    Restricted,
    /// Whatever is granted, with every host call recorded in the usage receipt.
    Monitored,
}

impl IsolationLevel {
    /// All levels, for error messages.
    pub const ALL: &'static str = "sandbox, restricted, monitored";

    /// The level's name as written in specs.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationLevel::Sandbox => "sandbox",
            IsolationLevel::Restricted => "restricted",
            IsolationLevel::Monitored => "monitored",
        }
    }
}

impl std::str::FromStr for IsolationLevel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sandbox" => Ok(IsolationLevel::Sandbox),
            "restricted" => Ok(IsolationLevel::Restricted),
            "monitored" => Ok(IsolationLevel::Monitored),
            other => Err(Error::field(
                "isolationLevel",
                format!(
                    "`{other}` is not an isolation level; use one of {}",
                    Self::ALL
                ),
            )),
        }
    }
}

/// The kind of agent the spec asks for (matched against what the component declares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AgentType {
    /// Plain worker.
    #[default]
    Basic,
    /// May vote at decision points.
    DecisionCapable,
    /// Narrow specialist.
    Specialized,
}

/// Filesystem access mode applied to the granted directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FileSystemAccess {
    /// Every granted directory is read-only, whatever the grant says.
    #[default]
    ReadOnly,
    /// Grants are read-only unless a grant explicitly asks for `rw`.
    Restricted,
    /// Grants are read-write unless a grant explicitly asks for `ro`. Monitored level only.
    Full,
}

/// Network access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkAccessLevel {
    /// No sockets at all.
    #[default]
    None,
    /// Only the addresses matched by `allowedNetworkHosts`.
    Restricted,
    /// Any address. Monitored level only.
    Full,
}

/// The seeds' `ResourceLimits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceLimits {
    /// Cap on the agent's linear memory, all memories together, in MiB (1 MiB = 1,048,576 bytes).
    #[serde(rename = "maxMemoryMB")]
    pub max_memory_mb: u32,
    /// Wall-clock budget from spawn to result, including time blocked in host calls.
    pub max_execution_time_ms: u64,
    /// How many host operations may be in flight at once (see `tools.call-many`).
    pub max_concurrent_operations: u32,
    /// How many tool calls the agent may make.
    pub max_tool_calls: u32,
    /// `HOST:PORT` patterns the agent may connect to. Deny by default.
    pub allowed_network_hosts: Vec<String>,
    /// How many filesystem operations (WASI filesystem calls and file tools) the agent may make.
    pub max_file_operations: u32,
    /// How many WASI resources (file descriptors, directory streams, sockets, input/output
    /// streams, pollables) the agent may hold at once. Past it, opening another fails with an
    /// error the agent can handle; the host's own descriptors are never exhausted by a guest.
    pub max_open_handles: u32,
    /// Bytes the agent may add to its writable mounts, counting each file's logical size
    /// (a write at an offset or a `set-size` counts up to the new end). Past it, a write fails
    /// with `insufficient-space` (ENOSPC).
    pub max_disk_bytes: u64,
    /// Files and directories the agent may create on its writable mounts (links included).
    /// Past it, a create fails with `quota` (EDQUOT).
    pub max_files_created: u32,
    /// How many network operations the agent may make: name lookups, binds, connects,
    /// datagrams sent, and datagrams received (a datagram from an address outside the
    /// allow-list, dropped, counts too). Each is counted in the receipt and audited; past the
    /// budget each is refused (`access-denied`) without an audit entry, so neither the agent
    /// nor whoever sends it datagrams can grow the audit log without bound.
    pub max_network_operations: u32,
    /// Bytes the agent may write to the context store over its life: the JSON text of every
    /// document it creates or puts (plus the context type of a create) and of every merge
    /// patch. Counted when the write is attempted (a write refused by the sharing rules costs
    /// its bytes too, so a guest cannot probe for free); a write that then stored a larger
    /// document (a patch, a rollback, a resolution) is charged the rest. Past it the write is refused with
    /// `refused` naming this field, and the agent ends with a `limit-exceeded` of it. Reported
    /// as the receipt's `context_bytes`.
    pub max_context_bytes: u64,
    /// Context writes the agent may make over its life: each create, put, patch and delete is
    /// one. Counted and refused like `maxContextBytes`; reported as the receipt's
    /// `context_writes`.
    pub max_context_writes: u32,
    /// Model calls the agent may make through `qi:agent/llm` (answers replayed from a
    /// recording count too). Past it a call is refused before it is sent (`limit-exceeded`).
    pub max_llm_calls: u32,
    /// Input (prompt) tokens the agent may spend, as the providers report them after each
    /// call: once reached, the next call is refused before it is sent. The last call may pass
    /// it (its prompt is only counted by the provider).
    pub max_input_tokens: u64,
    /// Output tokens the agent may spend: each call's `max-tokens` is clamped to what is left,
    /// and a call with nothing left is refused before it is sent.
    pub max_output_tokens: u64,
    /// US dollars the agent may spend on model calls, from the configured prices
    /// (`llm.prices`); `None`: the isolation level's ceiling. Output is clamped to what the
    /// remaining money buys; once it is spent, the next call is refused before it is sent.
    /// Replayed answers cost nothing.
    pub max_cost_usd: Option<f64>,
}

/// Default `resourceLimits.maxLlmCalls`: 100.
pub const DEFAULT_MAX_LLM_CALLS: u32 = 100;
/// Default `resourceLimits.maxInputTokens`: 1,000,000.
pub const DEFAULT_MAX_INPUT_TOKENS: u64 = 1_000_000;
/// Default `resourceLimits.maxOutputTokens`: 100,000.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 100_000;

/// `usd` in micro-dollars (rounded down; saturating).
pub fn usd_to_micro(usd: f64) -> u64 {
    (usd * 1_000_000.0).floor().clamp(0.0, u64::MAX as f64) as u64
}

/// Default `resourceLimits.maxContextBytes`: 64 MiB.
pub const DEFAULT_MAX_CONTEXT_BYTES: u64 = 64 << 20;
/// Default `resourceLimits.maxContextWrites`: 10,000.
pub const DEFAULT_MAX_CONTEXT_WRITES: u32 = 10_000;

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            max_memory_mb: 64,
            max_execution_time_ms: 30_000,
            max_concurrent_operations: 4,
            max_tool_calls: 100,
            allowed_network_hosts: Vec::new(),
            max_file_operations: 10_000,
            max_open_handles: 256,
            max_disk_bytes: 64 << 20,
            max_files_created: 1_000,
            max_network_operations: 10_000,
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            max_context_writes: DEFAULT_MAX_CONTEXT_WRITES,
            max_llm_calls: DEFAULT_MAX_LLM_CALLS,
            max_input_tokens: DEFAULT_MAX_INPUT_TOKENS,
            max_output_tokens: DEFAULT_MAX_OUTPUT_TOKENS,
            max_cost_usd: None,
        }
    }
}

/// The seeds' `SecurityConstraints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SecurityConstraints {
    /// Must be `true`: every qi-host agent runs in a sandbox. Present for seed compatibility.
    pub sandbox_enabled: bool,
    /// Tool name patterns (globs such as `fs.*`) the agent may call. Empty: no tools.
    pub allowed_tools: Vec<String>,
    /// Operation patterns that are always refused, whatever else grants them: tool names,
    /// `network` (all sockets) and `filesystem-write` (all writes).
    pub prohibited_operations: Vec<String>,
    /// Network access mode.
    pub network_access_level: NetworkAccessLevel,
    /// Filesystem access mode.
    pub file_system_access: FileSystemAccess,
    /// Record every host call in the usage receipt (always on at `monitored`).
    pub resource_monitoring: bool,
    /// Model name patterns (globs such as `local/*`) the agent may call through `qi:agent/llm`:
    /// a call is allowed when a pattern matches the name it used (an alias) or the
    /// `<provider>/<model>` id it resolves to. Empty (the default at every level): no models.
    /// `llm` in `prohibitedOperations` refuses every model.
    pub allowed_models: Vec<String>,
}

impl Default for SecurityConstraints {
    fn default() -> Self {
        SecurityConstraints {
            sandbox_enabled: true,
            allowed_tools: Vec::new(),
            prohibited_operations: Vec::new(),
            network_access_level: NetworkAccessLevel::None,
            file_system_access: FileSystemAccess::ReadOnly,
            resource_monitoring: false,
            allowed_models: Vec::new(),
        }
    }
}

/// A host directory made visible to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectoryGrant {
    /// Directory on the host.
    pub host_path: PathBuf,
    /// Absolute path the agent sees, e.g. `/workspace`.
    pub guest_path: String,
    /// Requested access; `None` takes the default of `fileSystemAccess`.
    #[serde(default)]
    pub writable: Option<bool>,
}

impl DirectoryGrant {
    /// Parses the CLI form `HOST[:GUEST][:ro|rw]`; `GUEST` defaults to `/workspace`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut parts: Vec<&str> = spec.split(':').collect();
        let mut writable = None;
        if let Some(last) = parts.last()
            && parts.len() > 1
            && (*last == "ro" || *last == "rw")
        {
            writable = Some(*last == "rw");
            parts.pop();
        }
        let (host, guest) = match parts.as_slice() {
            [host] => (*host, "/workspace"),
            [host, guest] => (*host, *guest),
            _ => {
                return Err(Error::field(
                    "--dir",
                    format!("`{spec}` is not HOST[:GUEST][:ro|rw], e.g. `./src:/workspace:ro`"),
                ));
            }
        };
        if host.is_empty() {
            return Err(Error::field(
                "--dir",
                format!("`{spec}` has an empty host path"),
            ));
        }
        Ok(DirectoryGrant {
            host_path: PathBuf::from(host),
            guest_path: guest.to_string(),
            writable,
        })
    }
}

/// Everything needed to spawn a sub-agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SubAgentSpecification {
    /// The name the operator gives this agent: a manifest's agent kind (e.g. `reviewer`, set by
    /// `qi-host run`), or what `--name` / the spec says. Access policies match it as the agent's
    /// name. `None`: policies see no name. The name a component declares in `describe()` is
    /// shown in reports but never used for authorization (a component could claim any name).
    pub name: Option<String>,
    /// The kind of agent wanted.
    pub agent_type: AgentType,
    /// Capabilities the agent must declare (checked against `describe`).
    pub capabilities: Vec<String>,
    /// Resource limits.
    pub resource_limits: ResourceLimits,
    /// Security constraints.
    pub security_constraints: SecurityConstraints,
    /// Isolation level.
    pub isolation_level: IsolationLevel,
    /// The agent that asked for this one; `None` for agents spawned by the host's operator.
    pub parent_agent_id: Option<String>,
    /// Per-agent overrides of host defaults; known keys: `maxOutputBytes`, `maxLogBytes`,
    /// `fuelYieldInterval`.
    pub configuration_overrides: BTreeMap<String, serde_json::Value>,
    /// CPU budget in fuel units (roughly one per WebAssembly instruction).
    pub fuel: u64,
    /// Host directories the agent may see.
    pub directories: Vec<DirectoryGrant>,
    /// How far the host trusts the agent (policies can require a minimum); changeable at
    /// runtime with `AgentHost::update_agent_trust_level`.
    pub trust_level: crate::security::TrustLevel,
}

impl Default for SubAgentSpecification {
    fn default() -> Self {
        SubAgentSpecification {
            name: None,
            agent_type: AgentType::Basic,
            capabilities: Vec::new(),
            resource_limits: ResourceLimits::default(),
            security_constraints: SecurityConstraints::default(),
            isolation_level: IsolationLevel::Sandbox,
            parent_agent_id: None,
            configuration_overrides: BTreeMap::new(),
            fuel: 2_000_000_000,
            directories: Vec::new(),
            trust_level: crate::security::TrustLevel::default(),
        }
    }
}

/// Host-wide ceilings that no spec may exceed.
#[derive(Debug, Clone, Copy)]
pub struct SpecCeilings {
    /// Largest `maxMemoryMB`.
    pub max_memory_mb: u32,
    /// Largest `maxExecutionTimeMs`.
    pub max_execution_time_ms: u64,
    /// Largest `maxOutputBytes`.
    pub max_output_bytes: u64,
}

/// Overrides resolved from `configurationOverrides`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedOverrides {
    /// Largest accepted output, in bytes of JSON text.
    pub max_output_bytes: u64,
    /// Log bytes the agent may write before further records are dropped.
    pub max_log_bytes: u64,
    /// Fuel units between async yields (how quickly a spinning agent notices a deadline or a
    /// termination).
    pub fuel_yield_interval: u64,
}

/// Default largest accepted output: 1 MiB of JSON.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;
/// Default log budget per agent: 256 KiB.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 256 << 10;
/// Default fuel between async yields.
pub const DEFAULT_FUEL_YIELD_INTERVAL: u64 = 1_000_000;

const KNOWN_OVERRIDES: &str = "maxOutputBytes, maxLogBytes, fuelYieldInterval";
