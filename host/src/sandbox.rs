//! Per-agent sandbox state: the Store's data, the memory limiter, counters, the WASI context
//! (preopens through cap-std, network allow-list) and the measured usage receipt.

use crate::error::{AgentFailure, LimitKind};
use crate::spec::{
    FileSystemAccess, HostPattern, IsolationLevel, NetworkAccessLevel, NetworkPattern,
    ResolvedOverrides, SubAgentSpecification,
};
use crate::tools::ToolRegistry;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Bytes of guest stdout and of guest stderr the host keeps (the rest is refused).
pub const STDIO_CAPTURE_BYTES: usize = 64 << 10;
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
    /// Log bytes accepted.
    pub log_bytes: AtomicU64,
    /// Log records dropped because the log budget was spent.
    pub logs_dropped: AtomicU64,
    /// Requests refused by access checks (tools not allowed or prohibited).
    pub access_denied: AtomicU64,
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

/// A directory the agent sees, opened through cap-std so that host-side tools cannot escape it
/// either (no absolute paths, no `..` above it, no symlinks out of it).
#[derive(Debug, Clone)]
pub struct Preopen {
    /// Path the agent uses, e.g. `/workspace`.
    pub guest_path: String,
    /// Host directory path (as granted).
    pub host_path: std::path::PathBuf,
    /// Host directory handle.
    pub dir: Arc<cap_std::fs::Dir>,
    /// Whether writes are allowed.
    pub writable: bool,
}

/// What an agent may do, resolved from its spec when it is spawned.
#[derive(Debug)]
pub struct Grants {
    /// Tool names the agent may call.
    pub allowed_tools: GlobSet,
    /// Operations refused whatever else allows them.
    pub prohibited: GlobSet,
    /// Network rules; empty means deny all.
    pub network: Vec<NetworkRule>,
    /// All addresses allowed (`networkAccessLevel: full`, monitored level).
    pub network_any: bool,
    /// Directories the agent sees.
    pub preopens: Vec<Preopen>,
    /// Record every host call.
    pub monitored: bool,
}

/// A resolved `allowedNetworkHosts` entry.
#[derive(Debug, Clone)]
pub struct NetworkRule {
    hosts: RuleHosts,
    ports: crate::spec::PortPattern,
}

#[derive(Debug, Clone)]
enum RuleHosts {
    Glob(globset::GlobMatcher),
    Addrs(Vec<IpAddr>),
}

impl NetworkRule {
    fn matches(&self, addr: SocketAddr) -> bool {
        if !self.ports.matches(addr.port()) {
            return false;
        }
        let ip = canonical_ip(addr.ip());
        match &self.hosts {
            RuleHosts::Glob(g) => g.is_match(ip.to_string()),
            RuleHosts::Addrs(addrs) => addrs.iter().any(|a| canonical_ip(*a) == ip),
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Grants {
    /// Whether `operation` (a tool name or `network` / `filesystem-write`) is prohibited.
    pub fn is_prohibited(&self, operation: &str) -> bool {
        self.prohibited.is_match(operation)
    }

    /// Whether the agent may call tool `name`: allowed and not prohibited.
    pub fn tool_allowed(&self, name: &str) -> bool {
        self.allowed_tools.is_match(name) && !self.is_prohibited(name)
    }

    /// Whether a socket use is allowed.
    pub fn socket_allowed(&self, addr: SocketAddr, usage: SocketAddrUse) -> bool {
        if self.is_prohibited("network") {
            return false;
        }
        if !self.network_any && self.network.is_empty() {
            return false;
        }
        match usage {
            // Agents are clients: no listening sockets, no accepting.
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
            // Implicit binds before a connect use the unspecified address.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => addr.ip().is_unspecified(),
            _ => self.network_any || self.network.iter().any(|r| r.matches(addr)),
        }
    }
}

fn globset(field: &str, patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| anyhow::anyhow!("{field}: `{p}`: {e}"))?);
    }
    Ok(b.build()?)
}

