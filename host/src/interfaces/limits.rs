//! The size limits of every `qi:agent` host-call argument, in one table.
//!
//! Each limit protects the host against guest-controlled resource exhaustion: a guest that
//! passes a huge document, list or string would otherwise make the host parse, copy, store,
//! log or fan it out. Every interface checks its arguments against this table *before* it
//! parses or copies them further; a refusal is the interface's own error value (`invalid`,
//! `invalid-input`, `invalid-payload`) naming the argument, its size and the limit, so the guest
//! can handle it. Refusals are also recorded as the agent's [`LimitKind::ArgumentSize`]
//! violation, so an agent that gives up afterwards ends with that precise error.
//!
//! What "before it is copied" means: wasmtime lifts a `string` or `list` argument out of guest
//! memory into host memory before the host function runs. That first copy is already bounded
//! twice: the argument lives in guest memory, which `resourceLimits.maxMemoryMB` bounds, and the
//! Store's hostcall fuel ([`MAX_HOST_CALL_TRANSFER_BYTES`], see
//! `wasmtime::Store::set_hostcall_fuel`) refuses any single guest-to-host transfer larger than
//! that before copying a byte. The limits below stop every further copy: JSON parsing, storing,
//! auditing, fan-out to tools and other agents.
//!
//! [`LimitKind::ArgumentSize`]: crate::error::LimitKind::ArgumentSize

use crate::error::LimitKind;
use crate::sandbox::AgentShared;

/// Bytes of a context document (`context.create`, `context.put`) or merge patch
/// (`context.patch`), as JSON text. Protects the parser and the store; equal to the context
/// store's default `max_document_bytes` (16 MiB), which the store checks again after merging.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Bytes of a tool's input (`tools.call`, each request of `tools.call-many`), as JSON text.
/// Protects the parser and the tool.
pub const MAX_TOOL_INPUT_BYTES: usize = 1 << 20;
/// Bytes of a tool's output handed back to the guest. Protects guest and host from a tool that
/// answers with more than an agent can use.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 8 << 20;
/// Requests in one `tools.call-many` batch. Each request spawns a task; the batch is also bounded
/// by `resourceLimits.maxConcurrentOperations`. A longer batch gets a single `invalid-input`
/// result (not one per request, so the refusal costs no memory in proportion to the batch).
pub const MAX_CALL_MANY_REQUESTS: usize = 64;
/// Bytes of all the inputs of one `tools.call-many` batch together. Every input is parsed
/// into a JSON value (several times the text's size in host memory) and the parsed inputs of a
/// batch are alive at once.
pub const MAX_CALL_MANY_INPUT_BYTES: usize = 4 << 20;
/// Bytes of all the outputs of one `tools.call-many` batch together. The outputs are held in
/// the host until the whole batch is handed back; an output past this budget is replaced by a
/// `limit-exceeded` error for that request (the others are kept).
pub const MAX_CALL_MANY_OUTPUT_BYTES: usize = 4 * MAX_TOOL_OUTPUT_BYTES;
/// Agents named in one `context.share` or `context.revoke`. Each becomes a stored share row and
/// an audit entry.
pub const MAX_SHARE_AGENTS: usize = 256;
/// Permissions in one `context.share` (there are four; repeats are pointless).
pub const MAX_SHARE_PERMISSIONS: usize = 8;
/// Context ids in one `events.subscribe`. Each is checked by the access gate on every delivery.
pub const MAX_SUBSCRIBE_CONTEXTS: usize = 256;
/// Context ids in one `context.prefetch`. Each is read (and may be recorded as an `accessed`
/// event) and held in the agent's cache.
pub const MAX_PREFETCH_CONTEXTS: usize = 256;
/// Event types in one `events.subscribe` (there are about a dozen).
pub const MAX_SUBSCRIBE_TYPES: usize = 32;
/// Bytes of a custom event's data (`events.publish`), as JSON text. Every subscriber receives a
/// copy, and the bus keeps it in its history.
pub const MAX_EVENT_DATA_BYTES: usize = 1 << 20;
/// Bytes of a sync payload (`sync.checkpoint` state, `sync.contribute` value), as JSON text.
/// Checkpoints are stored durably and handed to every participant.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = crate::coord::sync::MAX_SYNC_PAYLOAD_BYTES;
/// Bytes of a `sync.vote` choice (a short word such as `approve`).
pub const MAX_VOTE_BYTES: usize = 200;
/// Bytes of an id or name argument: context ids and types, agent ids, tool names, sync point
/// ids, event types. They end up in keys, audit entries and messages.
pub const MAX_ID_BYTES: usize = 1 << 10;
/// Bytes of a log message kept; longer messages are truncated in place (logging never fails).
pub const MAX_LOG_MESSAGE_BYTES: usize = 4 << 10;
/// Fields kept per log record; further fields are dropped.
pub const MAX_LOG_FIELDS: usize = 32;
/// Bytes of a log field's key kept; longer keys are truncated.
pub const MAX_LOG_KEY_BYTES: usize = 256;
/// Bytes of a log field's value kept; longer values are truncated.
pub const MAX_LOG_VALUE_BYTES: usize = 1 << 10;

