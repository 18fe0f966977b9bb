//! The shared, versioned context store (WIT interface `context`): JSON documents that agents
//! create, read, change and share, with typed access through serde.
//!
//! The calling agent is always its host-assigned identity; every call is checked against the
//! context's owner and shares, and a refusal comes back as [`ContextError::AccessDenied`],
//! never as a trap.
//!
//! ```
//! use qi_guest_sdk::context::{self, Permission, SyncStrategy};
//! use qi_guest_sdk::serde_json::{json, Value};
//! use qi_guest_sdk::AgentError;
//!
//! # fn demo() -> Result<(), AgentError> {
//! // A counter only this agent owns, compare-and-set on every write.
//! let created = context::create(Some("counter"), "tally", &json!({"n": 0}), SyncStrategy::Strong)?;
//!
//! // Read, change, write with the read version as base; retried when another writer won.
//! context::update("counter", |doc: &mut Value| {
//!     doc["n"] = json!(doc["n"].as_u64().unwrap_or(0) + 1);
//! })?;
//!
//! // Typed reads: `Document<T>` carries the version to base the next write on.
//! let current = context::get::<Value>("counter")?;
//! context::patch("counter", &json!({"note": "hi"}), Some(current.version))?;
//!
//! // Let another agent read and write it for a minute.
//! context::share("counter", &["agent-7"], &[Permission::Read, Permission::Write], Some(60_000))?;
//! # let _ = created;
//! # Ok(())
//! # }
//! ```
//!
//! How concurrent writes meet depends on the [`SyncStrategy`] chosen at creation: `strong`
//! refuses a stale write with [`ContextError::Stale`] (use [`update`]), `eventual` merges
//! different fields and resolves the same field last-writer-wins by the writes' HLC
//! timestamps, `causal` also refuses a write based on a version older than the agent's own
//! last write and resolves as the context says (merge for contexts agents create), `manual`
//! puts the context into `conflict` status, holding every competing value, until someone
//! [`resolve`]s it. Every write but a `manual` one names the version it observed.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::str::FromStr;

pub use crate::ContextError;
use crate::wit::qi::agent::context as raw;
pub use crate::wit::qi::agent::context::{
    Permission, SharedSync, SyncStrategy, SyncSummary, WriteResult,
};

/// Most read-modify-write attempts [`update`] makes before it gives up with the last
/// [`ContextError::Stale`].
pub const MAX_UPDATE_ATTEMPTS: u32 = 32;

/// A context as read: its metadata and the document parsed as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Document<T> {
    /// Id.
    pub id: String,
    /// Owning agent.
    pub owner: String,
    /// Type, e.g. `review-notes`.
    pub context_type: String,
    /// Per-context version; base the next write on it.
    pub version: u64,
    /// Store-wide revision of the context's last change.
    pub revision: u64,
    /// `active`, `conflict` or `deleted`.
    pub status: String,
    /// The document ([`get_raw`]: its JSON text).
    pub doc: T,
}

impl<T> Document<T> {
    /// The same metadata with a different document.
    fn with_doc<U>(self, doc: U) -> Document<U> {
        Document {
            id: self.id,
            owner: self.owner,
            context_type: self.context_type,
            version: self.version,
            revision: self.revision,
            status: self.status,
            doc,
        }
    }
}

impl WriteResult {
    /// The conflicts the write caused or ran into, parsed from the JSON array the host sends
    /// (each with `conflictType`, `field`, `agentValues`, `severity`, `resolution`, ...).
    pub fn conflict_values(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.conflicts).unwrap_or_default()
    }
}

impl SyncStrategy {
    /// The name as written in inputs and the CLI: `strong`, `eventual`, `causal`, `manual`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStrategy::Strong => "strong",
            SyncStrategy::Eventual => "eventual",
            SyncStrategy::Causal => "causal",
            SyncStrategy::Manual => "manual",
        }
    }
}

impl FromStr for SyncStrategy {
    type Err = String;

    /// Parses `strong`, `eventual`, `causal` or `manual`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strong" => Ok(SyncStrategy::Strong),
            "eventual" => Ok(SyncStrategy::Eventual),
            "causal" => Ok(SyncStrategy::Causal),
            "manual" => Ok(SyncStrategy::Manual),
            other => Err(format!(
                "unknown sync strategy `{other}`; expected strong, eventual, causal or manual"
            )),
        }
    }
}

impl Permission {
    /// The name: `read`, `write`, `share`, `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Share => "share",
            Permission::Delete => "delete",
        }
    }
}

impl FromStr for Permission {
    type Err = String;

