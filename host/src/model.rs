//! Small shared types at the bottom of the crate, so that `error` and the layers above can name
//! them without importing each other.

use serde::Serialize;

/// Measured usage of one agent, never estimated.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
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
    /// Context writes the agent attempted: creates, puts, patches, deletes (at most
    /// `resourceLimits.maxContextWrites`).
    pub context_writes: u64,
    /// Bytes of the context writes the agent attempted: the JSON text of documents (and the
    /// type of a create) and merge patches (at most `resourceLimits.maxContextBytes`).
    pub context_bytes: u64,
    /// `context.get` calls answered from the agent's context cache (see
    /// `crate::context::cache`).
    pub context_cache_hits: u64,
    /// `context.get` calls that read the context store: not cached, expired, invalidated by a
    /// change, or (at `monitored`, where every read is recorded) always.
    pub context_cache_misses: u64,
    /// Contexts `context.prefetch` read into the agent's cache.
    pub context_cache_prefetched: u64,
    /// Messages the agent sent on the run's channels (stored; refused sends are not counted).
    pub channel_messages_sent: u64,
    /// Messages the agent received from the run's channels (redeliveries included).
    pub channel_messages_received: u64,
    /// Model calls the agent made through `qi:agent/llm` that passed its grants and budgets
    /// (at most `resourceLimits.maxLlmCalls`), replayed ones included.
    pub llm_calls: u64,
    /// Of `llm_calls`, those answered from a recording (nothing sent, nothing paid).
    pub llm_replayed: u64,
    /// Input (prompt) tokens of the agent's model calls, as the providers reported them.
    pub input_tokens: u64,
    /// Output tokens of the agent's model calls, as the providers reported them.
    pub output_tokens: u64,
    /// US dollars the agent's live model calls cost, from the configured prices
    /// (`llm.prices`; 0 for a model without a price and for replayed answers).
    pub cost: f64,
}

/// The kinds of resource the access gate decides on (see [`ResourceName`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceKind {
    /// A context document, by context id.
    Context,
    /// The event stream of a context, by context id.
    Events,
    /// A synchronization point of a coordinated run, by point id.
    Sync,
    /// A communication channel of a coordinated run, by channel id.
    Channel,
    /// A host tool, by tool name.
    Tool,
    /// A model, by the `<provider>/<model>` id its name resolves to.
    Llm,
    /// A file or directory, by its guest path.
    File,
    /// A network address or host name.
    Network,
    /// A registered agent of `qi-host serve`, by its registered name.
    Agent,
    /// A coordinated run started through `qi-host serve`, by registered manifest name (for
    /// `start` and `plan`) or run id.
    Run,
    /// The audit log (`audit/log`).
    Audit,
}

impl ResourceKind {
    /// The kind as it is spelled in a resource name (`context`, `events`, `sync`, `tool`,
    /// `file`, `network`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Context => "context",
            ResourceKind::Events => "events",
            ResourceKind::Sync => "sync",
            ResourceKind::Channel => "channel",
            ResourceKind::Tool => "tool",
            ResourceKind::Llm => "llm",
            ResourceKind::File => "file",
            ResourceKind::Network => "network",
            ResourceKind::Agent => "agent",
            ResourceKind::Run => "run",
            ResourceKind::Audit => "audit",
        }
    }
}

impl ResourceKind {
    /// Every kind, in the order of the [`ResourceName`] table.
    pub const ALL: [ResourceKind; 11] = [
        ResourceKind::Context,
        ResourceKind::Events,
        ResourceKind::Sync,
        ResourceKind::Channel,
        ResourceKind::Tool,
        ResourceKind::Llm,
        ResourceKind::File,
        ResourceKind::Network,
        ResourceKind::Agent,
        ResourceKind::Run,
        ResourceKind::Audit,
    ];