/// Bytes every log record costs against `configurationOverrides.maxLogBytes` besides its
/// message and fields (each field `k=v` costs its key, its value and 2). Without it, records
/// with an empty message would be free, and a guest logging them in a loop would write the
/// host's log without bound.
pub const LOG_RECORD_OVERHEAD_BYTES: usize = 64;

/// Bytes one agent may write to the shared context store and event bus over its life:
/// documents (`context.create`, `context.put`), merge patches (`context.patch`), event data
/// (`events.publish`), sync payloads (`sync.checkpoint`, `sync.contribute`) and the agent ids
/// of `context.share`; reads (`context.get`, recorded as `accessed` events), deletions,
/// revocations and subscriptions cost a row each. Each argument above is bounded on its own, but nothing else bounds how
/// many calls an agent makes, and what they store outlives the agent (the context store keeps
/// every version and holds the latest in memory; the bus keeps a live buffer of 4,096 events
/// and a million in the store). A write past the bound is refused before it is parsed, with
/// the interface's own error, and the agent ends with [`LimitKind::StoredBytes`]; refused
/// writes are not counted. The receipt reports `stored_bytes`. Each write also costs
/// [`STORED_WRITE_OVERHEAD_BYTES`] (each shared agent id too), so that empty ones are not free.
pub const MAX_STORED_BYTES_PER_AGENT: u64 = 64 << 20;
/// What each stored row costs against [`MAX_STORED_BYTES_PER_AGENT`] besides its bytes: a
/// context version, an event, a sync payload, a share. About what the store spends on a row
/// (keys, metadata, the event it announces); it bounds the rows one agent can add to 262,144,
/// so that an agent publishing empty events cannot push every other agent's events out of the
/// bus's retention of a million.
pub const STORED_WRITE_OVERHEAD_BYTES: usize = 256;

/// Bytes of a component's `describe()` answer: its name, version, description and
/// capabilities together. The answer is kept for the agent's life, reported, audited at spawn
/// and quoted in spawn errors. While `describe` runs, the Store's hostcall fuel is twice this,
/// so a far longer answer (and any host call made from inside `describe` with more than that
/// in its arguments) is refused before wasmtime copies it.
pub const MAX_DESCRIBE_BYTES: usize = 64 << 10;

/// Bytes of an agent's failure (its error message, its panic message) written to the audit log
/// and the host's log when it ends; the report keeps it whole. An agent error may be as long
/// as `maxOutputBytes` (up to 64 MiB), which has no place in every audit entry.
pub const MAX_AUDITED_FAILURE_BYTES: usize = 4 << 10;