    /// Parses `read`, `write`, `share` or `delete`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Permission::Read),
            "write" => Ok(Permission::Write),
            "share" => Ok(Permission::Share),
            "delete" => Ok(Permission::Delete),
            other => Err(format!(
                "unknown permission `{other}`; expected read, write, share or delete"
            )),
        }
    }
}

fn to_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<String, ContextError> {
    serde_json::to_string(value).map_err(|error| {
        ContextError::Invalid(format!("could not serialize the {what} as JSON: {error}"))
    })
}

/// Creates a context owned by the calling agent with `doc` as its first version; `id` is
/// generated by the host when `None` (read it from the result).
///
/// # Errors
///
/// [`ContextError::Refused`] when the id is taken, [`ContextError::AccessDenied`] when the
/// agent may not create contexts (of this type), [`ContextError::Invalid`] when `doc` cannot
/// be serialized or is too large.
pub fn create<T: Serialize + ?Sized>(
    id: Option<&str>,
    context_type: &str,
    doc: &T,
    strategy: SyncStrategy,
) -> Result<WriteResult, ContextError> {
    let doc = to_json("document", doc)?;
    raw::create(id, context_type, &doc, strategy)
}

/// Reads a context with its document as JSON text (the host records an `accessed` event).
///
/// # Errors
///
/// [`ContextError::NotFound`], or [`ContextError::AccessDenied`] when the context is not
/// readable by the agent.
pub fn get_raw(id: &str) -> Result<Document<String>, ContextError> {
    let d = raw::get(id)?;
    Ok(Document {
        id: d.id,
        owner: d.owner,
        context_type: d.context_type,
        version: d.version,
        revision: d.revision,
        status: d.status,
        doc: d.doc,
    })
}

/// Reads a context and parses its document as `T` (the host records an `accessed` event).
///
/// # Errors
///
/// Everything [`get_raw`] returns, plus [`ContextError::Invalid`] when the document is not a
/// valid `T`.
pub fn get<T: DeserializeOwned>(id: &str) -> Result<Document<T>, ContextError> {
    let d = get_raw(id)?;
    let doc = serde_json::from_str(&d.doc).map_err(|error| {
        ContextError::Invalid(format!(
            "context `{id}` is not a valid `{}`: {error}",
            crate::task::short_type_name::<T>()
        ))
    })?;
    Ok(d.with_doc(doc))
}

/// Replaces the document. `base_version` is the version the new document was based on,
/// required for `strong`, `eventual` and `causal` contexts (agents that do not track
/// versions use [`update`], which reads and writes with the version it read).
///
/// # Errors
///
/// [`ContextError::Stale`] (strong: someone else wrote since `base_version`),
/// [`ContextError::Refused`] (context in conflict, schema mismatch, base version missing or
/// ahead), [`ContextError::AccessDenied`], [`ContextError::NotFound`], and
/// [`ContextError::Invalid`] when `doc` cannot be serialized.
pub fn put<T: Serialize + ?Sized>(
    id: &str,
    doc: &T,
    base_version: Option<u64>,
) -> Result<WriteResult, ContextError> {
    let doc = to_json("document", doc)?;
    raw::put(id, &doc, base_version)
}

/// Applies a JSON merge patch (RFC 7396: objects merge key by key, `null` removes a field)
/// based on `base_version` (required for `strong`, `eventual` and `causal` contexts).
///
/// # Errors
///
/// As [`put`].
pub fn patch(
    id: &str,
    merge_patch: &serde_json::Value,
    base_version: Option<u64>,
) -> Result<WriteResult, ContextError> {
    let merge_patch = to_json("merge patch", merge_patch)?;
    raw::patch(id, &merge_patch, base_version)
}

/// Read-modify-write: reads the document as `T`, applies `f`, and writes it back with the
/// read version as base. When the write is [`ContextError::Stale`] (another agent wrote in
/// between) it re-reads and calls `f` again on the fresh document, at most
/// [`MAX_UPDATE_ATTEMPTS`] times in all; `f` may therefore run more than once, so keep it
/// free of side effects other than counting.
///
/// # Errors
///
/// The last [`ContextError::Stale`] after [`MAX_UPDATE_ATTEMPTS`] attempts, or the first
/// other error of [`get`] or [`put`].
pub fn update<T, F>(id: &str, mut f: F) -> Result<WriteResult, ContextError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T),
{
    let mut last = None;
    for _ in 0..MAX_UPDATE_ATTEMPTS {
        let mut current = get::<T>(id)?;
        f(&mut current.doc);
        match put(id, &current.doc, Some(current.version)) {
            Err(error @ ContextError::Stale(_)) => last = Some(error),
            other => return other,
        }
    }
    Err(last.unwrap_or_else(|| ContextError::Failed("no update attempt was made".into())))
}

