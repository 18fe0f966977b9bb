//! The `run` export's result, lifted so that an oversized output, or an oversized message in
//! the agent's error, is never copied into the host.
//!
//! wasmtime runs an export's post-return (where the guest frees the strings it returned) before
//! `call_async` returns, so a lazily lifted [`WasmStr`] would be read from freed guest memory.
//! Instead the output string is lifted by [`OutputText`], which reads the string's length from
//! the canonical-ABI pointer pair and copies the bytes only when they fit the agent's
//! `maxOutputBytes`; otherwise it keeps the length alone ([`OutputText::TooLong`]). The limit
//! reaches the lift through a thread-local set around every poll of the call
//! ([`with_output_limit`]): the lift runs on wasmtime's fiber inside that poll, on the same
//! thread.
//!
//! Strings in UTF-16 or Latin-1+UTF-16 (not produced by Rust guests) are copied and checked
//! afterwards; the Store's hostcall fuel bounds that copy.

use super::Agent;
use super::qi::agent::types::Task;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmStr};
use wasmtime::{AsContextMut, Store};

thread_local! {
    /// The output limit of the agent whose call this thread is polling, if any.
    static OUTPUT_LIMIT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The agent's output text, or only its length when it is over `maxOutputBytes`.
#[derive(Debug)]
pub(crate) enum OutputText {
    /// The output, copied out of guest memory.
    Text(String),
    /// Over the limit: nothing was copied.
    TooLong {
        /// The output's length in bytes (UTF-8).
        bytes: usize,
    },
}

/// `task-output`, with the output lifted as [`OutputText`].
#[derive(Debug, wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
pub(crate) struct BoundedTaskOutput {
    /// The output.
    pub(crate) output: OutputText,
}

/// `agent-error`, with its message lifted as [`OutputText`] against the same limit as the
/// output: an error message is the agent's answer too, and it ends up in the report, the audit
/// log and the host's log.
#[derive(Debug, wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(variant)]
pub(crate) enum BoundedAgentError {
    /// `invalid-input`.
    #[component(name = "invalid-input")]
    InvalidInput(OutputText),
    /// `tool-failed`.
    #[component(name = "tool-failed")]
    ToolFailed(OutputText),
    /// `failed`.
    #[component(name = "failed")]
    Failed(OutputText),
}

impl BoundedAgentError {
    /// The error's kind (its WIT case name) and message.
    pub(crate) fn into_parts(self) -> (&'static str, OutputText) {
        match self {
            BoundedAgentError::InvalidInput(m) => ("invalid-input", m),
            BoundedAgentError::ToolFailed(m) => ("tool-failed", m),
            BoundedAgentError::Failed(m) => ("failed", m),
        }
    }
}

// SAFETY: `OutputText` is a component `string`: it has the representation, ABI and type check
// of `WasmStr`, and lifting delegates to wasmtime's own `String` lift (or does not read memory
// at all).
#[allow(unsafe_code)]
unsafe impl ComponentType for OutputText {
    type Lower = <WasmStr as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WasmStr as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: see `ComponentType` above; the pointer pair is read exactly as wasmtime reads it
// (two little-endian `u32`s), and only the length is used without wasmtime's checks.
#[allow(unsafe_code)]
unsafe impl Lift for OutputText {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let len = src[1].get_u32() as usize;
        match too_long(cx, len) {
            Some(t) => Ok(t),
            None => <String as Lift>::linear_lift_from_flat(cx, ty, src).map(OutputText::Text),
        }
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        let len = bytes
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| wasmtime::format_err!("string pointer pair out of bounds"))?
            as usize;
        match too_long(cx, len) {
            Some(t) => Ok(t),
            None => <String as Lift>::linear_lift_from_memory(cx, ty, bytes).map(OutputText::Text),
        }
    }
}

fn too_long(cx: &LiftContext<'_>, len: usize) -> Option<OutputText> {
    let limit = OUTPUT_LIMIT.get()?;
    (cx.options().string_encoding == StringEncoding::Utf8 && len > limit)
        .then_some(OutputText::TooLong { bytes: len })
}

/// Polls `call` with the output limit set for [`OutputText`]'s lift on this thread.
pub(crate) fn with_output_limit<F: Future>(
    limit: usize,
    call: F,
) -> impl Future<Output = F::Output> {
    WithOutputLimit {
        limit,
        call: Box::pin(call),
    }
}

struct WithOutputLimit<F> {
    limit: usize,
    call: Pin<Box<F>>,
}

impl<F: Future> Future for WithOutputLimit<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _restore = Restore(OUTPUT_LIMIT.replace(Some(self.limit)));
        self.call.as_mut().poll(cx)
    }
}

/// Puts back the thread's previous limit when a poll ends, also when it unwinds (a host
/// function that panicked), so that no later lift on this thread sees a stale limit.
struct Restore(Option<usize>);

impl Drop for Restore {
    fn drop(&mut self) {
        OUTPUT_LIMIT.set(self.0);
    }
}

/// Calls `run` on `instance` with the output lifted as [`OutputText`] against `max_output`.
pub(crate) async fn call_run<T: Send + 'static>(
    instance: &Agent,
    store: &mut Store<T>,
    task: &Task,
    max_output: usize,
) -> wasmtime::Result<Result<BoundedTaskOutput, BoundedAgentError>> {
    let func = *instance.func_run().func();
    // Tests (debug builds) still check the signature on every run.
    debug_assert!(
        func.typed::<(&Task,), (Result<BoundedTaskOutput, BoundedAgentError>,)>(&*store)
            .is_ok(),
        "the run export's type no longer matches BoundedTaskOutput / BoundedAgentError"
    );
    // SAFETY: `func_run()` is the bindgen-typed `run` export, whose type `AgentPre` checked
    // against the WIT when the component was loaded: `func(task) -> result<task-output,
    // agent-error>`. `BoundedTaskOutput` and `BoundedAgentError` mirror `task-output` and
    // `agent-error` field for field and case for case, with `OutputText` in place of each
    // `string` (the same ABI and type check as `WasmStr`), so the signature is the one already
    // checked. Checking it again on every run cost about a microsecond of the spawn-to-result
    // path (`cargo bench --bench runtime -- spawn`).
    #[allow(unsafe_code)]
    let run = unsafe {
        wasmtime::component::TypedFunc::<
            (&Task,),
            (Result<BoundedTaskOutput, BoundedAgentError>,),
        >::new_unchecked(func)
    };
    let call = run.call_async(store.as_context_mut(), (task,));
    let (result,) = with_output_limit(max_output, call).await?;
    Ok(result)
}