/// Audit entries one agent's own actions may add (defined beside the agent it bounds).
pub use crate::sandbox::state::MAX_AUDIT_ENTRIES_PER_AGENT;

/// Bytes one guest-to-host transfer may carry (the Store's hostcall fuel): the sum of one host
/// call's `string` and `list` arguments. Larger transfers are refused by wasmtime before
/// anything is copied, and the agent ends with [`LimitKind::ArgumentSize`]. The largest
/// argument (a document) plus room for the call's other arguments; raised to the agent's
/// `maxOutputBytes` when that is larger, so that an output within its limit can be copied (an
/// output over its limit is never copied: see `interfaces::output`).
pub const MAX_HOST_CALL_TRANSFER_BYTES: usize = MAX_DOCUMENT_BYTES + (1 << 20);

/// A refused argument: the message the interface returns in its own error value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentRefusal(pub String);

impl ArgumentRefusal {
    /// The message.
    pub fn into_message(self) -> String {
        self.0
    }
}

/// Checks one argument of `call` against its limit. `size` is in bytes for strings and in
/// elements for lists (`unit` says which). On refusal the agent's first violation becomes
/// [`LimitKind::ArgumentSize`] and the message names the argument, its size, the limit and what
/// to do.
pub fn check(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    size: usize,
    limit: usize,
    unit: &str,
) -> Result<(), ArgumentRefusal> {
    if size <= limit {
        return Ok(());
    }
    let detail = format!(
        "{call}: `{argument}` is {size} {unit}; the limit is {limit} {unit}; split it or send less"
    );
    shared.record_violation(LimitKind::ArgumentSize, limit as u64, detail.clone());
    Err(ArgumentRefusal(detail))
}

/// Takes what `rows` stored rows holding `size` bytes of `argument` of `call` cost
/// (`size + rows × STORED_WRITE_OVERHEAD_BYTES`) from the agent's
/// [`MAX_STORED_BYTES_PER_AGENT`]. On refusal the agent's first violation becomes
/// [`LimitKind::StoredBytes`] and nothing is taken.
pub fn stored(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    size: usize,
    rows: usize,
) -> Result<(), ArgumentRefusal> {
    use std::sync::atomic::Ordering;
    let counter = &shared.counters.stored_bytes;
    let cost = (size as u64)
        .saturating_add((rows as u64).saturating_mul(STORED_WRITE_OVERHEAD_BYTES as u64));
    let mut used = counter.load(Ordering::Relaxed);
    loop {
        let total = used.saturating_add(cost);
        if total > MAX_STORED_BYTES_PER_AGENT {
            let detail = format!(
                "{call}: `{argument}` of {size} bytes ({cost} with the per-row cost) refused: \
                 the agent has used {used} of the {MAX_STORED_BYTES_PER_AGENT} bytes it may \
                 store in the context store and event bus"
            );
            shared.record_violation(
                LimitKind::StoredBytes,
                MAX_STORED_BYTES_PER_AGENT,
                detail.clone(),
            );
            return Err(ArgumentRefusal(detail));
        }
        match counter.compare_exchange_weak(used, total, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(()),
            Err(now) => used = now,
        }
    }
}

/// [`check`] for a string argument (size in bytes).
pub fn bytes(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    value: &str,
    limit: usize,
) -> Result<(), ArgumentRefusal> {
    check(shared, call, argument, value.len(), limit, "bytes")
}

/// [`check`] for a list argument (size in elements).
pub fn items<T>(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    list: &[T],
    limit: usize,
) -> Result<(), ArgumentRefusal> {
    check(shared, call, argument, list.len(), limit, "items")
}

/// [`bytes`] against [`MAX_ID_BYTES`] for each of `ids`.
pub fn ids<'a>(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> Result<(), ArgumentRefusal> {
    ids.into_iter()
        .try_for_each(|id| bytes(shared, call, argument, id, MAX_ID_BYTES))
}
