//! The public shapes of the context API: what callers pass in and get back.

use super::{
    Conflict, ConflictResolution, ContextState, ContextStatus, Hlc, PendingConflict, Permission,
    PointerOp, SyncStrategy,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A new context.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NewContext {
    /// Id; generated when empty.
    pub id: Option<String>,
    /// Type, e.g. `review-notes`.
    pub context_type: String,
    /// Initial document (`null` when absent).
    pub doc: Value,
    /// JSON schema every version must satisfy.
    pub schema: Option<Value>,
    /// Synchronization strategy (default strong).
    pub strategy: SyncStrategy,
    /// Conflict resolution for `causal` (default last-write-wins).
    pub resolution: ConflictResolution,
    /// Versions to keep (None: the store default).
    pub history_limit: Option<u64>,
    /// Host-kept labels (what policies see as `resource.labels`; see [`labels`]), set by the
    /// host-side creator; agents creating through `qi:agent/context` cannot set them. Default
    /// none.
    pub labels: Vec<String>,
}

/// A change to a context.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Change {
    /// Replace the whole document.
    Put(Value),
    /// JSON Pointer operations.
    Pointer(Vec<PointerOp>),
    /// A JSON merge patch (RFC 7396).
    Merge(Value),
}

/// What a committed write produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteResult {
    /// The context.
    pub context_id: String,
    /// Version after the write.
    pub version: u64,
    /// Store-wide revision of the context's last change.
    pub revision: u64,
    /// HLC of the context's last change.
    pub hlc: Hlc,
    /// Status after the write.
    pub status: ContextStatus,
    /// Whether the write made a new version (a write that lost every field, or that joined a
    /// pending conflict, does not).
    pub new_version: bool,
    /// Conflicts detected by this write.
    pub conflicts: Vec<Conflict>,
    /// Bytes of the document (its JSON text) the new version stores; 0 when the write made
    /// none. A small patch, a rollback or a resolution stores a whole document.
    pub doc_bytes: u64,
}

/// A context as a reader sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextView {
    /// Id.
    pub id: String,
    /// Owner.
    pub owner: String,
    /// Type.
    pub context_type: String,
    /// Strategy.
    pub strategy: SyncStrategy,
    /// Status.
    pub status: ContextStatus,
    /// Version.
    pub version: u64,
    /// Revision.
    pub revision: u64,
    /// HLC of the last change.
    pub hlc: Hlc,
    /// Document.
    pub doc: Value,
    /// Competing values while in conflict.
    pub pending: Option<PendingConflict>,
    /// Last change (unix ms).
    pub updated_at: u64,
}

impl From<&ContextState> for ContextView {
    fn from(s: &ContextState) -> Self {
        ContextView {
            id: s.id.clone(),
            owner: s.owner.clone(),
            context_type: s.context_type.clone(),
            strategy: s.strategy,
            status: s.status,
            version: s.version,
            revision: s.revision,
            hlc: s.hlc,
            doc: s.doc.clone(),
            pending: s.pending.clone(),
            updated_at: s.updated_at,
        }
    }
}

/// The seeds' `ShareResult`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareResult {
    /// The context.
    pub context_id: String,
    /// Agents it was shared with.
    pub shared_with: Vec<String>,
    /// Permissions granted.
    pub permissions: Vec<Permission>,
    /// When (unix ms).
    pub shared_at: u64,
    /// Expiry (unix ms).
    pub expires_at: Option<u64>,
}

/// The seeds' `SharedContextInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedContextInfo {
    /// The context.
    pub context_id: String,
    /// Its owner.
    pub owner_id: String,
    /// Permissions the agent holds.
    pub permissions: Vec<Permission>,
    /// When shared (unix ms).
    pub shared_at: u64,
    /// Expiry (unix ms).
    pub expires_at: Option<u64>,
    /// Current version.
    pub version: u64,
    /// `synced`, or `conflict` while the context waits for a resolution.
    pub sync_status: String,
}

/// The seeds' `SyncResult` for one context.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    /// The context.
    pub context_id: String,
    /// Authoritative version.
    pub version: u64,
    /// Status.
    pub status: ContextStatus,
    /// Unresolved conflicts.
    pub conflicts: Vec<Conflict>,
    /// Whether the context could be synchronized (read) by the agent.
    pub success: bool,
    /// Why not, when it could not.
    pub error: Option<String>,
}

/// One context of a [`SyncSummary`]: a context shared with the agent and its sync status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedContextSync {
    /// The context.
    pub context_id: String,
    /// Its owner.
    pub owner_id: String,
    /// Permissions the agent holds.
    pub permissions: Vec<Permission>,
    /// Authoritative version (0 when it could not be synchronized).
    pub version: u64,
    /// The seeds' `SyncStatus`: `synced` (the agent has the authoritative version and no
    /// conflict is open), `conflict` (unresolved conflicts; see `conflicts`), or `error` (the
    /// context could not be synchronized; see `error`).
    pub sync_status: String,
    /// Unresolved conflicts.
    pub conflicts: Vec<Conflict>,
    /// Why it could not be synchronized.
    pub error: Option<String>,
}

/// The seeds' `SyncSummary`: what [`ContextService::sync_all_shared_contexts`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSummary {
    /// The agent.
    pub agent_id: String,
    /// Contexts shared with it (live, unexpired grants).
    pub total_contexts: usize,
    /// Of those, synchronized (`synced` or `conflict`).
    pub synced_contexts: usize,
    /// Unresolved conflicts over all of them.
    pub conflicts: usize,
    /// Every shared context and its status, sorted by id.
    pub contexts: Vec<SharedContextSync>,
    /// Microseconds the whole synchronization took.
    pub total_time_us: u64,
}
