//! The single `bindgen!` for the `qi:agent/agent` world and the host side of its imports:
//! `log`, `tools`, `budget`. Each call starts with the agent's grants: deny by default, check,
//! count, record (when monitored), then act.

use crate::error::LimitKind;
use crate::sandbox::{AgentShared, AgentState, LogRecord, MAX_KEPT_LOG_RECORDS};
use crate::tools::{ToolContext, ToolFailure};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, StoreContextMut};

/// Code generated from `wit/` by `wasmtime::component::bindgen!`.
#[allow(missing_docs)]
mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "qi:agent/agent",
        imports: { default: async },
        exports: { default: async },
    });
}

use generated::qi;
pub use generated::{Agent, AgentPre};

pub use qi::agent::budget::Remaining;
pub use qi::agent::log::Level;
pub use qi::agent::tools::{ToolError, ToolRequest};
pub use qi::agent::types::{AgentError, AgentInfo, AgentType as WitAgentType, Task, TaskOutput};

/// Largest tool input a guest may pass, in bytes.
pub const MAX_TOOL_INPUT_BYTES: usize = 1 << 20;
/// Largest tool output handed back to a guest, in bytes.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 8 << 20;
/// Largest log message kept, in bytes; longer ones are truncated.
pub const MAX_LOG_MESSAGE_BYTES: usize = 4 << 10;
/// Most fields kept per log record.
pub const MAX_LOG_FIELDS: usize = 32;

/// The linker every agent is instantiated with: WASI 0.2 (filesystem counted), and the
/// `qi:agent` imports.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<AgentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::wasi_fs::shadow_filesystem(&mut linker)?;
    qi::agent::types::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    qi::agent::log::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    qi::agent::tools::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    qi::agent::context::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    qi::agent::events::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    qi::agent::sync::add_to_linker::<AgentState, HasSelf<AgentState>>(&mut linker, |s| s)?;
    // `budget.remaining` needs the Store itself (to read fuel), so it is wrapped by hand.
    linker.instance("qi:agent/budget@0.1.0")?.func_wrap(
        "get",
        |store: StoreContextMut<'_, AgentState>, (): ()| {
            let fuel = store.get_fuel()?;
            let state = store.data();
            let shared = &state.shared;
            shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
            let time_ms = shared
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            let remaining = Remaining {
                fuel,
                time_ms,
                tool_calls: shared.remaining(LimitKind::ToolCalls) as u32,
                file_operations: shared.remaining(LimitKind::FileOperations) as u32,
                memory_bytes: state.limiter.remaining() as u64,
            };
            shared.record_call("budget.get", "", 0, Instant::now(), "ok");
            Ok((remaining,))
        },
    )?;
    Ok(linker)
}

impl qi::agent::types::Host for AgentState {}

impl qi::agent::log::Host for AgentState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<qi::agent::log::Field>) {
        let shared = &self.shared;
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let mut message = message;
        truncate_utf8(&mut message, MAX_LOG_MESSAGE_BYTES);
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .take(MAX_LOG_FIELDS)
            .map(|f| {
                let (mut k, mut v) = (f.key, f.value);
                truncate_utf8(&mut k, 256);
                truncate_utf8(&mut v, 1024);
                (k, v)
            })
            .collect();
        let bytes =
            (message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64;
        let used = shared
            .counters
            .log_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            + bytes;
        if used > shared.overrides.max_log_bytes {
            shared
                .counters
                .log_bytes
                .fetch_sub(bytes, Ordering::Relaxed);
            shared.counters.logs_dropped.fetch_add(1, Ordering::Relaxed);
            shared.record_call("log.log", "", bytes as usize, start, "dropped");
            return;
        }
        let rendered: String = fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
        let agent = shared.id.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "qi.guest", agent, "{message}{rendered}"),
            Level::Debug => tracing::debug!(target: "qi.guest", agent, "{message}{rendered}"),
            Level::Info => tracing::info!(target: "qi.guest", agent, "{message}{rendered}"),
            Level::Warn => tracing::warn!(target: "qi.guest", agent, "{message}{rendered}"),
            Level::Error => tracing::error!(target: "qi.guest", agent, "{message}{rendered}"),
        }
        {
            let mut logs = shared.logs.lock().expect("log lock poisoned");
            if logs.len() < MAX_KEPT_LOG_RECORDS {
                logs.push(LogRecord {
                    level: match level {
                        Level::Trace => "trace",
                        Level::Debug => "debug",
                        Level::Info => "info",
                        Level::Warn => "warn",
                        Level::Error => "error",
                    }
                    .to_string(),
                    message,
                    fields,
                });
            }
        }
        shared.record_call("log.log", "", bytes as usize, start, "ok");
    }
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
}

