//! `SubAgentSpecification` as in the seeds, plus the fuel budget, directory grants and output
//! limit qi-host adds, and its validation.
//!
//! Validation names the offending field in the spec's own (camelCase) spelling and says what is
//! allowed. A spec that asks for more than its isolation level permits is rejected before
//! anything is instantiated.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            max_memory_mb: 64,
            max_execution_time_ms: 30_000,
            max_concurrent_operations: 4,
            max_tool_calls: 100,
            allowed_network_hosts: Vec::new(),
            max_file_operations: 10_000,
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

/// One parsed `allowedNetworkHosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPattern {
    /// The pattern as written.
    pub text: String,
    /// Host part: an IP glob (`127.0.0.*`, `*`) or a host name to resolve at spawn.
    pub host: HostPattern,
    /// Port part.
    pub ports: PortPattern,
}

/// Host part of a [`NetworkPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Glob over the textual IP address (`*` matches any address).
    IpGlob(String),
    /// A host name, resolved to addresses when the agent is spawned.
    Name(String),
}

/// Port part of a [`NetworkPattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortPattern {
    /// Any port.
    Any,
    /// An inclusive range.
    Range(u16, u16),
}

impl PortPattern {
    /// Whether `port` matches.
    pub fn matches(self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (lo..=hi).contains(&port),
        }
    }
}

impl NetworkPattern {
    /// Parses `HOST:PORT`, `[IPv6]:PORT`; `PORT` is a number, `LO-HI` or `*`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::field(
                field,
                format!(
                    "`{text}` {why}; write HOST:PORT, e.g. `127.0.0.1:8080`, `10.0.0.*:443`, `api.example.com:443` or `[::1]:*`"
                ),
            )
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(|| bad("has no port"))?;
            (host, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| bad("has no port"))?
        };
        if host.is_empty() {
            return Err(bad("has an empty host"));
        }
        let ports = if port == "*" {
            PortPattern::Any
        } else if let Some((lo, hi)) = port.split_once('-') {
            let lo: u16 = lo.parse().map_err(|_| bad("has an invalid port range"))?;
            let hi: u16 = hi.parse().map_err(|_| bad("has an invalid port range"))?;
            if lo > hi {
                return Err(bad("has a port range whose start is above its end"));
            }
            PortPattern::Range(lo, hi)
        } else {
            let p: u16 = port.parse().map_err(|_| bad("has an invalid port"))?;
            PortPattern::Range(p, p)
        };
        let is_ip_glob = host.parse::<IpAddr>().is_ok()
            || host == "*"
            || host
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ".:*?".contains(c));
        let host = if is_ip_glob {
            globset::Glob::new(host)
                .map_err(|e| bad(&format!("has an invalid host glob ({e})")))?;
            HostPattern::IpGlob(host.to_string())
        } else if host.contains(['*', '?', '[']) {
            return Err(bad(
                "uses a wildcard host name, which cannot be enforced at the socket level (names resolve to addresses); list each host name, or use an IP glob",
            ));
        } else {
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(NetworkPattern {
            text: text.to_string(),
            host,
            ports,
        })
    }

    /// Whether the pattern matches every address.
    pub fn matches_everything(&self) -> bool {
        self.host == HostPattern::IpGlob("*".into()) && self.ports == PortPattern::Any
    }
}