/// Resolves grants from a validated spec: compiles globs, resolves host names in the network
/// allow-list and opens the granted directories.
pub async fn resolve_grants(spec: &SubAgentSpecification) -> crate::Result<Grants> {
    let sec = &spec.security_constraints;
    let allowed_tools = globset("securityConstraints.allowedTools", &sec.allowed_tools)?;
    let prohibited = globset(
        "securityConstraints.prohibitedOperations",
        &sec.prohibited_operations,
    )?;
    let mut network = Vec::new();
    for NetworkPattern { text, host, ports } in spec.network_patterns()? {
        let hosts = match host {
            HostPattern::IpGlob(g) => RuleHosts::Glob(
                Glob::new(&g)
                    .map_err(|e| {
                        crate::Error::field("resourceLimits.allowedNetworkHosts", e.to_string())
                    })?
                    .compile_matcher(),
            ),
            HostPattern::Name(name) => {
                let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 0))
                    .await
                    .map_err(|e| {
                        crate::Error::field(
                            "resourceLimits.allowedNetworkHosts",
                            format!("cannot resolve `{name}` from `{text}`: {e}"),
                        )
                    })?
                    .map(|a| a.ip())
                    .collect();
                RuleHosts::Addrs(addrs)
            }
        };
        network.push(NetworkRule { hosts, ports });
    }
    let no_writes = sec.file_system_access == FileSystemAccess::ReadOnly
        || prohibited.is_match("filesystem-write");
    let mut preopens = Vec::new();
    for (i, grant) in spec.directories.iter().enumerate() {
        let writable = !no_writes
            && grant
                .writable
                .unwrap_or(sec.file_system_access == FileSystemAccess::Full);
        let dir =
            cap_std::fs::Dir::open_ambient_dir(&grant.host_path, cap_std::ambient_authority())
                .map_err(|e| {
                    crate::Error::field(
                        format!("directories[{i}].hostPath"),
                        format!("cannot open `{}`: {e}", grant.host_path.display()),
                    )
                })?;
        preopens.push(Preopen {
            guest_path: match grant.guest_path.trim_end_matches('/') {
                "" => "/".to_string(),
                g => g.to_string(),
            },
            host_path: grant.host_path.clone(),
            dir: Arc::new(dir),
            writable,
        });
    }
    Ok(Grants {
        allowed_tools,
        prohibited,
        network_any: sec.network_access_level == NetworkAccessLevel::Full,
        network,
        preopens,
        monitored: spec.isolation_level == IsolationLevel::Monitored || sec.resource_monitoring,
    })
}

/// Everything about an agent that outlives a borrow of its Store.
#[derive(Debug)]
pub struct AgentShared {
    /// Host-assigned id; the agent cannot choose or change it.
    pub id: String,
    /// The spec it was spawned with.
    pub spec: SubAgentSpecification,
    /// Overrides resolved from the spec.
    pub overrides: ResolvedOverrides,
    /// Resolved grants.
    pub grants: Grants,
    /// Live counters.
    pub counters: Counters,
    /// When the agent's clock started (spawn).
    pub started: Instant,
    /// The wall-clock deadline.
    pub deadline: Instant,
    /// The first limit the agent ran into, if any.
    pub violation: Mutex<Option<AgentFailure>>,
    /// Host calls, when monitored.
    pub call_log: Mutex<Vec<HostCallRecord>>,
    /// Log records kept for the report.
    pub logs: Mutex<Vec<LogRecord>>,
    /// Tools the host offers.
    pub tools: Arc<ToolRegistry>,
    /// Gate on in-flight host operations (`maxConcurrentOperations`).
    pub operations: Arc<tokio::sync::Semaphore>,
    /// The context store, when the host has one; the agent acts in it as `id`.
    pub context: Option<crate::context::ContextService>,
    /// The run's synchronization points and this agent's subtask, inside a coordinated run.
    pub sync: Option<crate::coord::sync::SyncHandle>,
    /// The host's access gate and audit log.
    pub access: Option<Arc<crate::security::AccessControl>>,
    /// Current trust level (a `TrustLevel` as `u8`), shared with the host's registry.
    pub trust: Arc<std::sync::atomic::AtomicU8>,
    /// The component's declared name, once `describe` answered.
    pub name: std::sync::OnceLock<String>,
}