fn tool_error_kind(e: &ToolError) -> &'static str {
    match e {
        ToolError::AccessDenied(_) => "access-denied",
        ToolError::LimitExceeded(_) => "limit-exceeded",
        ToolError::NotFound(_) => "not-found",
        ToolError::InvalidInput(_) => "invalid-input",
        ToolError::Failed(_) => "failed",
    }
}

/// Checks access and budgets for one tool call and returns a future that runs it.
fn prepare_call(
    shared: &Arc<AgentShared>,
    name: &str,
    input: &str,
) -> Result<crate::tools::ToolFuture, ToolError> {
    shared
        .gate("tool", name, "call")
        .map_err(ToolError::AccessDenied)?;
    let grants = &shared.grants;
    if !grants.tool_allowed(name) {
        shared
            .counters
            .access_denied
            .fetch_add(1, Ordering::Relaxed);
        let why = if grants.is_prohibited(name) {
            "prohibited by securityConstraints.prohibitedOperations"
        } else {
            "not in securityConstraints.allowedTools"
        };
        tracing::info!(agent = %shared.id, tool = name, why, "tool call denied");
        return Err(ToolError::AccessDenied(format!("tool `{name}` is {why}")));
    }
    let tool = shared
        .tools
        .get(name)
        .ok_or_else(|| ToolError::NotFound(format!("no tool named `{name}` is registered")))?;
    shared
        .take_budget(LimitKind::ToolCalls)
        .map_err(ToolError::LimitExceeded)?;
    if tool.is_file_operation() {
        shared
            .take_budget(LimitKind::FileOperations)
            .map_err(ToolError::LimitExceeded)?;
    }
    if input.len() > MAX_TOOL_INPUT_BYTES {
        return Err(ToolError::InvalidInput(format!(
            "input is {} bytes; the limit is {MAX_TOOL_INPUT_BYTES}",
            input.len()
        )));
    }
    let value: serde_json::Value = if input.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(input)
            .map_err(|e| ToolError::InvalidInput(format!("input is not JSON: {e}")))?
    };
    let ctx = ToolContext {
        agent_id: shared.id.clone(),
        preopens: Arc::new(grants.preopens.clone()),
    };
    Ok(tool.call(ctx, value))
}

async fn finish_call(fut: crate::tools::ToolFuture) -> Result<String, ToolError> {
    match fut.await {
        Ok(value) => {
            let text = value.to_string();
            if text.len() > MAX_TOOL_OUTPUT_BYTES {
                return Err(ToolError::Failed(format!(
                    "tool output is {} bytes; the limit is {MAX_TOOL_OUTPUT_BYTES}",
                    text.len()
                )));
            }
            Ok(text)
        }
        Err(ToolFailure::InvalidInput(m)) => Err(ToolError::InvalidInput(m)),
        Err(ToolFailure::AccessDenied(m)) => Err(ToolError::AccessDenied(m)),
        Err(ToolFailure::Failed(m)) => Err(ToolError::Failed(m)),
    }
}

fn concurrency_refusal(shared: &AgentShared, wanted: usize) -> ToolError {
    let max = shared.spec.resource_limits.max_concurrent_operations;
    let detail = format!("{wanted} operations at once refused: the agent may run {max} at once");
    shared.record_violation(
        LimitKind::ConcurrentOperations,
        u64::from(max),
        detail.clone(),
    );
    ToolError::LimitExceeded(detail)
}

impl qi::agent::tools::Host for AgentState {
    async fn call(&mut self, name: String, input: String) -> Result<String, ToolError> {
        let shared = self.shared.clone();
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let result = match shared.operations.clone().try_acquire_owned() {
            Err(_) => Err(concurrency_refusal(&shared, 1)),
            Ok(_permit) => match prepare_call(&shared, &name, &input) {
                Ok(fut) => finish_call(fut).await,
                Err(e) => Err(e),
            },
        };
        let outcome = result.as_ref().map_or_else(tool_error_kind, |_| "ok");
        shared.record_call(
            "tools.call",
            &name,
            name.len() + input.len(),
            start,
            outcome,
        );
        result
    }

