//! Host tools an agent can call through `qi:agent/tools`: the built-ins (`fs.read`, `fs.write`,
//! `fs.list`, `clock.now`) and any an embedding application registers.
//!
//! File tools resolve paths through the agent's preopened directories with cap-std, so they
//! cannot reach outside them either: absolute paths outside every grant, `..` above a grant
//! and symlinks pointing out of it all fail (cap-std resolves every path component itself,
//! one `openat` with `O_NOFOLLOW` at a time, and refuses a link whose target leaves the
//! directory, dangling or not). `fs.list` reports links as links without following them.
//!
//! While policies are loaded they also meet the agent's file gate ([`ToolContext::files`])
//! exactly as its WASI calls do: the path is resolved to the guest path it lands on (`.` and
//! empty segments dropped, every link followed, see `wasi::filesystem::names`) and `fs.read`
//! is decided as `read`, `fs.write` as `write` and `fs.list` as `list` on
//! `file/<that path>` (and each entry's size as `stat` on the entry); the tool then works on the resolved path, so the file decided on is the
//! file touched. A refusal is `access-denied`.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

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

/// A boxed future returned by [`Tool::call`].
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<Value, ToolFailure>> + Send>>;

/// What a tool sees of the calling agent.
#[derive(Debug, Clone)]
pub struct ToolContext {
    /// The calling agent's id (host-assigned).
    pub agent_id: String,
    /// The agent's preopened directories.
    pub preopens: Arc<Vec<Preopen>>,
    /// The agent's disk quotas, which a tool that creates or grows files charges exactly as
    /// the agent's own WASI calls are charged; `None` (a tool called outside an agent) means
    /// no quota.
    pub quota: Option<Arc<dyn DiskQuota>>,
    /// The agent's access gate for files, which a tool that touches files asks before it does
    /// (see the module docs); `None` (a tool called outside an agent) means no gate.
    pub files: Option<Arc<dyn FileGate>>,
}

/// An agent's access gate for files, shared by its WASI filesystem and its file tools.
pub trait FileGate: Send + Sync + std::fmt::Debug {
    /// Whether the gate decides anything now (policies are loaded); when it does not, tools
    /// skip resolving links for it.
    fn active(&self) -> bool;
    /// Decides `action` (`read`, `write`, `list`, ...) on the file at absolute guest path
    /// `path` (normalised, links resolved): resource `file/<path without the leading />`.
    /// `Err` says why not; the gate audits its decision.
    fn check(&self, path: &str, action: &str) -> Result<(), String>;
}

/// Resolves `guest_path` for a file tool to its grant and the path below the grant's root to
/// work on; with an active gate in `ctx`, follows every link to the guest path the file has
/// and asks the gate for `action` on it first.
fn resolve_gated<'a>(
    ctx: &'a ToolContext,
    guest_path: &str,
    action: &str,
) -> Result<(&'a Preopen, PathBuf), ToolFailure> {
    let (preopen, rel) = resolve(&ctx.preopens, guest_path)?;
    let Some(gate) = ctx.files.as_ref().filter(|g| g.active()) else {
        return Ok((preopen, rel));
    };
    let (rel, named) = crate::wasi::filesystem::names::resolve_for_tool(preopen, &rel, guest_path)
        .map_err(ToolFailure::AccessDenied)?;
    gate.check(&named, action)
        .map_err(ToolFailure::AccessDenied)?;
    Ok((preopen, rel))
}

/// Whether the agent may learn the size of entry `name` of the directory at `rel` (below
/// `preopen`'s root, links resolved): with an active gate, `stat` on the entry's guest path
/// (a refusal is audited by the gate, and `fs.list` then lists the entry without its size).
fn may_stat(ctx: &ToolContext, preopen: &Preopen, rel: &Path, name: &str) -> bool {
    let Some(gate) = ctx.files.as_ref().filter(|g| g.active()) else {
        return true;
    };
    let segments: Vec<String> = rel
        .join(name)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let path = crate::wasi::filesystem::names::guest_join(&preopen.guest_path, &segments);
    gate.check(&path, "stat").is_ok()
}

/// An agent's `resourceLimits.maxDiskBytes` and `maxFilesCreated`, shared by its WASI
/// filesystem and its file tools (see `wasi::filesystem` for what is charged). A refusal
/// records the limit on the agent and says why.
pub trait DiskQuota: Send + Sync + std::fmt::Debug {
    /// Charges `bytes` of growth of the agent's files; `Err` past `maxDiskBytes`.
    fn charge_bytes(&self, bytes: u64, what: &str) -> Result<(), String>;
    /// Gives back bytes charged for growth that did not happen.
    fn refund_bytes(&self, bytes: u64);
    /// Takes one created file; `Err` past `maxFilesCreated`.
    fn take_file(&self, what: &str) -> Result<(), String>;
    /// Gives back a file unit whose create failed.
    fn refund_file(&self);
}

