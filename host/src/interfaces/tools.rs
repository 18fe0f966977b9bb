//! `qi:agent/tools`: tool calls, alone or in a batch, through the agent's grants and budgets.

use super::AgentState;
use super::limits::{self, MAX_CALL_MANY_REQUESTS};
pub use super::limits::{MAX_TOOL_INPUT_BYTES, MAX_TOOL_OUTPUT_BYTES};
use super::qi;
use super::{ToolError, ToolRequest};
use crate::error::LimitKind;
use crate::sandbox::AgentShared;
use crate::tools::{ToolContext, ToolFailure};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/tools` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::tools::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
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

/// Checks the arguments, budgets and access for one tool call and returns a future that runs
/// it. The call is counted against `maxToolCalls` before access is decided, so a refused call
/// costs budget like any other (a guest cannot probe for free).
fn prepare_call(
    shared: &Arc<AgentShared>,
    name: &str,
    input: &str,
) -> Result<crate::tools::ToolFuture, ToolError> {
    shared
        .take_budget(LimitKind::ToolCalls)
        .map_err(ToolError::LimitExceeded)?;
    let call = "tools.call";
    limits::bytes(shared, call, "name", name, limits::MAX_ID_BYTES)
        .and_then(|()| limits::bytes(shared, call, "input", input, MAX_TOOL_INPUT_BYTES))
        .map_err(|r| ToolError::InvalidInput(r.into_message()))?;
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
        return Err(ToolError::AccessDenied(shared.refuse(
            "tool",
            name,
            "call",
            &format!("tool `{name}` is {why}"),
        )));
    }
    let tool = shared
        .tools
        .get(name)
        .ok_or_else(|| ToolError::NotFound(format!("no tool named `{name}` is registered")))?;
    if tool.is_file_operation() {
        shared
            .take_budget(LimitKind::FileOperations)
            .map_err(ToolError::LimitExceeded)?;
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
        quota: Some(shared.clone()),
        files: Some(shared.clone()),
    };
    Ok(tool.call(ctx, value))
}

/// A `Vec` that refuses to grow past `max` bytes, so that a tool's output is never rendered
/// further than the limit (JSON escapes can make the text six times the value's strings).
struct Bounded {
    text: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.max {
            return Err(std::io::Error::other("over the limit"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` as JSON text if it is at most `max` bytes; it is never rendered further.
fn render_bounded(value: &serde_json::Value, max: usize) -> Option<String> {
    let mut out = Bounded {
        text: Vec::new(),
        max,
    };
    serde_json::to_writer(&mut out, value).ok()?;
    // serde_json writes valid UTF-8.
    String::from_utf8(out.text).ok()
}

/// What is left of a `call-many` batch's output budget
/// ([`MAX_CALL_MANY_OUTPUT_BYTES`](limits::MAX_CALL_MANY_OUTPUT_BYTES)).
type OutputBudget = Arc<std::sync::atomic::AtomicUsize>;

async fn finish_call(
    fut: crate::tools::ToolFuture,
    batch: Option<&OutputBudget>,
) -> Result<String, ToolError> {
    match fut.await {
        Ok(value) => {
            let text = render_bounded(&value, MAX_TOOL_OUTPUT_BYTES).ok_or_else(|| {
                ToolError::Failed(format!(
                    "tool output is more than {MAX_TOOL_OUTPUT_BYTES} bytes; the limit is \
                     {MAX_TOOL_OUTPUT_BYTES}"
                ))
            })?;
            if let Some(left) = batch {
                let len = text.len();
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(len))
                    .map_err(|_| {
                        ToolError::LimitExceeded(format!(
                            "this output of {len} bytes would take the call-many batch's \
                             outputs past {} bytes in all; call it on its own",
                            limits::MAX_CALL_MANY_OUTPUT_BYTES
                        ))
                    })?;
            }
            Ok(text)
        }
        Err(ToolFailure::InvalidInput(m)) => Err(ToolError::InvalidInput(m)),
        Err(ToolFailure::AccessDenied(m)) => Err(ToolError::AccessDenied(m)),
        Err(ToolFailure::LimitExceeded(m)) => Err(ToolError::LimitExceeded(m)),
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
        shared.count_host_call();
        let start = Instant::now();
        let result = match shared.operations.get().clone().try_acquire_owned() {
            Err(_) => Err(concurrency_refusal(&shared, 1)),
            Ok(_permit) => match prepare_call(&shared, &name, &input) {
                Ok(fut) => finish_call(fut, None).await,
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
        shared.count_host_call();
        let start = Instant::now();
        let arg_bytes: usize = requests.iter().map(|r| r.name.len() + r.input.len()).sum();
        let n = requests.len();
        if let Err(r) = limits::items(
            &shared,
            "tools.call-many",
            "requests",
            &requests,
            MAX_CALL_MANY_REQUESTS,
        ) {
            shared.record_call("tools.call-many", "", arg_bytes, start, "invalid-input");
            // One result, not one per request: the refusal must not cost the host memory in
            // proportion to the batch it refuses.
            return vec![Err(ToolError::InvalidInput(r.into_message()))];
        }
        let input_bytes = requests.iter().map(|r| r.input.len()).sum();
        if let Err(r) = limits::check(
            &shared,
            "tools.call-many",
            "requests[*].input",
            input_bytes,
            limits::MAX_CALL_MANY_INPUT_BYTES,
            "bytes in all",
        ) {
            shared.record_call("tools.call-many", "", arg_bytes, start, "invalid-input");
            return vec![Err(ToolError::InvalidInput(r.into_message()))];
        }
        let budget: OutputBudget = Arc::new(limits::MAX_CALL_MANY_OUTPUT_BYTES.into());
        let permits = match u32::try_from(n).ok().and_then(|n| {
            shared
                .operations
                .get()
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
                    let budget = budget.clone();
                    set.spawn(async move { (i, finish_call(fut, Some(&budget)).await) });
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
        shared.count_host_call();
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

#[cfg(test)]
mod tests {
    use super::render_bounded;
    use serde_json::json;

    #[test]
    fn output_is_rendered_up_to_the_limit_and_never_past_it() {
        // Ten NULs escape to `\u0000` each: 60 bytes, plus the quotes.
        let value = json!("\u{0}".repeat(10));
        assert_eq!(render_bounded(&value, 62).map(|t| t.len()), Some(62));
        assert_eq!(render_bounded(&value, 61), None);
    }
}