    async fn call_many(&mut self, requests: Vec<ToolRequest>) -> Vec<Result<String, ToolError>> {
        let shared = self.shared.clone();
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let arg_bytes: usize = requests.iter().map(|r| r.name.len() + r.input.len()).sum();
        let n = requests.len();
        let permits = match u32::try_from(n).ok().and_then(|n| {
            shared
                .operations
                .clone()
                .try_acquire_many_owned(n.max(1))
                .ok()
        }) {
            Some(p) => p,
            None => {
                let e = concurrency_refusal(&shared, n);
                shared.record_call("tools.call-many", "", arg_bytes, start, "limit-exceeded");
                return (0..n).map(|_| Err(e.clone())).collect();
            }
        };
        let mut results: Vec<Option<Result<String, ToolError>>> = vec![None; n];
        let mut set = tokio::task::JoinSet::new();
        for (i, req) in requests.iter().enumerate() {
            match prepare_call(&shared, &req.name, &req.input) {
                Ok(fut) => {
                    set.spawn(async move { (i, finish_call(fut).await) });
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => results[i] = Some(r),
                Err(e) => tracing::error!(agent = %shared.id, error = %e, "tool task failed"),
            }
        }
        drop(permits);
        let results: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ToolError::Failed("tool task did not finish".into()))))
            .collect();
        let outcome = if results.iter().all(Result::is_ok) {
            "ok"
        } else {
            "partial"
        };
        shared.record_call(
            "tools.call-many",
            &format!("{n} calls"),
            arg_bytes,
            start,
            outcome,
        );
        results
    }

    async fn available(&mut self) -> Vec<String> {
        let shared = &self.shared;
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let names = shared
            .tools
            .names()
            .filter(|n| shared.grants.tool_allowed(n))
            .map(str::to_string)
            .collect();
        shared.record_call("tools.available", "", 0, start, "ok");
        names
    }
}

// ---- context and events --------------------------------------------------------------------

use crate::context::{
    Change, ContextError, ContextService, NewContext, Permission, Refusal, SyncStrategy,
};
use crate::events::{EventError, EventType, NewEvent, SubscribeFrom};
use qi::agent::context::{
    ContextError as WitContextError, Document, WriteResult as WitWriteResult,
};
use qi::agent::events::{Event as WitEvent, EventError as WitEventError};

/// Most subscriptions one agent may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_AGENT: usize = 16;
/// Longest a single `events.next` waits, in milliseconds.
pub const MAX_NEXT_TIMEOUT_MS: u32 = 60_000;

fn context_error(e: ContextError) -> WitContextError {
    match e {
        ContextError::AccessDenied { .. } => WitContextError::AccessDenied(e.to_string()),
        ContextError::UnknownAgent(_) => WitContextError::Invalid(e.to_string()),
        ContextError::NotFound(_) => WitContextError::NotFound(e.to_string()),
        ContextError::Refused {
            refusal: Refusal::Stale { current, .. },
            ..
        } => WitContextError::Stale(current),
        ContextError::Refused { .. } | ContextError::AlreadyExists(_) => {
            WitContextError::Refused(e.to_string())
        }
        ContextError::Invalid { .. } => WitContextError::Invalid(e.to_string()),
        ContextError::Store(_) | ContextError::Events(_) => WitContextError::Failed(e.to_string()),
    }
}

fn parse_json(field: &str, text: &str) -> Result<serde_json::Value, WitContextError> {
    serde_json::from_str(text)
        .map_err(|e| WitContextError::Invalid(format!("`{field}` is not JSON: {e}")))
}

fn write_result(r: crate::context::WriteResult) -> WitWriteResult {
    WitWriteResult {
        id: r.context_id,
        version: r.version,
        new_version: r.new_version,
        conflicts: serde_json::to_string(&r.conflicts).unwrap_or_else(|_| "[]".into()),
    }
}

/// The context store and the agent's identity in it, counting the call.
async fn context_call(
    shared: &Arc<AgentShared>,
    call: &str,
) -> Result<(ContextService, String), WitContextError> {
    {
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let svc = shared.context.clone().ok_or_else(|| {
            WitContextError::Failed(format!("{call}: this host has no context store attached"))
        })?;
        let id = shared.id.clone();
        svc.touch(&id).await.map_err(context_error)?;
        Ok((svc, id))
    }
}