impl SubAgentSpecification {
    /// Checks every field; the error names the first offending one and what is allowed.
    pub fn validate(&self, ceilings: &SpecCeilings) -> Result<ResolvedOverrides> {
        let limits = &self.resource_limits;
        let sec = &self.security_constraints;
        let level = self.isolation_level;

        if limits.max_memory_mb == 0 || limits.max_memory_mb > ceilings.max_memory_mb {
            return Err(Error::field(
                "resourceLimits.maxMemoryMB",
                format!(
                    "must be between 1 and {} (the host's ceiling), got {}",
                    ceilings.max_memory_mb, limits.max_memory_mb
                ),
            ));
        }
        if limits.max_execution_time_ms == 0
            || limits.max_execution_time_ms > ceilings.max_execution_time_ms
        {
            return Err(Error::field(
                "resourceLimits.maxExecutionTimeMs",
                format!(
                    "must be between 1 and {}, got {}",
                    ceilings.max_execution_time_ms, limits.max_execution_time_ms
                ),
            ));
        }
        if limits.max_concurrent_operations == 0 {
            return Err(Error::field(
                "resourceLimits.maxConcurrentOperations",
                "must be at least 1 (an agent's host calls are one at a time unless it batches)",
            ));
        }
        if self.fuel == 0 {
            return Err(Error::field(
                "fuel",
                "must be at least 1; a small agent needs a few hundred thousand units",
            ));
        }
        if !sec.sandbox_enabled {
            return Err(Error::field(
                "securityConstraints.sandboxEnabled",
                "must be true: qi-host never runs an agent outside its sandbox",
            ));
        }
        for (i, cap) in self.capabilities.iter().enumerate() {
            if cap.trim().is_empty() {
                return Err(Error::field(
                    format!("capabilities[{i}]"),
                    "is empty; name a capability such as `code-analysis`",
                ));
            }
        }
        for (i, pattern) in sec
            .allowed_tools
            .iter()
            .chain(&sec.prohibited_operations)
            .enumerate()
        {
            let field = if i < sec.allowed_tools.len() {
                format!("securityConstraints.allowedTools[{i}]")
            } else {
                format!(
                    "securityConstraints.prohibitedOperations[{}]",
                    i - sec.allowed_tools.len()
                )
            };
            globset::Glob::new(pattern).map_err(|e| {
                Error::field(field, format!("`{pattern}` is not a valid glob: {e}"))
            })?;
        }
        let mut patterns = Vec::new();
        for (i, text) in limits.allowed_network_hosts.iter().enumerate() {
            patterns.push(NetworkPattern::parse(
                &format!("resourceLimits.allowedNetworkHosts[{i}]"),
                text,
            )?);
        }
        if sec.network_access_level == NetworkAccessLevel::None && !patterns.is_empty() {
            return Err(Error::field(
                "resourceLimits.allowedNetworkHosts",
                "lists hosts but securityConstraints.networkAccessLevel is `none`; set it to `restricted`",
            ));
        }
        for (i, dir) in self.directories.iter().enumerate() {
            if !dir.guest_path.starts_with('/') {
                return Err(Error::field(
                    format!("directories[{i}].guestPath"),
                    format!("`{}` must be absolute, e.g. `/workspace`", dir.guest_path),
                ));
            }
            if dir.guest_path.split('/').any(|c| c == ".." || c == ".") {
                return Err(Error::field(
                    format!("directories[{i}].guestPath"),
                    format!("`{}` must not contain `.` or `..`", dir.guest_path),
                ));
            }
            if !dir.host_path.is_dir() {
                return Err(Error::field(
                    format!("directories[{i}].hostPath"),
                    format!("`{}` is not an existing directory", dir.host_path.display()),
                ));
            }
        }

        // Isolation ceilings (DESIGN.md table).
        let ceiling = |field: &str, message: &str| Error::IsolationCeiling {
            field: field.to_string(),
            level: level.as_str().to_string(),
            message: message.to_string(),
        };
        match level {
            IsolationLevel::Sandbox => {
                if !self.directories.is_empty() {
                    return Err(ceiling(
                        "directories",
                        "a sandboxed agent sees no filesystem; remove the directories or use `restricted`",
                    ));
                }
                if sec.network_access_level != NetworkAccessLevel::None {
                    return Err(ceiling(
                        "securityConstraints.networkAccessLevel",
                        "a sandboxed agent has no network; set it to `none` or use `restricted`",
                    ));
                }
            }
            IsolationLevel::Restricted => {
                if sec.file_system_access == FileSystemAccess::Full {
                    return Err(ceiling(
                        "securityConstraints.fileSystemAccess",
                        "`full` needs `monitored`; use `read-only` or `restricted`",
                    ));
                }
                if sec.network_access_level == NetworkAccessLevel::Full {
                    return Err(ceiling(
                        "securityConstraints.networkAccessLevel",
                        "`full` needs `monitored`; use `restricted` with allowedNetworkHosts",
                    ));
                }
                if let Some(p) = patterns.iter().find(|p| p.matches_everything()) {
                    return Err(ceiling(
                        "resourceLimits.allowedNetworkHosts",
                        &format!(
                            "`{}` allows every address; list the hosts the agent needs",
                            p.text
                        ),
                    ));
                }
            }
            IsolationLevel::Monitored => {}
        }

        let mut resolved = ResolvedOverrides {
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            fuel_yield_interval: DEFAULT_FUEL_YIELD_INTERVAL,
        };
        for (key, value) in &self.configuration_overrides {
            let field = format!("configurationOverrides.{key}");
            let number = || {
                value.as_u64().filter(|v| *v > 0).ok_or_else(|| {
                    Error::field(
                        field.clone(),
                        format!("must be a positive integer, got {value}"),
                    )
                })
            };
            match key.as_str() {
                "maxOutputBytes" => {
                    let v = number()?;
                    if v > ceilings.max_output_bytes {
                        return Err(Error::field(
                            field,
                            format!(
                                "must be at most {} (the host's ceiling), got {v}",
                                ceilings.max_output_bytes
                            ),
                        ));
                    }
                    resolved.max_output_bytes = v;
                }
                "maxLogBytes" => resolved.max_log_bytes = number()?,
                "fuelYieldInterval" => resolved.fuel_yield_interval = number()?,
                other => {
                    return Err(Error::field(
                        field,
                        format!("`{other}` is not a known override; known: {KNOWN_OVERRIDES}"),
                    ));
                }
            }
        }
        Ok(resolved)
    }

    /// The parsed `allowedNetworkHosts` (call after [`validate`](Self::validate)).
    pub fn network_patterns(&self) -> Result<Vec<NetworkPattern>> {
        self.resource_limits
            .allowed_network_hosts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                NetworkPattern::parse(&format!("resourceLimits.allowedNetworkHosts[{i}]"), t)
            })
            .collect()
    }
}