    /// The actions the gate decides on resources of this kind (the [`ResourceName`] table);
    /// the policy schema is generated from them, so a rule naming another action fails to load.
    pub const fn actions(self) -> &'static [&'static str] {
        match self {
            ResourceKind::Context => &[
                "create", "get", "put", "patch", "delete", "share", "revoke", "ids", "history",
                "rollback", "resolve",
            ],
            ResourceKind::Events => &["subscribe", "publish"],
            ResourceKind::Sync => &[
                "barrier",
                "checkpoint",
                "restore",
                "vote",
                "contribute",
                "outcome",
            ],
            ResourceKind::Channel => &["send", "receive", "ack"],
            ResourceKind::Tool => &["call"],
            ResourceKind::Llm => &["chat"],
            ResourceKind::File => &["read", "write", "create", "delete", "list", "stat", "link"],
            ResourceKind::Network => &["connect", "send", "receive", "bind", "listen", "resolve"],
            ResourceKind::Agent => &["list", "run", "terminate"],
            ResourceKind::Run => &["start", "plan", "status", "terminate"],
            ResourceKind::Audit => &["query"],
        }
    }
}

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one naming scheme of every resource: `<kind>/<id>`, the string access policies match
/// (rule `resources`), the audit log records (`resource`) and `qi-host audit query --resource`
/// filters.
///
/// | kind | id | example | actions | decided in |
/// |---|---|---|---|---|
/// | `context` | the context id (`*` for `ids`, and for `create` without an id) | `context/plan` | `create`, `get`, `put`, `patch`, `delete`, `share`, `revoke`, `ids` | `qi:agent/context` |
/// | `events` | the context whose events | `events/plan` | `subscribe`, `publish` | `qi:agent/events` |
/// | `sync` | the synchronization point id | `sync/analysis-done` | `barrier`, `checkpoint`, `restore`, `vote`, `contribute`, `outcome` | `qi:agent/sync` |
/// | `channel` | the channel id | `channel/jobs` | `send`, `receive`, `ack` | `qi:agent/channels` |
/// | `tool` | the tool name | `tool/fs.read` | `call` | `qi:agent/tools` |
/// | `llm` | the `<provider>/<model>` id the model name resolves to | `llm/local/qwen2.5-7b` | `chat` | `qi:agent/llm` |
/// | `file` | the absolute guest path, without its leading `/`, lexically normalised (no `.`, `..` or empty segments) and with every link resolved to the name its target has in the guest's view | `file/workspace/src/a.rs` | `read`, `write`, `create`, `delete`, `list`, `stat`, `link` | WASI filesystem, `fs.*` tools |
/// | `network` | `<ip>:<port>` of a socket use (IPv6 in brackets, an IPv4-mapped IPv6 address as written by the guest); the host name of a lookup, as the agent passed it | `network/10.0.0.5:443`, `network/[::1]:8080`, `network/example.com` | `connect`, `send`, `receive`, `bind`, `listen`, `resolve` | WASI sockets |
/// | `agent` | the registered name in `qi-host serve`'s config | `agent/hello` | `list`, `run`, `terminate` | `qi-host serve` |
/// | `run` | the registered manifest name (`start`, `plan`) or the run id | `run/code-review`, `run/serve-1a2b` | `start`, `plan`, `status`, `terminate` | `qi-host serve` |
/// | `audit` | `log` | `audit/log` | `query` | `qi-host serve` |
///
/// A file is named by where it lands, not by how the guest spelled it: `/workspace/./a`,
/// `/workspace/sub/../a`, `/workspace//a`, `a` relative to an open `/workspace` and a link
/// `/workspace/l -> a` are all `file/workspace/a`. The mount roots are files too
/// (`file/workspace`; a directory mounted at `/` is `file/`). Which WASI call takes which file
/// action is listed in `crate::wasi::filesystem`.
///
/// ```
/// use qi_host::model::{ResourceKind, ResourceName};
/// let n = ResourceName::file("/workspace/src/../src/./a.rs").unwrap();
/// assert_eq!(n.to_string(), "file/workspace/src/a.rs");
/// assert_eq!((n.kind(), n.id()), (ResourceKind::File, "workspace/src/a.rs"));
/// assert_eq!(ResourceName::new(ResourceKind::Tool, "fs.read").to_string(), "tool/fs.read");
/// assert!(ResourceName::file("/../etc/passwd").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceName {
    kind: ResourceKind,
    id: String,
}

impl ResourceName {
    /// `kind/id`, with `id` taken as given.
    pub fn new(kind: ResourceKind, id: impl Into<String>) -> Self {
        ResourceName {
            kind,
            id: id.into(),
        }
    }

    /// The name of the file at absolute guest path `path`, normalised lexically (see
    /// [`normalize_guest_path`]); `None` when `path` is not absolute or climbs above `/`.
    /// Links are not resolved here: the filesystem resolves them before it names a file.
    pub fn file(path: &str) -> Option<Self> {
        let path = normalize_guest_path(path)?;
        Some(ResourceName::new(
            ResourceKind::File,
            path.trim_start_matches('/'),
        ))
    }

    /// The kind.
    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// The id (everything after `<kind>/`).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for ResourceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// `path` (absolute, `/`-separated) with empty and `.` segments dropped and each `..` taking
/// away the segment before it: `/workspace/./a//b/../c` is `/workspace/a/c`, `/` stays `/`.
/// `None` when `path` is not absolute or a `..` climbs above `/`.
pub fn normalize_guest_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in rest.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            s => segments.push(s),
        }
    }
    Some(format!("/{}", segments.join("/")))
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

/// Milliseconds since the Unix epoch on the system clock (0 before it).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