impl AgentState {
    fn finish_context<T>(
        &self,
        call: &str,
        target: &str,
        arg_bytes: usize,
        start: Instant,
        r: &Result<T, WitContextError>,
    ) {
        let outcome = match r {
            Ok(_) => "ok",
            Err(WitContextError::AccessDenied(_)) => {
                self.shared
                    .counters
                    .access_denied
                    .fetch_add(1, Ordering::Relaxed);
                "access-denied"
            }
            Err(WitContextError::NotFound(_)) => "not-found",
            Err(WitContextError::Stale(_)) => "stale",
            Err(WitContextError::Refused(_)) => "refused",
            Err(WitContextError::Invalid(_)) => "invalid",
            Err(WitContextError::Failed(_)) => "failed",
        };
        self.shared
            .record_call(call, target, arg_bytes, start, outcome);
    }
}

impl qi::agent::context::Host for AgentState {
    async fn create(
        &mut self,
        id: Option<String>,
        context_type: String,
        doc: String,
        strategy: qi::agent::context::SyncStrategy,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = doc.len() + context_type.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.create").await?;
            shared
                .gate("context", id.as_deref().unwrap_or("*"), "create")
                .map_err(WitContextError::AccessDenied)?;
            let doc = parse_json("doc", &doc)?;
            let strategy = match strategy {
                qi::agent::context::SyncStrategy::Strong => SyncStrategy::Strong,
                qi::agent::context::SyncStrategy::Eventual => SyncStrategy::Eventual,
                qi::agent::context::SyncStrategy::Causal => SyncStrategy::Causal,
                qi::agent::context::SyncStrategy::Manual => SyncStrategy::Manual,
            };
            let resolution = if strategy == SyncStrategy::Causal {
                crate::context::ConflictResolution::Merge
            } else {
                crate::context::ConflictResolution::LastWriteWins
            };
            svc.create(
                &me,
                NewContext {
                    id,
                    context_type,
                    doc,
                    strategy,
                    resolution,
                    ..Default::default()
                },
            )
            .await
            .map(write_result)
            .map_err(context_error)
        }
        .await;
        self.finish_context("context.create", "", bytes, start, &r);
        r
    }

    async fn get(&mut self, id: String) -> Result<Document, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.get").await?;
            shared
                .gate("context", &id, "get")
                .map_err(WitContextError::AccessDenied)?;
            let v = svc.get(&me, &id).await.map_err(context_error)?;
            Ok(Document {
                id: v.id,
                owner: v.owner,
                context_type: v.context_type,
                version: v.version,
                revision: v.revision,
                status: v.status.as_str().to_string(),
                doc: v.doc.to_string(),
            })
        }
        .await;
        self.finish_context("context.get", &id, id.len(), start, &r);
        r
    }

    async fn put(
        &mut self,
        id: String,
        doc: String,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = doc.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.put").await?;
            shared
                .gate("context", &id, "put")
                .map_err(WitContextError::AccessDenied)?;
            let doc = parse_json("doc", &doc)?;
            svc.write(&me, &id, Change::Put(doc), base_version)
                .await
                .map(write_result)
                .map_err(context_error)
        }
        .await;
        self.finish_context("context.put", &id, bytes, start, &r);
        r
    }

    async fn patch(
        &mut self,
        id: String,
        merge_patch: String,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = merge_patch.len();
        let r = async {
            let (svc, me) = context_call(&shared, "context.patch").await?;
            shared
                .gate("context", &id, "patch")
                .map_err(WitContextError::AccessDenied)?;
            let patch = parse_json("merge-patch", &merge_patch)?;
            svc.write(&me, &id, Change::Merge(patch), base_version)
                .await
                .map(write_result)
                .map_err(context_error)
        }
        .await;
        self.finish_context("context.patch", &id, bytes, start, &r);
        r
    }

    async fn delete(&mut self, id: String) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.delete").await?;
            shared
                .gate("context", &id, "delete")
                .map_err(WitContextError::AccessDenied)?;
            svc.delete(&me, &id)
                .await
                .map(|_| ())
                .map_err(context_error)
        }
        .await;
        self.finish_context("context.delete", &id, id.len(), start, &r);
        r
    }

    async fn share(
        &mut self,
        id: String,
        agents: Vec<String>,
        permissions: Vec<qi::agent::context::Permission>,
        expires_in_ms: Option<u64>,
    ) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.share").await?;
            shared
                .gate("context", &id, "share")
                .map_err(WitContextError::AccessDenied)?;
            let perms: Vec<Permission> = permissions
                .into_iter()
                .map(|p| match p {
                    qi::agent::context::Permission::Read => Permission::Read,
                    qi::agent::context::Permission::Write => Permission::Write,
                    qi::agent::context::Permission::Share => Permission::Share,
                    qi::agent::context::Permission::Delete => Permission::Delete,
                })
                .collect();
            let expires = expires_in_ms.map(|ms| svc.now_ms().saturating_add(ms));
            svc.share(&me, &id, &agents, &perms, expires)
                .await
                .map(|_| ())
                .map_err(context_error)?;
            shared.audit(
                &format!("context/{id}"),
                "share",
                format!("shared with {}", agents.join(", ")),
                serde_json::json!({"agents": agents, "permissions": perms, "expiresAt": expires}),
            );
            Ok(())
        }
        .await;
        self.finish_context("context.share", &id, id.len(), start, &r);
        r
    }

    async fn revoke(&mut self, id: String, agents: Vec<String>) -> Result<(), WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "context.revoke").await?;
            shared
                .gate("context", &id, "revoke")
                .map_err(WitContextError::AccessDenied)?;
            svc.revoke(&me, &id, &agents).await.map_err(context_error)?;
            shared.audit(
                &format!("context/{id}"),
                "revoke",
                format!("revoked from {}", agents.join(", ")),
                serde_json::json!({"agents": agents}),
            );
            Ok(())
        }
        .await;
        self.finish_context("context.revoke", &id, id.len(), start, &r);
        r
    }

    async fn ids(&mut self, context_type: Option<String>) -> Vec<String> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = match context_call(&shared, "context.ids").await.and_then(|x| {
            shared
                .gate("context", "*", "ids")
                .map_err(WitContextError::AccessDenied)
                .map(|()| x)
        }) {
            Ok((svc, me)) => Ok(svc
                .list(&me, context_type.as_deref(), None)
                .into_iter()
                .map(|v| v.id)
                .collect()),
            Err(e) => Err(e),
        };
        self.finish_context("context.ids", "", 0, start, &r);
        r.unwrap_or_default()
    }
}

