//! How an agent's run ended when the guest did not return: every error a guest can cause is
//! the agent's own failure (BUSINESS or RESOURCE), never a host (SYSTEM) error.

use crate::engine::error_chain;
use crate::error::{AgentFailure, LimitKind};
use crate::sandbox::AgentShared;
use wasmtime::Trap;

fn violation(shared: &AgentShared) -> Option<AgentFailure> {
    shared
        .violation
        .lock()
        .expect("violation lock poisoned")
        .clone()
}

/// The Store's hostcall fuel: the most bytes one guest-to-host transfer may carry. Covers the
/// largest host-call argument and an output at the agent's own output limit.
pub(super) fn hostcall_fuel(shared: &AgentShared) -> usize {
    let output = usize::try_from(shared.overrides.max_output_bytes).unwrap_or(usize::MAX);
    crate::interfaces::limits::MAX_HOST_CALL_TRANSFER_BYTES.max(output)
}

/// The Store's hostcall fuel while `describe` runs: see
/// [`MAX_DESCRIBE_BYTES`](crate::interfaces::limits::MAX_DESCRIBE_BYTES).
pub(super) const DESCRIBE_TRANSFER_BYTES: usize = 2 * crate::interfaces::limits::MAX_DESCRIBE_BYTES;

/// Records and returns the refusal of a `describe()` answer of `bytes` bytes (`None`: too
/// long to be copied at all).
pub(super) fn describe_too_long(shared: &AgentShared, bytes: Option<usize>) -> AgentFailure {
    use crate::interfaces::limits::MAX_DESCRIBE_BYTES as MAX;
    let detail = match bytes {
        Some(n) => format!(
            "describe() answered {n} bytes (name, version, description and capabilities); \
             at most {MAX} are accepted"
        ),
        None => format!(
            "describe() answered more than {DESCRIBE_TRANSFER_BYTES} bytes, or called the host \
             with that much while describing itself; refused before it was copied (at most \
             {MAX} are accepted)"
        ),
    };
    limit_failure(shared, LimitKind::ArgumentSize, MAX as u64, detail)
}

/// `failure` as written to the audit log and the host's log: at most
/// [`MAX_AUDITED_FAILURE_BYTES`](crate::interfaces::limits::MAX_AUDITED_FAILURE_BYTES) of it,
/// then how long it was.
pub(super) fn summary(failure: &AgentFailure) -> String {
    use crate::interfaces::limits::MAX_AUDITED_FAILURE_BYTES as MAX;
    let mut text = failure.to_string();
    if text.len() > MAX {
        let len = text.len();
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(&format!("… ({len} bytes in all)"));
    }
    text
}

/// The first error of type `E` in `e`'s chain (a WASI host function may wrap it).
fn in_chain<E: std::error::Error + Send + Sync + 'static>(e: &wasmtime::Error) -> Option<&E> {
    e.downcast_ref::<E>()
        .or_else(|| e.chain().find_map(|c| c.downcast_ref::<E>()))
}

/// wasmtime's refusal when a transfer is larger than the hostcall fuel (its error type is
/// private, so it is recognised by its message). Only the root cause is read: the layers
/// above it include the guest's backtrace, whose function names the guest chose.
pub(super) fn is_transfer_refusal(e: &wasmtime::Error) -> bool {
    e.root_cause()
        .to_string()
        .contains("fuel allocated for hostcalls has been exhausted")
}

/// Ways a guest ends a call that are not traps.
#[derive(Debug, PartialEq, Eq)]
enum GuestEnd {
    /// `wasi:cli/exit` with this status.
    Exit(i32),
    /// The Store's handle table refused another handle.
    TableFull,
    /// wasmtime refused to lift a transfer larger than the hostcall fuel.
    TransferRefused,
}

/// Finds a [`GuestEnd`] anywhere in `e`'s chain.
fn guest_end(e: &wasmtime::Error) -> Option<GuestEnd> {
    if let Some(exit) = in_chain::<wasmtime_wasi::I32Exit>(e) {
        return Some(GuestEnd::Exit(exit.0));
    }
    if let Some(wasmtime::component::ResourceTableError::Full) =
        in_chain::<wasmtime::component::ResourceTableError>(e)
    {
        return Some(GuestEnd::TableFull);
    }
    is_transfer_refusal(e).then_some(GuestEnd::TransferRefused)
}