/// Deletes a context (its history is kept).
///
/// # Errors
///
/// [`ContextError::NotFound`] (also when already deleted), [`ContextError::AccessDenied`]
/// without the `delete` permission.
pub fn delete(id: &str) -> Result<(), ContextError> {
    raw::delete(id)
}

/// Shares a context with other agents (by agent id), granting `permissions`; with
/// `expires_in_ms` the share stops working that many milliseconds from now. A sharer that is
/// not the owner needs `share`, can grant only what it holds, and its grant never outlives its
/// own (the expiry is capped at it) nor asks less trust than its own requires.
///
/// # Errors
///
/// [`ContextError::AccessDenied`] (no `share` permission, granting more than held, sharing
/// with oneself, or changing a grant another agent made), [`ContextError::Invalid`] (no
/// agents or no permissions, or an unknown target agent),
/// [`ContextError::NotFound`].
pub fn share(
    id: &str,
    agents: &[&str],
    permissions: &[Permission],
    expires_in_ms: Option<u64>,
) -> Result<(), ContextError> {
    let agents: Vec<String> = agents.iter().map(|a| (*a).to_owned()).collect();
    raw::share(id, &agents, permissions, expires_in_ms)
}

/// Revokes the shares of `agents`. A sharer that is not the owner revokes only grants it made.
///
/// # Errors
///
/// [`ContextError::AccessDenied`] without the `share` permission or for a grant another agent
/// made, [`ContextError::NotFound`].
pub fn revoke(id: &str, agents: &[&str]) -> Result<(), ContextError> {
    let agents: Vec<String> = agents.iter().map(|a| (*a).to_owned()).collect();
    raw::revoke(id, &agents)
}

/// Ids of the contexts the agent can read, optionally of one type only, sorted.
pub fn ids(context_type: Option<&str>) -> Vec<String> {
    raw::ids(context_type)
}

/// One JSON Pointer operation of [`pointer_patch`] (paths are RFC 6901 pointers; `""` is the
/// whole document).
#[derive(Debug, Clone, PartialEq)]
pub enum PointerOp {
    /// Set the value at `path`, creating parent objects as needed.
    Set {
        /// JSON Pointer, e.g. `/notes/summary`.
        path: String,
        /// The value.
        value: serde_json::Value,
    },
    /// Remove the value at `path` (nothing happens when it is absent).
    Remove {
        /// JSON Pointer.
        path: String,
    },
}

impl PointerOp {
    /// `Set` of `value` at `path`.
    pub fn set(path: &str, value: serde_json::Value) -> Self {
        PointerOp::Set {
            path: path.to_owned(),
            value,
        }
    }

    /// `Remove` of `path`.
    pub fn remove(path: &str) -> Self {
        PointerOp::Remove {
            path: path.to_owned(),
        }
    }
}

/// Applies JSON Pointer operations, in order, as one write (all or nothing; at most 1,024
/// operations), based on `base_version` as for [`put`] (required for `strong`, `eventual`
/// and `causal` contexts).
///
/// # Errors
///
/// As [`put`]; [`ContextError::Invalid`] for a path that is not a JSON Pointer, more than
/// 1,024 operations, or a result over the document limit.
pub fn pointer_patch(
    id: &str,
    ops: &[PointerOp],
    base_version: Option<u64>,
) -> Result<WriteResult, ContextError> {
    let mut wire = Vec::with_capacity(ops.len());
    for op in ops {
        wire.push(match op {
            PointerOp::Set { path, value } => raw::PointerOp::Set(raw::PointerSet {
                path: path.clone(),
                value: to_json("pointer value", value)?,
            }),
            PointerOp::Remove { path } => raw::PointerOp::Remove(path.clone()),
        });
    }
    raw::pointer_patch(id, &wire, base_version)
}

/// One version of a context's history (see [`history`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// Per-context version.
    pub version: u64,
    /// Store-wide revision.
    pub revision: u64,
    /// The agent that made it (`operator` for the host).
    pub agent: String,
    /// What made it: create, put, patch, delete, rollback, resolve, merge.
    pub op: String,
    /// HLC timestamp of the commit, `<ms>-<counter>`.
    pub hlc: String,
    /// The document at this version.
    pub doc: serde_json::Value,
}

/// Versions of a context, newest first: at most `limit` (1-64), and at most 16 MiB of
/// documents in all (the host returns fewer versions rather than more bytes). Versions the
/// context's retention dropped are gone. Needs `read`.
///
/// # Errors
///
/// [`ContextError::AccessDenied`], [`ContextError::NotFound`], [`ContextError::Invalid`] for
/// a `limit` outside 1-64.
pub fn history(id: &str, limit: u32) -> Result<Vec<Version>, ContextError> {
    raw::history(id, limit)?
        .into_iter()
        .map(|v| {
            let doc = serde_json::from_str(&v.doc).map_err(|error| {
                ContextError::Failed(format!("version {} is not JSON: {error}", v.version))
            })?;
            Ok(Version {
                version: v.version,
                revision: v.revision,
                agent: v.agent,
                op: v.op,
                hlc: v.hlc,
                doc,
            })
        })
        .collect()
}