fn event_error(e: EventError) -> WitEventError {
    match e {
        EventError::HistoryCompacted { oldest, .. } => WitEventError::HistoryCompacted(oldest),
        other => WitEventError::Failed(other.to_string()),
    }
}

fn event_call_error(e: WitContextError) -> WitEventError {
    match e {
        WitContextError::AccessDenied(m) => WitEventError::AccessDenied(m),
        WitContextError::Invalid(m)
        | WitContextError::NotFound(m)
        | WitContextError::Refused(m) => WitEventError::Invalid(m),
        WitContextError::Stale(v) => WitEventError::Invalid(format!("stale version {v}")),
        WitContextError::Failed(m) => WitEventError::Failed(m),
    }
}

fn context_event_error(e: ContextError) -> WitEventError {
    match e {
        ContextError::Events(ev) => event_error(ev),
        other => event_call_error(context_error(other)),
    }
}

impl qi::agent::events::Host for AgentState {
    async fn subscribe(
        &mut self,
        context_ids: Vec<String>,
        event_types: Vec<String>,
        after_seq: Option<u64>,
    ) -> Result<u64, WitEventError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "events.subscribe").await.map_err(event_call_error)?;
            for id in &context_ids {
                shared.gate("events", id, "subscribe").map_err(WitEventError::AccessDenied)?;
            }
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_AGENT {
                return Err(WitEventError::Invalid(format!("an agent may hold at most {MAX_SUBSCRIPTIONS_PER_AGENT} subscriptions; unsubscribe first")));
            }
            let mut types = Vec::new();
            for t in &event_types {
                types.push(t.parse::<EventType>().map_err(|e| WitEventError::Invalid(e.to_string()))?);
            }
            let from = after_seq.map_or(SubscribeFrom::Now, SubscribeFrom::AfterSeq);
            let sub = svc.subscribe_to(&me, &context_ids, types, from).await.map_err(context_event_error)?;
            let handle = sub.id().0;
            self.subscriptions.insert(handle, sub);
            Ok(handle)
        }
        .await;
        self.shared.record_call(
            "events.subscribe",
            "",
            0,
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }

    async fn next(
        &mut self,
        subscription: u64,
        timeout_ms: u32,
    ) -> Result<Option<WitEvent>, WitEventError> {
        self.shared
            .counters
            .host_calls
            .fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        let sub = self
            .subscriptions
            .get_mut(&subscription)
            .ok_or(WitEventError::UnknownSubscription(subscription))?;
        let wait = std::time::Duration::from_millis(u64::from(timeout_ms.min(MAX_NEXT_TIMEOUT_MS)));
        let r = match sub.next_timeout(wait).await {
            // Access is checked on every delivery: a revoked or expired share ends the
            // subscription at once.
            Ok(Some(e))
                if e.context_id.as_deref().is_some_and(|c| {
                    self.shared.context.as_ref().is_none_or(|svc| {
                        svc.allowed(&self.shared.id, c, Permission::Read).is_err()
                    })
                }) =>
            {
                self.subscriptions.remove(&subscription);
                if let Some(svc) = &self.shared.context {
                    let _ = svc
                        .unsubscribe(&self.shared.id, crate::events::SubscriptionId(subscription))
                        .await;
                }
                Err(WitEventError::AccessDenied(format!(
                    "subscription {subscription} ended: the agent may no longer read context `{}`",
                    e.context_id.unwrap_or_default()
                )))
            }
            Ok(Some(e)) => Ok(Some(WitEvent {
                seq: e.seq,
                event_type: e.event_type.as_str().to_string(),
                context_id: e.context_id,
                agent_id: e.agent_id,
                timestamp_ms: e.timestamp_ms,
                priority: e.priority,
                data: e.data.to_string(),
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                self.subscriptions.remove(&subscription);
                Err(event_error(e))
            }
        };
        self.shared.record_call(
            "events.next",
            "",
            0,
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }

    async fn unsubscribe(&mut self, subscription: u64) {
        self.shared
            .counters
            .host_calls
            .fetch_add(1, Ordering::Relaxed);
        if self.subscriptions.remove(&subscription).is_some()
            && let Some(svc) = &self.shared.context
            && let Err(e) = svc
                .unsubscribe(&self.shared.id, crate::events::SubscriptionId(subscription))
                .await
        {
            tracing::warn!(agent = %self.shared.id, error = %e, "unsubscribing");
        }
        self.shared
            .record_call("events.unsubscribe", "", 0, Instant::now(), "ok");
    }

    async fn publish(
        &mut self,
        context_id: String,
        priority: u8,
        data: String,
    ) -> Result<u64, WitEventError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "events.publish")
                .await
                .map_err(event_call_error)?;
            shared
                .gate("events", &context_id, "publish")
                .map_err(WitEventError::AccessDenied)?;
            if data.len() > MAX_TOOL_INPUT_BYTES {
                return Err(WitEventError::Invalid(format!(
                    "data is {} bytes; the limit is {MAX_TOOL_INPUT_BYTES}",
                    data.len()
                )));
            }
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| WitEventError::Invalid(format!("data is not JSON: {e}")))?;
            svc.authorize(&me, &context_id, Permission::Write, "publish events about")
                .await
                .map_err(context_event_error)?;
            let e = svc
                .bus()
                .publish(
                    NewEvent::new(EventType::Custom)
                        .context(&context_id)
                        .agent(&me)
                        .priority(priority)
                        .data(data),
                )
                .await
                .map_err(event_error)?;
            Ok(e.seq)
        }
        .await;
        self.shared.record_call(
            "events.publish",
            &context_id,
            data.len(),
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }
}

