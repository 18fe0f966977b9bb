//! The server config of `qi-host serve` (TOML): what clients may run, who the clients are, and
//! the bounds every client is held to.
//!
//! ```toml
//! guest_dir = "target/guests/wasm32-wasip2/guest"   # where `guest:<name>` components are
//! policies = "policies.toml"                         # access policies (optional)
//!
//! [limits]
//! max_body_bytes = 1048576        # one HTTP request body (MCP or /v1), bytes
//! max_argument_bytes = 262144     # the JSON text of one call's arguments, bytes
//! max_runs_per_client = 4         # run_agent and run_task calls in progress per client
//! requests_per_second = 100       # per client, sustained
//! burst = 200                     # per client, at once
//! shutdown_grace_ms = 10000       # SIGTERM: how long running work may take to finish
//!
//! [agents.hello]                  # what `run_agent` may name
//! component = "guest:hello"       # or a path relative to this file
//! spec = { fuel = 100000000, resourceLimits = { maxMemoryMB = 32 } }   # the ceiling
//!
//! [manifests.code-review]         # what `run_task` may name
//! path = "../examples/code-review/task.toml"
//!
//! [clients.ci]                    # a bearer-token client (HTTP)
//! token_file = "ci.token"         # the token: the file's text, trimmed, 32 to 512 bytes
//! trust = "medium"
//! operator = false                # true: the context store sees it as the operator
//!
//! [identities.planner]            # an external agent proving itself with Ed25519
//! public_key = "<64 hex characters>"
//! trust = "low"
//! ```
//!
//! Paths are relative to the config file's directory. Every name is 1 to 64 bytes of ASCII
//! letters, digits, `-`, `_` and `.`; a client or identity may not be named `operator` or
//! `anonymous`, and a name is used once across `clients` and `identities`.

use crate::error::Error;
use crate::security::TrustLevel;
use crate::spec::SubAgentSpecification;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Largest config file read, bytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most registered agents, manifests, clients or identities (each).
pub const MAX_ENTRIES: usize = 1_000;

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where `guest:<name>` components are (default: `$QI_GUEST_DIR`, else
    /// `target/guests/wasm32-wasip2/guest`).
    #[serde(default)]
    pub guest_dir: Option<PathBuf>,
    /// Access policies every caller (and every agent) is checked against; none: the gate is
    /// open.
    #[serde(default)]
    pub policies: Option<PathBuf>,
    /// Per-client bounds.
    #[serde(default)]
    pub limits: ServeLimits,
    /// Agents `run_agent` may name.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentEntry>,
    /// Manifests `run_task` may name.
    #[serde(default)]
    pub manifests: BTreeMap<String, ManifestEntry>,
    /// Bearer-token clients.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientEntry>,
    /// External agents that sign an Ed25519 challenge.
    #[serde(default)]
    pub identities: BTreeMap<String, IdentityEntry>,
}

/// Bounds every client is held to.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeLimits {
    /// Largest HTTP request body, bytes (1 KiB to 64 MiB; default 1 MiB). Past it: 413.
    pub max_body_bytes: usize,
    /// Largest JSON text of one call's arguments, bytes (256 to 16 MiB; default 256 KiB).
    pub max_argument_bytes: usize,
    /// `run_agent` and `run_task` calls one client may have in progress (1 to 1,000;
    /// default 4).
    pub max_runs_per_client: usize,
    /// Sustained requests per second per client (1 to 100,000; default 100).
    pub requests_per_second: u32,
    /// Requests a client may make at once before the rate applies (1 to 1,000,000; default
    /// 200).
    pub burst: u32,
    /// On SIGTERM, how long running work may take to finish before it is checkpointed and
    /// stopped, ms (0 to 600,000; default 10,000).
    pub shutdown_grace_ms: u64,
    /// Runs kept in memory for `run_status` (running and finished; 16 to 100,000; default
    /// 1,000). The oldest finished ones are forgotten first; past it with every kept run
    /// still running, `run_task` is refused.
    pub max_tracked_runs: usize,
    /// Ed25519 session tokens one identity holds at once (1 to 10,000; default 16): one more
    /// ends its oldest.
    pub max_sessions: usize,
    /// MCP sessions (Streamable HTTP) one client holds at once (1 to 10,000; default 64): one
    /// more forgets its oldest, which is then refused.
    pub max_mcp_sessions_per_client: usize,
    /// How long an Ed25519 session token lasts, ms (1,000 to 86,400,000; default 3,600,000).
    pub session_ttl_ms: u64,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_body_bytes: 1 << 20,
            max_argument_bytes: 256 << 10,
            max_runs_per_client: 4,
            requests_per_second: 100,
            burst: 200,
            shutdown_grace_ms: 10_000,
            max_tracked_runs: 1_000,
            max_sessions: 16,
            max_mcp_sessions_per_client: 64,
            session_ttl_ms: 3_600_000,
        }
    }
}

/// A registered agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// `guest:<name>` or a path relative to the config file.
    pub component: String,
    /// The spec every run of it gets: a request may lower its limits, never raise them.
    #[serde(default)]
    pub spec: SubAgentSpecification,
    /// Shown by `list_agents` (default: what the component's `describe()` says).
    #[serde(default)]
    pub description: Option<String>,
}

/// A registered manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// The manifest file, relative to the config file.
    pub path: PathBuf,
    /// Shown by `list_agents`' manifest list (default: the manifest's task description).
    #[serde(default)]
    pub description: Option<String>,
}