impl AgentShared {
    /// The access gate (`enforceAccessControl`) for one host call: `kind`/`id` name the
    /// resource (`context`/`plan`, `tool`/`fs.read`, ...). `Err` carries the reason; the
    /// decision is audited by the gate.
    pub fn gate(&self, kind: &str, id: &str, action: &str) -> Result<(), String> {
        let Some(access) = &self.access else {
            return Ok(());
        };
        let Some(policies) = access.current() else {
            return Ok(());
        };
        let attrs = match kind {
            "context" | "events" if policies.needs_resource_attrs() => {
                self.context.as_ref().and_then(|c| c.attributes(id))
            }
            _ => None,
        };
        let no_labels = Vec::new();
        let d = access.enforce_with(
            &policies,
            &crate::security::Request {
                agent_id: &self.id,
                agent_name: self.name.get().map(String::as_str),
                trust: crate::security::TrustLevel::from_u8(self.trust.load(Ordering::Relaxed)),
                capabilities: &self.spec.capabilities,
                isolation: self.spec.isolation_level,
                kind,
                id,
                resource_type: attrs.as_ref().map(|a| a.0.as_str()),
                owner: attrs.as_ref().map(|a| a.1.as_str()),
                labels: attrs.as_ref().map(|a| &a.2).unwrap_or(&no_labels),
                action,
            },
        );
        if d.allowed {
            Ok(())
        } else {
            self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
            Err(format!("{action} on {kind}/{id} refused: {}", d.reason))
        }
    }

    /// Appends a lifecycle fact about this agent to the audit log, if there is one.
    pub fn audit(
        &self,
        resource: &str,
        operation: &str,
        reason: String,
        details: serde_json::Value,
    ) {
        if let Some(a) = &self.access {
            a.record(
                crate::audit::NewAuditEntry::new(
                    self.id.clone(),
                    resource,
                    operation,
                    crate::audit::AuditDecision::Record,
                    reason,
                )
                .details(details),
            );
        }
    }

    /// Records the first limit violation (later ones are consequences of the first).
    pub fn record_violation(&self, limit: LimitKind, limit_value: u64, detail: String) {
        let mut v = self.violation.lock().expect("violation lock poisoned");
        if v.is_none() {
            self.audit(
                "limits",
                "limit-violation",
                format!("{limit} limit ({limit_value}): {detail}"),
                serde_json::json!({"limit": limit, "limitValue": limit_value}),
            );
            *v = Some(AgentFailure::LimitExceeded {
                limit,
                limit_value,
                detail,
            });
        }
    }

    /// Takes one unit of a counted budget; `Err` (and a recorded violation) when it is spent.
    pub fn take_budget(&self, limit: LimitKind) -> Result<(), String> {
        let l = &self.spec.resource_limits;
        let (counter, max) = match limit {
            LimitKind::ToolCalls => (&self.counters.tool_calls, u64::from(l.max_tool_calls)),
            LimitKind::FileOperations => (
                &self.counters.file_operations,
                u64::from(l.max_file_operations),
            ),
            _ => unreachable!("only counted budgets are taken"),
        };
        let used = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if used > max {
            counter.fetch_sub(1, Ordering::Relaxed);
            let detail = format!("attempt {used} refused: the agent may make {max} {limit}");
            self.record_violation(limit, max, detail.clone());
            return Err(detail);
        }
        Ok(())
    }

    /// Remaining budget of a counted limit.
    pub fn remaining(&self, limit: LimitKind) -> u64 {
        let l = &self.spec.resource_limits;
        let (counter, max) = match limit {
            LimitKind::ToolCalls => (&self.counters.tool_calls, u64::from(l.max_tool_calls)),
            LimitKind::FileOperations => (
                &self.counters.file_operations,
                u64::from(l.max_file_operations),
            ),
            _ => return 0,
        };
        max.saturating_sub(counter.load(Ordering::Relaxed))
    }