// ---- sync ----------------------------------------------------------------------------------

use crate::coord::sync::{MAX_SYNC_PAYLOAD_BYTES, SyncFailure, SyncPointType};
use qi::agent::sync::{SyncError as WitSyncError, SyncOutcome as WitSyncOutcome};

fn sync_outcome(o: Arc<crate::coord::sync::SyncOutcome>) -> WitSyncOutcome {
    WitSyncOutcome {
        point: o.point.clone(),
        complete: o.complete,
        timed_out: o.timed_out,
        arrived: o.arrived.clone(),
        absent: o.absent.clone(),
        result: o.result.to_string(),
    }
}

fn sync_error(e: SyncFailure) -> WitSyncError {
    match e {
        SyncFailure::UnknownPoint(p) => WitSyncError::UnknownPoint(p),
        SyncFailure::Invalid(m) => WitSyncError::Invalid(m),
        SyncFailure::Failed(m) => WitSyncError::Failed(m),
        SyncFailure::InvalidPayload(m) => WitSyncError::InvalidPayload(m),
    }
}

fn sync_payload(call: &str, text: &str) -> Result<serde_json::Value, WitSyncError> {
    if text.len() > MAX_SYNC_PAYLOAD_BYTES {
        return Err(WitSyncError::InvalidPayload(format!(
            "{call}: payload is {} bytes; the limit is {MAX_SYNC_PAYLOAD_BYTES}",
            text.len()
        )));
    }
    serde_json::from_str(text)
        .map_err(|e| WitSyncError::InvalidPayload(format!("{call}: payload is not JSON: {e}")))
}