/// What an error out of the guest means for the agent. Everything a guest can cause is the
/// agent's failure (BUSINESS or RESOURCE): `exit(n)` is [`AgentFailure::Exited`], a full
/// handle table and oversized transfers are limits, panics and traps are the guest's own.
/// [`AgentFailure::Host`] is never the result: a guest cannot make the host fail.
pub(super) fn classify(
    e: wasmtime::Error,
    shared: &AgentShared,
    stderr: &[u8],
    stack: usize,
) -> AgentFailure {
    if let Some(v) = violation(shared) {
        return v;
    }
    match guest_end(&e) {
        Some(GuestEnd::Exit(status)) => return AgentFailure::Exited { status },
        Some(GuestEnd::TableFull) => {
            let max = shared.spec.resource_limits.max_open_handles;
            return limit_failure(
                shared,
                LimitKind::OpenHandles,
                u64::from(max),
                "the agent's handle table is full; close handles it no longer needs".into(),
            );
        }
        Some(GuestEnd::TransferRefused) => {
            let max = hostcall_fuel(shared);
            return limit_failure(
                shared,
                LimitKind::ArgumentSize,
                max as u64,
                format!(
                    "the guest passed more than {max} bytes to the host in one host call's \
                     arguments; refused before any of it was copied"
                ),
            );
        }
        None => {}
    }
    let stderr = String::from_utf8_lossy(stderr);
    if let Some(trap) = e.downcast_ref::<Trap>() {
        match trap {
            // Recorded (and so audited as a limit violation) like every other limit.
            Trap::OutOfFuel => {
                let fuel = shared.spec.fuel;
                return limit_failure(
                    shared,
                    LimitKind::Fuel,
                    fuel,
                    format!("all {fuel} units of fuel used"),
                );
            }
            Trap::StackOverflow => {
                return limit_failure(
                    shared,
                    LimitKind::Stack,
                    stack as u64,
                    format!("call stack exhausted ({stack} bytes)"),
                );
            }
            // A Rust panic aborts with `unreachable`; any other trap is not a panic, whatever
            // the guest wrote to stderr.
            Trap::UnreachableCodeReached => {
                if let Some(message) = panic_message(&stderr) {
                    return AgentFailure::Panicked { message };
                }
            }
            _ => {}
        }
        return AgentFailure::Trapped {
            message: trap.to_string(),
        };
    }
    // Not a wasm trap but raised while the guest ran: a canonical-ABI violation (bad
    // pointer, invalid UTF-8), a misused WASI resource, ... The guest caused it.
    AgentFailure::Trapped {
        message: error_chain(&e),
    }
}

/// Records and returns a limit failure found while classifying an error.
fn limit_failure(
    shared: &AgentShared,
    limit: LimitKind,
    limit_value: u64,
    detail: String,
) -> AgentFailure {
    shared.record_violation(limit, limit_value, detail.clone());
    violation(shared).unwrap_or(AgentFailure::LimitExceeded {
        limit,
        limit_value,
        detail,
    })
}

/// Pulls the panic message out of a Rust guest's stderr: the last one, since the panic that
/// aborted the guest is the last thing it wrote (anything earlier may be text the guest wrote
/// itself).
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let rest = &stderr[at + "panicked at ".len()..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_end_matches(':').to_string();
    let message: Vec<&str> = lines.take_while(|l| !l.starts_with("note: ")).collect();
    let message = message.join("\n");
    Some(if message.trim().is_empty() {
        format!("panic at {location}")
    } else {
        format!("{} (at {location})", message.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::component::ResourceTableError;

    #[test]
    fn guest_ends_are_found_under_context_layers() {
        let exit = wasmtime::Error::from(wasmtime_wasi::I32Exit(1)).context("in wasi:cli/exit");
        assert_eq!(guest_end(&exit), Some(GuestEnd::Exit(1)));
        let full = wasmtime::Error::from(ResourceTableError::Full)
            .context("pushing a descriptor")
            .context("in wasi:filesystem/types");
        assert_eq!(guest_end(&full), Some(GuestEnd::TableFull));
        let other_table_error = wasmtime::Error::from(ResourceTableError::NotPresent);
        assert_eq!(guest_end(&other_table_error), None);
        let refused = wasmtime::format_err!(
            "too much data is being copied between the host and the guest: fuel allocated \
             for hostcalls has been exhausted"
        )
        .context("lifting arguments");
        assert_eq!(guest_end(&refused), Some(GuestEnd::TransferRefused));
        assert_eq!(guest_end(&wasmtime::format_err!("anything else")), None);
        // A trap whose backtrace names a function after the refusal is still a trap.
        let spoofed = wasmtime::Error::from(Trap::UnreachableCodeReached)
            .context("0: fuel allocated for hostcalls has been exhausted");
        assert_eq!(guest_end(&spoofed), None);
    }

    #[test]
    fn a_rust_panic_message_is_read_from_stderr() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:7:5:\nboom\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("boom (at src/lib.rs:7:5)")
        );
        assert_eq!(panic_message("no panic here"), None);
    }
}