/// Why a tool failed; mapped onto `qi:agent/tools.tool-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolFailure {
    /// The input had the wrong shape.
    #[error("{0}")]
    InvalidInput(String),
    /// The tool refused for access reasons (e.g. a path outside the agent's directories).
    #[error("{0}")]
    AccessDenied(String),
    /// The tool refused because the agent is out of a budget (a disk quota).
    #[error("{0}")]
    LimitExceeded(String),
    /// The tool ran and failed.
    #[error("{0}")]
    Failed(String),
}

/// A host tool.
pub trait Tool: Send + Sync + 'static {
    /// Unique name, e.g. `fs.read`.
    fn name(&self) -> &str;
    /// One sentence for `qi-host inspect` and agents' `available()`.
    fn description(&self) -> &str;
    /// Whether each call counts as a file operation (against `maxFileOperations`).
    fn is_file_operation(&self) -> bool {
        false
    }
    /// Runs the tool. `input` is the parsed JSON the agent passed.
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture;
}

/// The tools a host offers, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl std::fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.tools.keys()).finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools: `fs.read`, `fs.write`, `fs.list`, `clock.now`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register(FsRead);
        r.register(FsWrite);
        r.register(FsList);
        r.register(ClockNow);
        r
    }

    /// Adds (or replaces) a tool.
    pub fn register(&mut self, tool: impl Tool) {
        self.tools.insert(tool.name().to_string(), Arc::new(tool));
    }

    /// Looks a tool up.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// All tool names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }
}

/// Largest file `fs.read` returns, in bytes (a guest cannot make the host buffer more).
pub const FS_READ_MAX_BYTES: u64 = 4 << 20;

/// Finds the grant that contains `guest_path` and the path relative to it. Rejects relative
/// paths and `..` components outright; cap-std rejects symlinks that leave the grant.
pub fn resolve<'a>(
    preopens: &'a [Preopen],
    guest_path: &str,
) -> Result<(&'a Preopen, PathBuf), ToolFailure> {
    let path = Path::new(guest_path);
    if !path.is_absolute() {
        return Err(ToolFailure::InvalidInput(format!(
            "`{guest_path}` is not absolute; paths start at a granted directory such as /workspace"
        )));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ToolFailure::AccessDenied(format!(
            "`{guest_path}` contains `..`; paths must stay inside the granted directories"
        )));
    }
    let best = preopens
        .iter()
        .filter_map(|p| {
            let rel = path.strip_prefix(&p.guest_path).ok()?;
            Some((p, rel.to_path_buf()))
        })
        .max_by_key(|(p, _)| p.guest_path.len());
    let (preopen, rel) = best.ok_or_else(|| {
        ToolFailure::AccessDenied(format!(
            "`{guest_path}` is outside the agent's directories ({})",
            if preopens.is_empty() {
                "it has none".to_string()
            } else {
                preopens
                    .iter()
                    .map(|p| p.guest_path.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    })?;
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        rel
    };
    Ok((preopen, rel))
}

fn path_arg(input: &Value) -> Result<String, ToolFailure> {
    input
        .get("path")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ToolFailure::InvalidInput("expected {\"path\": \"/workspace/...\"}".into()))
}

fn io_failure(path: &str, e: std::io::Error) -> ToolFailure {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        ToolFailure::AccessDenied(format!("`{path}`: {e}"))
    } else {
        ToolFailure::Failed(format!("`{path}`: {e}"))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ToolFailure> + Send + 'static,
) -> Result<T, ToolFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ToolFailure::Failed(format!("tool task failed: {e}")))?
}

/// `fs.read {"path"}` → `{"path", "content", "bytes"}`: reads a UTF-8 file of at most 4 MiB.
struct FsRead;

impl Tool for FsRead {
    fn name(&self) -> &str {
        "fs.read"
    }
    fn description(&self) -> &str {
        "Read a UTF-8 text file (at most 4 MiB) from the agent's directories"
    }
    fn is_file_operation(&self) -> bool {
        true
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let path = path_arg(&input)?;
            blocking(move || {
                let (preopen, rel) = resolve_gated(&ctx, &path, "read")?;
                let file = preopen.dir.open(&rel).map_err(|e| io_failure(&path, e))?;
                let mut buf = String::new();
                file.take(FS_READ_MAX_BYTES + 1)
                    .read_to_string(&mut buf)
                    .map_err(|e| io_failure(&path, e))?;
                if buf.len() as u64 > FS_READ_MAX_BYTES {
                    return Err(ToolFailure::Failed(format!(
                        "`{path}` is larger than {FS_READ_MAX_BYTES} bytes"
                    )));
                }
                Ok(json!({"path": path, "bytes": buf.len(), "content": buf}))
            })
            .await
        })
    }
}

