//! `qi:agent/budget`: what the agent has left of each budget.

use super::AgentState;
use super::Remaining;
use crate::error::LimitKind;
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

/// Adds `qi:agent/budget` to `linker`. `budget.get` needs the Store itself (to read fuel), so it
/// is wrapped by hand rather than through the generated `Host` trait.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    linker.instance("qi:agent/budget@0.1.0")?.func_wrap(
        "get",
        |store: StoreContextMut<'_, AgentState>, (): ()| {
            let fuel = store.get_fuel()?;
            let state = store.data();
            let shared = &state.shared;
            shared.count_host_call();
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
    Ok(())
}