    /// Appends a monitored host-call record (no-op unless monitored).
    pub fn record_call(
        &self,
        call: &str,
        target: &str,
        arg_bytes: usize,
        start: Instant,
        outcome: &str,
    ) {
        if !self.grants.monitored {
            return;
        }
        let duration_us = start.elapsed().as_micros() as u64;
        self.audit(
            &format!("call/{target}"),
            call,
            outcome.to_string(),
            serde_json::json!({"argBytes": arg_bytes, "durationUs": duration_us}),
        );
        let mut log = self.call_log.lock().expect("call log poisoned");
        // Bounded like everything a guest controls.
        if log.len() < 100_000 {
            log.push(HostCallRecord {
                call: call.to_string(),
                target: target.to_string(),
                arg_bytes: arg_bytes as u64,
                duration_us: start.elapsed().as_micros() as u64,
                outcome: outcome.to_string(),
            });
        }
    }
}

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

/// The data of an agent's `Store`.
pub struct AgentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) shared: Arc<AgentShared>,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    /// The agent's event subscriptions, by handle.
    pub(crate) subscriptions: std::collections::HashMap<u64, crate::events::Subscription>,
}

impl WasiView for AgentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl AgentState {
    /// Builds the Store data: WASI with only the granted preopens and the network check, no
    /// environment variables, no arguments, stdin empty, stdout/stderr captured and bounded.
    pub fn new(shared: Arc<AgentShared>) -> wasmtime::Result<Self> {
        let mut b = WasiCtxBuilder::new();
        let stdout = MemoryOutputPipe::new(STDIO_CAPTURE_BYTES);
        let stderr = MemoryOutputPipe::new(STDIO_CAPTURE_BYTES);
        b.stdout(stdout.clone()).stderr(stderr.clone());
        for p in &shared.grants.preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            b.preopened_dir(&p.host_path, &p.guest_path, perms)?;
        }
        let network_on = (shared.grants.network_any || !shared.grants.network.is_empty())
            && !shared.grants.is_prohibited("network");
        b.allow_tcp(network_on)
            .allow_udp(network_on)
            .allow_ip_name_lookup(network_on);
        let check = shared.clone();
        b.socket_addr_check(move |addr, usage| {
            let action = match usage {
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => "bind",
                SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => "listen",
                SocketAddrUse::TcpConnect => "connect",
                _ => "send",
            };
            let allowed = check.grants.socket_allowed(addr, usage)
                && check.gate("network", &addr.to_string(), action).is_ok();
            let counter = if allowed {
                &check.counters.network_allowed
            } else {
                &check.counters.network_denied
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if !allowed {
                tracing::info!(agent = %check.id, %addr, ?usage, "network use denied");
            }
            Box::pin(async move { allowed })
        });
        let limit_bytes = (shared.spec.resource_limits.max_memory_mb as usize) << 20;
        Ok(AgentState {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit_bytes,
                current_bytes: 0,
                peak_bytes: 0,
                shared: shared.clone(),
            },
            shared,
            stdout,
            stderr,
            subscriptions: std::collections::HashMap::new(),
        })
    }
}

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
    /// Host calls refused by access checks.
    pub access_denied: u64,
    /// Log bytes accepted.
    pub log_bytes: u64,
    /// Log records dropped over budget.
    pub logs_dropped: u64,
    /// Bytes the guest wrote to stdout (kept up to 64 KiB).
    pub stdout_bytes: u64,
    /// Bytes the guest wrote to stderr (kept up to 64 KiB).
    pub stderr_bytes: u64,
}

impl UsageReceipt {
    pub(crate) fn from_counters(c: &Counters) -> Self {
        UsageReceipt {
            host_calls: c.host_calls.load(Ordering::Relaxed),
            tool_calls: c.tool_calls.load(Ordering::Relaxed),
            file_operations: c.file_operations.load(Ordering::Relaxed),
            network_allowed: c.network_allowed.load(Ordering::Relaxed),
            network_denied: c.network_denied.load(Ordering::Relaxed),
            access_denied: c.access_denied.load(Ordering::Relaxed),
            log_bytes: c.log_bytes.load(Ordering::Relaxed),
            logs_dropped: c.logs_dropped.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}
