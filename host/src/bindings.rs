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
                    level: format!("{level:?}").to_lowercase(),
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