/// `fs.write {"path", "content"}` → `{"path", "bytes"}`: creates or replaces a file in a
/// writable grant, charged against the agent's disk quotas ([`ToolContext::quota`]).
struct FsWrite;

impl Tool for FsWrite {
    fn name(&self) -> &str {
        "fs.write"
    }
    fn description(&self) -> &str {
        "Create or replace a text file in a writable directory of the agent"
    }
    fn is_file_operation(&self) -> bool {
        true
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let path = path_arg(&input)?;
            let content = input
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| ToolFailure::InvalidInput("expected a string `content`".into()))?
                .to_string();
            blocking(move || {
                let (preopen, rel) = resolve_gated(&ctx, &path, "write")?;
                if !preopen.writable {
                    return Err(ToolFailure::AccessDenied(format!(
                        "`{path}` is in `{}`, which is read-only for this agent",
                        preopen.guest_path
                    )));
                }
                // Charged as the guest's own `open-at` with `create` and `truncate` plus a
                // write would be: all the bytes written, and a file unit when the file is
                // new. Both before the file is touched, so a refusal leaves it as it was.
                let bytes = content.len() as u64;
                let creates = preopen.dir.metadata(&rel).is_err();
                let quota = ctx.quota.as_deref();
                if let Some(q) = quota {
                    q.charge_bytes(bytes, "fs.write")
                        .map_err(ToolFailure::LimitExceeded)?;
                    if creates && let Err(why) = q.take_file("fs.write") {
                        q.refund_bytes(bytes);
                        return Err(ToolFailure::LimitExceeded(why));
                    }
                }
                let refund = |written: u64, created: bool| {
                    if let Some(q) = quota {
                        q.refund_bytes(bytes - written);
                        if creates && !created {
                            q.refund_file();
                        }
                    }
                };
                let mut file = preopen.dir.create(&rel).map_err(|e| {
                    refund(0, false);
                    io_failure(&path, e)
                })?;
                file.write_all(content.as_bytes()).map_err(|e| {
                    let written = file.metadata().map_or(0, |m| m.len().min(bytes));
                    refund(written, true);
                    io_failure(&path, e)
                })?;
                Ok(json!({"path": path, "bytes": content.len()}))
            })
            .await
        })
    }
}

/// `fs.list {"path"}` → `{"path", "entries": [{"name", "type", "bytes"}]}`, sorted by name;
/// `type` is `file`, `dir`, `link` (a symbolic link, not followed; `bytes` 0) or `other`;
/// `bytes` is `null` for an entry whose `stat` the access gate refuses.
struct FsList;

impl Tool for FsList {
    fn name(&self) -> &str {
        "fs.list"
    }
    fn description(&self) -> &str {
        "List a directory of the agent's directories"
    }
    fn is_file_operation(&self) -> bool {
        true
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let path = path_arg(&input)?;
            blocking(move || {
                let (preopen, rel) = resolve_gated(&ctx, &path, "list")?;
                let mut entries = Vec::new();
                for entry in preopen
                    .dir
                    .read_dir(&rel)
                    .map_err(|e| io_failure(&path, e))?
                {
                    let entry = entry.map_err(|e| io_failure(&path, e))?;
                    // The entry's own type: a link is listed as a link, never followed.
                    let file_type = entry.file_type().map_err(|e| io_failure(&path, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let (kind, bytes) = if file_type.is_symlink() {
                        ("link", json!(0))
                    } else {
                        let meta = entry.metadata().map_err(|e| io_failure(&path, e))?;
                        let kind = if meta.is_dir() {
                            "dir"
                        } else if meta.is_file() {
                            "file"
                        } else {
                            "other"
                        };
                        // The size is the entry's own `stat`, not the directory's `list`.
                        let size = may_stat(&ctx, preopen, &rel, &name).then(|| meta.len());
                        (kind, json!(size))
                    };
                    entries.push(json!({
                        "name": name,
                        "type": kind,
                        "bytes": bytes,
                    }));
                    if entries.len() >= 10_000 {
                        break;
                    }
                }
                entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Ok(json!({"path": path, "entries": entries}))
            })
            .await
        })
    }
}

/// `clock.now {}` → `{"unix_ms"}`: milliseconds since the Unix epoch.
struct ClockNow;

impl Tool for ClockNow {
    fn name(&self) -> &str {
        "clock.now"
    }
    fn description(&self) -> &str {
        "Current wall-clock time"
    }
    fn call(&self, _ctx: ToolContext, _input: Value) -> ToolFuture {
        Box::pin(async move {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| ToolFailure::Failed(e.to_string()))?;
            Ok(json!({"unix_ms": now.as_millis() as u64}))
        })
    }
}
