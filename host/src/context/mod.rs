//! The shared context store: versioned JSON documents with sharing, permissions, expiry,
//! synchronization strategies, typed conflicts, history, rollback, merge and batch sync, an
//! agent registry with heartbeats, and an event for every change (and every read).
//!
//! # How a change happens
//!
//! Every change runs as one operation on the store's single writer thread, inside the
//! group-commit transaction that makes it durable: the access check, the strategy engine
//! ([`engine`]), the rows (current state, version, conflicts, events) and the update of the
//! in-memory hot tier happen together, in commit order, so revisions, versions and event
//! sequence numbers agree with what is on disk. The caller gets its answer when the
//! transaction has committed. Refusals that must be reported (stale writes, access
//! violations, schema mismatches) commit their conflict record and event the same way and
//! then come back as errors.
//!
//! Reads are served from the hot tier. A reader may see a change whose transaction is still
//! committing (microseconds); if that commit fails, the context is reloaded from disk.
//!
//! # Where things are
//!
//! [`service`](service) (state, opening, how an operation runs), `agents` (registry,
//! heartbeats), `documents` (create, get, list, delete), `writes` (a change through its
//! strategy), `history` (versions, conflicts, rollback, resolve), `sharing`, `access`, `sync`
//! (merge, synchronize), `subscriptions`, `labels`, `audit`; the strategy engine is `engine`,
//! the rows `persist`, the types `model` and `api`, errors `error`, settings `config`.
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
mod documents;
pub mod engine;
mod error;
mod history;
pub mod hlc;
pub mod labels;
pub mod model;
pub mod patch;
mod persist;
mod service;
mod sharing;
mod subscriptions;
mod sync;
mod writes;

use documents::{empty_like, result_of};
use service::{Inner, OpError, Shared, compile_schema, schema_check};
use writes::conflict_event;

pub use api::*;
pub use audit::AuditBudget;
pub use config::ContextConfig;
pub use engine::{Refusal, ResolveChoice};
pub use error::ContextError;
pub use hlc::{Hlc, HybridClock, ManualClock, PhysicalClock, SystemClock};
pub use model::*;
pub use patch::{FieldChange, PointerOp};
pub use service::{ContextService, TrustSource};

use crate::audit::AuditDecision::Record;
use crate::events::{EventBus, EventFilter, EventType, NewEvent, SubscribeFrom, Subscription};
use crate::store::{Store, StoreError, WriteCtx};
use engine::{Stamp, Write};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

/// The operator's agent id: the CLI and embedding code acting with full rights.
pub const OPERATOR: &str = "operator";

#[cfg(test)]
mod tests;