/// A bearer-token client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// The file holding its token (relative to the config file).
    pub token_file: PathBuf,
    /// Its trust level (what policies see as `principal.trust`; default `low`).
    #[serde(default = "low")]
    pub trust: TrustLevel,
    /// What policies see as `principal.capabilities`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether the context store treats it as the operator (full rights on every context);
    /// otherwise it is `client:<name>` there, and sees what it owns or was shared.
    #[serde(default)]
    pub operator: bool,
}

/// An external agent with an Ed25519 key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEntry {
    /// Its public key, 64 hex characters.
    pub public_key: String,
    /// Its trust level (default `low`).
    #[serde(default = "low")]
    pub trust: TrustLevel,
    /// What policies see as `principal.capabilities`.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// As for [`ClientEntry::operator`].
    #[serde(default)]
    pub operator: bool,
}

fn low() -> TrustLevel {
    TrustLevel::Low
}

/// A config field error: `config.<field>: <message>`.
fn bad(field: impl std::fmt::Display, message: impl std::fmt::Display) -> Error {
    Error::field(format!("config.{field}"), message.to_string())
}

/// Whether `name` is a valid registered name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ServerConfig {
    /// Reads and checks `path`; relative paths inside become relative to its directory.
    pub fn load(path: &Path) -> Result<ServerConfig, Error> {
        let meta = std::fs::metadata(path).map_err(|e| {
            Error::field("--config", format!("cannot read `{}`: {e}", path.display()))
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(Error::field(
                "--config",
                format!(
                    "`{}` is {} bytes; a server config may have at most {MAX_CONFIG_BYTES}",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::field("--config", format!("cannot read `{}`: {e}", path.display()))
        })?;
        let mut config: ServerConfig = toml::from_str(&text).map_err(|e| {
            let span = e.span().map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!(" (line {line})")
            });
            Error::field(
                "--config",
                format!(
                    "`{}`{}: {}",
                    path.display(),
                    span.unwrap_or_default(),
                    e.message()
                ),
            )
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.resolve(&base);
        config.check()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = &mut self.guest_dir {
            join(p);
        }
        if let Some(p) = &mut self.policies {
            join(p);
        }
        for m in self.manifests.values_mut() {
            join(&mut m.path);
        }
        for c in self.clients.values_mut() {
            join(&mut c.token_file);
        }
        for a in self.agents.values_mut() {
            if !a.component.starts_with("guest:") && Path::new(&a.component).is_relative() {
                a.component = base.join(&a.component).to_string_lossy().into_owned();
            }
            for d in &mut a.spec.directories {
                if d.host_path.is_relative() {
                    d.host_path = base.join(&d.host_path);
                }
            }
        }
    }

    /// Checks names and bounds.
    pub fn check(&self) -> Result<(), Error> {
        let l = &self.limits;
        let within = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    format!("limits.{field}"),
                    format!("{v} is outside {lo}..={hi}"),
                ))
            }
        };
        within("max_body_bytes", l.max_body_bytes as u64, 1 << 10, 64 << 20)?;
        within(
            "max_argument_bytes",
            l.max_argument_bytes as u64,
            256,
            16 << 20,
        )?;
        within(
            "max_runs_per_client",
            l.max_runs_per_client as u64,
            1,
            1_000,
        )?;
        within(
            "requests_per_second",
            l.requests_per_second.into(),
            1,
            100_000,
        )?;
        within("burst", l.burst.into(), 1, 1_000_000)?;
        within("shutdown_grace_ms", l.shutdown_grace_ms, 0, 600_000)?;
        within("max_tracked_runs", l.max_tracked_runs as u64, 16, 100_000)?;
        within("max_sessions", l.max_sessions as u64, 1, 10_000)?;
        within(
            "max_mcp_sessions_per_client",
            l.max_mcp_sessions_per_client as u64,
            1,
            10_000,
        )?;
        within("session_ttl_ms", l.session_ttl_ms, 1_000, 86_400_000)?;
        for (table, len) in [
            ("agents", self.agents.len()),
            ("manifests", self.manifests.len()),
            ("clients", self.clients.len()),
            ("identities", self.identities.len()),
        ] {
            if len > MAX_ENTRIES {
                return Err(bad(table, format!("{len} entries; at most {MAX_ENTRIES}")));
            }
        }
        let names = self
            .agents
            .keys()
            .map(|n| ("agents", n))
            .chain(self.manifests.keys().map(|n| ("manifests", n)))
            .chain(self.clients.keys().map(|n| ("clients", n)))
            .chain(self.identities.keys().map(|n| ("identities", n)));
        for (table, name) in names {
            if !valid_name(name) {
                return Err(bad(
                    format!("{table}.{name}"),
                    "names are 1 to 64 bytes of ASCII letters, digits, `-`, `_` and `.`",
                ));
            }
        }
        for name in self.clients.keys().chain(self.identities.keys()) {
            if name == crate::context::OPERATOR || name == "anonymous" {
                return Err(bad(
                    name,
                    "`operator` (the stdio caller) and `anonymous` (unauthenticated requests) \
                     are reserved; choose another name",
                ));
            }
        }
        if let Some(n) = self
            .clients
            .keys()
            .find(|n| self.identities.contains_key(*n))
        {
            return Err(bad(
                format!("identities.{n}"),
                "also a name in [clients]; every caller needs its own name",
            ));
        }
        Ok(())
    }
}