impl AgentState {
    /// One sync call: counted, recorded when monitored, refused outside a coordinated run.
    async fn sync_call(
        &mut self,
        call: SyncPointType,
        point: String,
        payload: Result<serde_json::Value, WitSyncError>,
        arg_bytes: usize,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let r = async {
            let handle = shared.sync.clone().ok_or(WitSyncError::NotCoordinated)?;
            let action = call.wit_call().trim_start_matches("sync.");
            shared
                .gate("sync", &point, action)
                .map_err(WitSyncError::AccessDenied)?;
            let payload = payload?;
            handle.waiting.store(true, Ordering::Relaxed);
            let r = handle
                .engine
                .arrive(&point, &handle.participant, call, payload)
                .await;
            handle.waiting.store(false, Ordering::Relaxed);
            r.map(sync_outcome).map_err(sync_error)
        }
        .await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(WitSyncError::NotCoordinated) => "not-coordinated",
            Err(WitSyncError::UnknownPoint(_)) => "unknown-point",
            Err(WitSyncError::Invalid(_)) => "invalid",
            Err(WitSyncError::Failed(_)) => "failed",
            Err(WitSyncError::InvalidPayload(_)) => "invalid-payload",
            Err(WitSyncError::AccessDenied(_)) => "access-denied",
        };
        shared.record_call(call.wit_call(), &point, arg_bytes, start, outcome);
        r
    }
}

impl qi::agent::sync::Host for AgentState {
    async fn barrier(&mut self, point: String) -> Result<WitSyncOutcome, WitSyncError> {
        self.sync_call(
            SyncPointType::Barrier,
            point,
            Ok(serde_json::Value::Null),
            0,
        )
        .await
    }

    async fn checkpoint(
        &mut self,
        point: String,
        state: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = sync_payload("sync.checkpoint", &state);
        self.sync_call(SyncPointType::Checkpoint, point, payload, state.len())
            .await
    }

    async fn restore(&mut self, point: String) -> Result<Option<String>, WitSyncError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.counters.host_calls.fetch_add(1, Ordering::Relaxed);
        let r = async {
            let handle = shared.sync.clone().ok_or(WitSyncError::NotCoordinated)?;
            shared
                .gate("sync", &point, "restore")
                .map_err(WitSyncError::AccessDenied)?;
            handle
                .engine
                .restore(&point, &handle.participant)
                .await
                .map(|v| v.map(|v| v.to_string()))
                .map_err(sync_error)
        }
        .await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        shared.record_call("sync.restore", &point, 0, start, outcome);
        r
    }

    async fn vote(
        &mut self,
        point: String,
        choice: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = if choice.is_empty() || choice.len() > 200 {
            Err(WitSyncError::InvalidPayload(
                "sync.vote: a choice is 1 to 200 bytes, e.g. `approve`".into(),
            ))
        } else {
            Ok(serde_json::Value::String(choice.clone()))
        };
        self.sync_call(SyncPointType::Decision, point, payload, choice.len())
            .await
    }

    async fn contribute(
        &mut self,
        point: String,
        value: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = sync_payload("sync.contribute", &value);
        self.sync_call(SyncPointType::Aggregation, point, payload, value.len())
            .await
    }
}
