//! The context model: documents, versions, permissions, conflicts, agents.

use super::hlc::Hlc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// How concurrent writes to one context are synchronized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStrategy {
    /// Compare-and-set on version: every write names the version it was based on, and a stale
    /// write is refused with the current version.
    #[default]
    Strong,
    /// Concurrent writes to different fields merge; the same field resolves last-writer-wins by
    /// HLC, deterministically, and every losing value is kept in a conflict record.
    Eventual,
    /// Writes must say what they observed (`baseVersion`); a write cannot be based on a version
    /// that does not exist yet. Concurrent writes to different fields merge; to the same field
    /// they resolve by the context's [`ConflictResolution`].
    Causal,
    /// Concurrent writes to the same field put the context into `conflict` state, holding every
    /// competing value until an agent or operator resolves it.
    Manual,
}

impl SyncStrategy {
    /// Name as written in specs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStrategy::Strong => "strong",
            SyncStrategy::Eventual => "eventual",
            SyncStrategy::Causal => "causal",
            SyncStrategy::Manual => "manual",
        }
    }
}

/// How a detected conflict is resolved (the `causal` strategy's setting, and what a conflict
/// record says happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictResolution {
    /// The value with the later HLC timestamp wins.
    #[default]
    LastWriteWins,
    /// Objects are merged key by key (recursively); where both sides changed the same scalar the
    /// later HLC wins.
    Merge,
    /// The context waits in `conflict` state for an explicit resolution.
    Manual,
}

/// Kind of a detected conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictType {
    /// Two agents changed the same field concurrently.
    FieldModification,
    /// A write based on a stale version (strong strategy) was refused.
    ConcurrentUpdate,
    /// An agent tried an operation it has no permission for.
    AccessViolation,
    /// A write would have broken the context's JSON schema.
    SchemaMismatch,
}

/// How serious a conflict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictSeverity {
    /// Resolved automatically, nothing lost that is not kept in the record.
    Low,
    /// A write was refused; the writer must retry.
    Medium,
    /// Needs attention: a security refusal or a schema violation.
    High,
    /// Blocks the context until resolved.
    Critical,
}

/// A detected conflict, with every agent's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    /// Store-assigned id (0 until persisted).
    pub id: u64,
    /// The context.
    pub context_id: String,
    /// JSON Pointer of the field (`""` for the whole document).
    pub field: String,
    /// What kind of conflict.
    pub conflict_type: ConflictType,
    /// How serious.
    pub severity: ConflictSeverity,
    /// Each agent's value for the field: every agent that changed it concurrently (its last
    /// value; over 64 KiB of JSON, a reference `{"version": n}` to the version holding it) and
    /// the writer (always copied). For a refused stale write, the attempted changes (pointer →
    /// value) and, for the agent whose change made the current version, a reference
    /// `{"version": n}` rather than a copy of the document.
    pub agent_values: BTreeMap<String, Value>,
    /// When it was detected (unix ms).
    pub detected_at: u64,
    /// How it was resolved, if it was.
    pub resolution: Option<ConflictOutcome>,
}

/// How a conflict ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictOutcome {
    /// The strategy that resolved it.
    pub strategy: ConflictResolution,
    /// The value that won.
    pub resolved_value: Value,
    /// Who resolved it: an agent id or `system`.
    pub resolved_by: String,
    /// When (unix ms).
    pub resolved_at: u64,
}

/// Lifecycle state of a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextStatus {
    /// Normal.
    Active,
    /// Waiting for a manual resolution (manual strategy).
    Conflict,
    /// Deleted (kept for history).
    Deleted,
}

impl ContextStatus {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ContextStatus::Active => "active",
            ContextStatus::Conflict => "conflict",
            ContextStatus::Deleted => "deleted",
        }
    }
}

/// A field stamp with its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StampedField {
    /// Version that last changed the field.
    pub version: u64,
    /// HLC of that change.
    pub hlc: Hlc,
    /// Agent that made the change.
    pub agent: String,
}

/// Competing values held by a context in `conflict` state (manual strategy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PendingConflict {
    /// Field → agent → value. The current value is under the agent that wrote it.
    pub fields: BTreeMap<String, BTreeMap<String, Value>>,
    /// Ids of the conflict records.
    pub conflict_ids: Vec<u64>,
    /// Every competing value, in the order the host received them (an agent that wrote a
    /// field more than once appears more than once). Bounded with the document: the document
    /// and its pending conflict together stay under `maxDocumentBytes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<CompetingValue>,
}

/// One competing value of a pending conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompetingValue {
    /// JSON Pointer of the field.
    pub field: String,
    /// The agent that wrote it (or held it when the conflict was detected).
    pub agent: String,
    /// The value.
    pub value: Value,
}

/// Current state of one context (the hot tier holds one of these per context).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextState {
    /// Id.
    pub id: String,
    /// Owning agent.
    pub owner: String,
    /// Free-form type, e.g. `review-notes`.
    pub context_type: String,
    /// Optional JSON schema every version must satisfy.
    pub schema: Option<Value>,
    /// Synchronization strategy.
    pub strategy: SyncStrategy,
    /// Resolution for `causal` conflicts.
    pub resolution: ConflictResolution,
    /// Status.
    pub status: ContextStatus,
    /// Per-context version, 1 for the first.
    pub version: u64,
    /// Store-wide revision of the last change.
    pub revision: u64,
    /// HLC of the last change.
    pub hlc: Hlc,
    /// The document.
    pub doc: Value,
    /// Last change per field (JSON Pointer).
    #[serde(skip)]
    pub field_stamps: BTreeMap<String, StampedField>,
    /// Competing values while in conflict.
    pub pending: Option<PendingConflict>,
    /// Versions kept (None: all).
    pub history_limit: Option<u64>,
    /// Created (unix ms).
    pub created_at: u64,
    /// Last changed (unix ms).
    pub updated_at: u64,
    /// Whether `doc`, `field_stamps` and `pending` are in memory. `false` for a context whose
    /// document the hot tier evicted (they are then empty until the service loads them back
    /// from the store); the other fields are always current.
    #[serde(skip)]
    pub resident: bool,
    /// In cluster mode, the revision of the context's entry in the cluster's KV bucket that
    /// this state is (0: unknown, e.g. before the host saw the bucket; see
    /// [`replica`](super::replica)). Kept in memory only.
    #[serde(skip)]
    pub kv_revision: u64,
}