/// Commits a new version equal to `version` (history is never rewritten). Needs `write`.
///
/// # Errors
///
/// [`ContextError::Invalid`] when the version does not exist or retention dropped it, or the
/// result is over the document limit; [`ContextError::Refused`] while the context is in
/// conflict; [`ContextError::AccessDenied`], [`ContextError::NotFound`].
pub fn rollback(id: &str, version: u64) -> Result<WriteResult, ContextError> {
    raw::rollback(id, version)
}

/// How [`resolve`] ends a conflict.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Take this agent's value for every conflicting field.
    Agent(String),
    /// Take these values, JSON Pointer → value, covering every conflicting field.
    Fields(std::collections::BTreeMap<String, serde_json::Value>),
    /// Replace the whole document.
    Document(serde_json::Value),
}

/// Resolves a context in `conflict` state (a `manual` context after concurrent writes to one
/// field). Needs `write`. Read the competing values with [`pending`] first.
///
/// # Errors
///
/// [`ContextError::Invalid`] when the context is not in conflict, the chosen agent has no
/// value for a conflicting field, or a field is not covered; [`ContextError::Refused`] on a
/// schema mismatch; [`ContextError::AccessDenied`], [`ContextError::NotFound`].
pub fn resolve(id: &str, resolution: &Resolution) -> Result<WriteResult, ContextError> {
    let choice = match resolution {
        Resolution::Agent(agent) => raw::ResolveChoice::Agent(agent.clone()),
        Resolution::Fields(fields) => raw::ResolveChoice::Fields(to_json("fields", fields)?),
        Resolution::Document(doc) => raw::ResolveChoice::Document(to_json("document", doc)?),
    };
    raw::resolve(id, &choice)
}

/// The competing values of a context in `conflict` state, or `None` when it is not in
/// conflict: `{"fields": {pointer: {agent: value}}, "values": [{"field", "agent", "value"}],
/// "conflictIds": [..]}`, where `values` holds every competing value in arrival order (an
/// agent that wrote twice appears twice). Needs `read`.
///
/// # Errors
///
/// [`ContextError::AccessDenied`], [`ContextError::NotFound`].
pub fn pending(id: &str) -> Result<Option<serde_json::Value>, ContextError> {
    raw::pending(id)?
        .map(|text| {
            serde_json::from_str(&text).map_err(|error| {
                ContextError::Failed(format!("the pending conflict is not JSON: {error}"))
            })
        })
        .transpose()
}

/// Reads contexts into the agent's local cache on the host, so that later [`get`]s of them are
/// answered from it: until one changes (any agent's write drops it), is no longer readable by
/// the agent (access is checked on every read, cached or not), or 30 s pass. One result per
/// id, in order: the version cached, or why it could not be read. At most 256 ids.
///
/// # Errors
///
/// Per id, as [`get_raw`]; every id gets [`ContextError::Invalid`] when the list is too long.
pub fn prefetch(ids: &[&str]) -> Vec<Result<u64, ContextError>> {
    let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    raw::prefetch(&ids)
}

/// Synchronizes every context shared with the agent and reports each one's status (`synced`,
/// `conflict` or `error`) with the totals; cached copies older than the authoritative version
/// are dropped.
///
/// # Errors
///
/// [`ContextError::AccessDenied`] when the host's policies refuse listing contexts,
/// [`ContextError::Failed`] when the host has no context store.
pub fn sync_all_shared() -> Result<SyncSummary, ContextError> {
    raw::sync_all_shared()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_and_permissions_round_trip_their_names() {
        for s in [
            SyncStrategy::Strong,
            SyncStrategy::Eventual,
            SyncStrategy::Causal,
            SyncStrategy::Manual,
        ] {
            assert_eq!(s.as_str().parse::<SyncStrategy>(), Ok(s));
        }
        for p in [
            Permission::Read,
            Permission::Write,
            Permission::Share,
            Permission::Delete,
        ] {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
        }
        assert!("lww".parse::<SyncStrategy>().unwrap_err().contains("lww"));
    }

    #[test]
    fn write_result_conflicts_parse() {
        let r = WriteResult {
            id: "c".into(),
            version: 3,
            new_version: true,
            conflicts: r#"[{"field":"/a"}]"#.into(),
        };
        assert_eq!(
            r.conflict_values(),
            vec![serde_json::json!({"field": "/a"})]
        );
    }
}
