//! The shared context store: versioned JSON documents with sharing, permissions, expiry,
//! synchronization strategies, typed conflicts, history, rollback, merge and batch sync, an
//! agent registry with heartbeats, and an event for every change (and every read).
//!
//! # How a change happens
//!
//! Every change runs as one operation on the store's single writer thread, inside the
//! group-commit transaction that makes it durable: the access check, the strategy engine
//! ([`engine`]), the rows (current state, version, conflicts, events) and the staging of the
//! in-memory change happen together, in commit order, so revisions, versions and event
//! sequence numbers agree with what is on disk. The caller gets its answer when the
//! transaction has committed. Refusals that must be reported (stale writes, access
//! violations, schema mismatches) commit their conflict record and event the same way and
//! then come back as errors.
//!
//! Reads are served from the hot tier (`hot`), and only committed changes are in it: an
//! operation stages its changes in an overlay that later operations of the same batch see,
//! and they are published to readers by an after-commit hook. An operation that rolls back
//! is undone from its log; a batch whose commit fails is dropped whole. Every context's
//! metadata stays in memory; documents are kept up to [`ContextConfig::hot_tier_bytes`]
//! (least recently used out) and loaded back when needed.
//!
//! # Where things are
//!
//! [`service`](service) (opening, how an operation runs), `hot` (the hot tier: committed
//! state, the batch's overlay, the LRU bound), `agents` (registry, heartbeats), `documents`
//! (create, get, list, delete), `writes` (a change through its strategy), `history`
//! (versions, conflicts, rollback, resolve), `sharing`, `access` (the one access decision and
//! its callers), `sync` (merge, synchronize), `subscriptions`, `labels`, `audit`; the strategy
//! engine is `engine`, conflict records
//! `conflicts`, the rows `persist`, the types `model` and `api`, errors `error`,
//! settings `config`.
//!
//! # Access
//!
//! The owner may do everything. Other agents need a share granting the permission, not
//! expired at the time of the call (no sweep has to run first), and capabilities that allow
//! the kind of operation. The operator (`operator`, the CLI) may do everything. A refusal is
//! [`ContextError::AccessDenied`], an `access-violation` conflict record and a `conflict`
//! event.

mod access;
mod agents;
mod api;
mod audit;
pub mod cache;
mod config;
mod conflicts;
mod documents;
pub mod engine;
mod error;
mod history;
pub mod hlc;
mod hot;
pub mod labels;
pub mod model;
pub mod patch;
mod persist;
mod prepared;
pub mod replica;
mod service;
mod sharing;
mod subscriptions;
mod sync;
mod writes;

use documents::{empty_like, json_len, result_of, result_with_len};
use hot::Inner;
use service::{OpError, Shared, compile_schema, schema_check};

pub use agents::{HeartbeatSweeper, Presence};
pub use api::*;
pub use audit::AuditBudget;
pub use config::ContextConfig;
pub use documents::RUN_PREFIX;
pub use engine::{Refusal, ResolveChoice};
pub use error::ContextError;
pub use hlc::{Hlc, HybridClock, ManualClock, PhysicalClock, SystemClock};
pub use model::*;
pub use patch::{FieldChange, PointerOp};
pub use replica::{ContextReplica, Installed, ReplicatedContext, Replication, Stored};
pub use service::{ContextService, TrustSource};

// What `history`, `writes`, `sync` and `subscriptions` still take with `use super::*`.
use crate::events::{EventFilter, EventType, NewEvent, SubscribeFrom, Subscription};
use crate::store::{WriteCtx, encode_value};
use engine::{Stamp, Write};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The operator's agent id: the CLI and embedding code acting with full rights.
pub const OPERATOR: &str = "operator";

#[cfg(test)]
mod tests;