impl ContextState {
    /// A copy of this state holding `doc` as its document (the current one is not copied).
    pub fn with_doc(&self, doc: Value) -> ContextState {
        self.with_parts(
            doc,
            self.field_stamps.clone(),
            self.pending.clone(),
            self.resident,
        )
    }

    /// This state with its document, field stamps and pending conflict dropped (kept on disk).
    pub fn without_document(&self) -> ContextState {
        self.with_parts(Value::Null, BTreeMap::new(), None, false)
    }

    /// This state's metadata with the given document parts.
    fn with_parts(
        &self,
        doc: Value,
        field_stamps: BTreeMap<String, StampedField>,
        pending: Option<PendingConflict>,
        resident: bool,
    ) -> ContextState {
        ContextState {
            id: self.id.clone(),
            owner: self.owner.clone(),
            context_type: self.context_type.clone(),
            schema: self.schema.clone(),
            strategy: self.strategy,
            resolution: self.resolution,
            status: self.status,
            version: self.version,
            revision: self.revision,
            hlc: self.hlc,
            doc,
            field_stamps,
            pending,
            history_limit: self.history_limit,
            created_at: self.created_at,
            updated_at: self.updated_at,
            resident,
            kv_revision: self.kv_revision,
        }
    }
}

/// A document version in the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextVersion {
    /// The context.
    pub context_id: String,
    /// Version number.
    pub version: u64,
    /// Store-wide revision.
    pub revision: u64,
    /// Who made it.
    pub agent_id: String,
    /// When (HLC).
    pub hlc: Hlc,
    /// What made it: create, put, patch, delete, rollback, resolve, merge.
    pub op: String,
    /// The document at this version.
    pub doc: Value,
}

/// Permission bits of a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Read the document, its history and its events.
    Read,
    /// Change the document.
    Write,
    /// Share it onwards (never with more permissions than one holds).
    Share,
    /// Delete it.
    Delete,
}

impl Permission {
    /// All permissions.
    pub const ALL: [Permission; 4] = [
        Permission::Read,
        Permission::Write,
        Permission::Share,
        Permission::Delete,
    ];

    /// Bit in the stored mask.
    pub fn bit(self) -> u32 {
        match self {
            Permission::Read => 1,
            Permission::Write => 2,
            Permission::Share => 4,
            Permission::Delete => 8,
        }
    }

    /// Mask of a set.
    pub fn mask(perms: &[Permission]) -> u32 {
        perms.iter().fold(0, |m, p| m | p.bit())
    }

    /// Set from a mask.
    pub fn from_mask(mask: u32) -> Vec<Permission> {
        Permission::ALL
            .into_iter()
            .filter(|p| mask & p.bit() != 0)
            .collect()
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Share => "share",
            Permission::Delete => "delete",
        })
    }
}

/// A share of a context with one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    /// The context.
    pub context_id: String,
    /// The agent it is shared with.
    pub agent_id: String,
    /// What the agent may do.
    pub permissions: Vec<Permission>,
    /// Who granted it.
    pub granted_by: String,
    /// When (unix ms).
    pub granted_at: u64,
    /// When it stops working (unix ms), if ever.
    pub expires_at: Option<u64>,
    /// The agent must hold at least this trust level when it uses the share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_trust: Option<crate::security::TrustLevel>,
}

impl Share {
    /// Whether the share grants `p` at time `now_ms` (expired shares grant nothing, with no
    /// sweep needed).
    pub fn grants(&self, p: Permission, now_ms: u64) -> bool {
        self.expires_at.is_none_or(|e| now_ms < e) && self.permissions.contains(&p)
    }
}

/// What an agent may do with contexts at all (the seeds' `AgentCapabilities`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AgentCapabilities {
    /// May read contexts.
    pub can_read: bool,
    /// May write contexts.
    pub can_write: bool,
    /// May share contexts.
    pub can_share: bool,
    /// How many contexts it may own at once.
    pub max_concurrent_contexts: u32,
    /// Context types it works with (empty: any).
    pub supported_context_types: Vec<String>,
    /// Free-form processing capabilities.
    pub processing_capabilities: Vec<String>,
}

impl Default for AgentCapabilities {
    fn default() -> Self {
        AgentCapabilities {
            can_read: true,
            can_write: true,
            can_share: true,
            max_concurrent_contexts: 1_000,
            supported_context_types: Vec::new(),
            processing_capabilities: Vec::new(),
        }
    }
}

/// Connection status of a registered agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentConnection {
    /// Heartbeating.
    Active,
    /// Missed its heartbeat window; its subscriptions were cleaned up.
    Disconnected,
}

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistration {
    /// Id.
    pub agent_id: String,
    /// Capabilities.
    pub capabilities: AgentCapabilities,
    /// Registered (unix ms).
    pub registered_at: u64,
    /// Last heartbeat (unix ms).
    pub last_heartbeat: u64,
    /// Status.
    pub status: AgentConnection,
}
