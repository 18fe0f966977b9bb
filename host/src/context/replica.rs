//! Cluster mode: every context's authoritative state lives in a compare-and-set store shared
//! by the hosts of a cluster (a JetStream KV bucket, [`crate::cluster::contexts`]); each
//! host's SQLite file and hot tier hold its copy.
//!
//! # How a change is made
//!
//! An operation runs as on one host (access check, strategy engine, rows, events), on the
//! store's writer thread, and before its batch commits, each context it changed is stored
//! in the replica **if the entry's revision is still the one this host's copy came from**
//! ([`ContextState::kv_revision`]). When another host changed the context meanwhile, the
//! operation is rolled back whole (nothing of it is committed or seen), the newer entry is
//! installed, and the caller gets [`ContextError::ReplicaChanged`]; a write or create is then
//! made again by the service on the newer state, at most [`MAX_REPLICA_TRIES`] times. So a
//! `strong` write based on a version another host replaced is refused as stale, exactly as
//! on one host, and `eventual`, `causal` and `manual` merge against what the other host
//! wrote, with the conflicts recorded once, by the host that detected them.
//!
//! Readers keep reading the hot tier, which the replica's watch keeps coherent
//! ([`ContextService::install_replicated`]): an entry written by another host is installed
//! as a version of this host's history (op `replicated`) with an `updated` (or `created`)
//! event whose data names the host it came from (`replicatedFrom`), so local subscribers
//! see it; the cluster's event stream already has the writing host's own event, and such
//! events are not forwarded again.
//!
//! # What is and is not replicated
//!
//! The state of a context (document, version, field stamps, pending conflict, status,
//! strategy, schema, owner) is. Shares, labels, conflict records and history stay on the
//! host where they were made: agents are registered with one host and a grant names an
//! agent of that host. A host that missed entries while it was cut off installs the latest
//! one when it sees it again, so its history has only the versions it saw.
//!
//! The writer thread waits for the replica while it stores (at most the replica's
//! [`timeout`](Replication::timeout)); an operation on a context while the replica cannot be
//! reached fails with [`ContextError::Cluster`] naming the cause, and nothing of it is
//! committed.

use super::*;
use crate::context::hot::Inner as HotInner;
use crate::store::WriteCtx;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How many times a write or create is made again after another host changed its context
/// first, before the caller gets [`ContextError::ReplicaChanged`].
pub const MAX_REPLICA_TRIES: u32 = 64;

/// How far ahead of this host's clock an entry's HLC may be, in milliseconds (60 s): an
/// entry further ahead is not installed (it would pin every host's clock, and with it
/// last-writer-wins, to that time). Hosts of a cluster keep their clocks within this (NTP).
pub const MAX_CLOCK_AHEAD_MS: u64 = 60_000;

/// A boxed future of a [`ContextReplica`] call.
pub type ReplicaFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The shared store of a cluster's contexts: one entry per context, each with a revision
/// that changes at every store (a JetStream KV bucket in [`crate::cluster::contexts`]).
pub trait ContextReplica: Send + Sync + 'static {
    /// The entry of context `id` and its revision; `None` when there is none.
    fn fetch<'a>(
        &'a self,
        id: &'a str,
    ) -> ReplicaFuture<'a, Result<Option<(u64, ReplicatedContext)>, String>>;

    /// The entries of context `id` the store still holds (its history), oldest first.
    fn history<'a>(
        &'a self,
        id: &'a str,
    ) -> ReplicaFuture<'a, Result<Vec<(u64, ReplicatedContext)>, String>>;

    /// Stores `record` as context `id`'s entry when the entry's revision is still `expected`
    /// (0: when there is no entry yet). `Err` says why it could not be asked or refused the
    /// record (e.g. too large), in words for the caller.
    ///
    /// `holds` is the (version, HLC) this host's copy has: an entry at `expected` that holds
    /// another state (a bucket made again, whose revisions started over) is `Changed` too.
    fn store<'a>(
        &'a self,
        id: &'a str,
        expected: u64,
        holds: (u64, super::Hlc),
        record: &'a ReplicatedContext,
    ) -> ReplicaFuture<'a, Result<Stored, String>>;

    /// Whether the replica can be reached now.
    fn available(&self) -> bool;
}

/// What [`ContextService::install_replicated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Nothing: the copy already was that entry (or a later one).
    Same,
    /// A later version was installed.
    Later,
    /// The entry replaced a copy that was not behind it.
    Replaced,
}

/// What [`ContextReplica::store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored; the entry's new revision.
    At(u64),
    /// Not stored: the entry's revision is no longer the expected one.
    Changed,
}

/// A context as it is stored in the replica: its state, with the field stamps the
/// strategies need and who made the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedContext {
    /// Id.
    pub id: String,
    /// Owning agent.
    pub owner: String,
    /// Free-form type.
    pub context_type: String,
    /// JSON schema every version must satisfy.
    pub schema: Option<Value>,
    /// Synchronization strategy.
    pub strategy: SyncStrategy,
    /// Resolution for `causal` conflicts.
    pub resolution: ConflictResolution,
    /// Status.
    pub status: ContextStatus,
    /// Per-context version.
    pub version: u64,
    /// HLC of the change.
    pub hlc: super::Hlc,
    /// The document.
    pub doc: Value,
    /// Last change per field (JSON Pointer).
    pub field_stamps: BTreeMap<String, StampedField>,
    /// Competing values while in conflict.
    pub pending: Option<PendingConflict>,
    /// Versions kept (None: all).
    pub history_limit: Option<u64>,
    /// Created (unix ms).
    pub created_at: u64,
    /// Last changed (unix ms).
    pub updated_at: u64,
    /// The agent whose change this is (the latest field stamp's, else the owner).
    pub writer: String,
    /// The name in the cluster of the host that made it.
    pub host: String,
}

impl ReplicatedContext {
    /// The record of `state`, made by host `host`.
    pub fn of(state: &ContextState, host: &str) -> ReplicatedContext {
        let writer = state
            .field_stamps
            .values()
            .max_by_key(|s| s.hlc)
            .map_or_else(|| state.owner.clone(), |s| s.agent.clone());
        ReplicatedContext {
            id: state.id.clone(),
            owner: state.owner.clone(),
            context_type: state.context_type.clone(),
            schema: state.schema.clone(),
            strategy: state.strategy,
            resolution: state.resolution,
            status: state.status,
            version: state.version,
            hlc: state.hlc,
            doc: state.doc.clone(),
            field_stamps: state.field_stamps.clone(),
            pending: state.pending.clone(),
            history_limit: state.history_limit,
            created_at: state.created_at,
            updated_at: state.updated_at,
            writer,
            host: host.to_string(),
        }
    }

    /// The state it describes, as revision `revision` of this host and entry `kv_revision`.
    fn into_state(self, revision: u64, kv_revision: u64) -> ContextState {
        ContextState {
            id: self.id,
            owner: self.owner,
            context_type: self.context_type,
            schema: self.schema,
            strategy: self.strategy,
            resolution: self.resolution,
            status: self.status,
            version: self.version,
            revision,
            hlc: self.hlc,
            doc: self.doc,
            field_stamps: self.field_stamps,
            pending: self.pending,
            history_limit: self.history_limit,
            created_at: self.created_at,
            updated_at: self.updated_at,
            resident: true,
            kv_revision,
        }
    }
}

/// A service's link to its replica (see [`ContextService::replicate`]).
pub struct Replication {
    /// The shared store.
    pub replica: Arc<dyn ContextReplica>,
    /// The runtime the replica's futures run on (the writer thread blocks on them).
    pub handle: tokio::runtime::Handle,
    /// Longest wait for the replica in one store.
    pub timeout: Duration,
    /// This host's name in the cluster (recorded in every entry it stores).
    pub host: String,
}

/// Whether `after` is the same change as `before` (a document loaded back into memory is
/// not a change).
fn unchanged(before: &ContextState, after: &ContextState) -> bool {
    before.revision == after.revision
        && before.version == after.version
        && before.hlc == after.hlc
        && before.status == after.status
        && before.updated_at == after.updated_at
        && before.pending == after.pending
}

/// Stores every context the running operation changed in the replica (see the module
/// docs), on the writer thread, before the batch commits. `ReplicaChanged` (another host
/// changed one first) and `Cluster` (the replica cannot be reached or refused the record)
/// roll the operation back.
pub(super) fn publish(
    r: &Replication,
    inner: &mut HotInner<'_>,
    ctx: &mut WriteCtx<'_>,
) -> Result<(), ContextError> {
    for (id, before) in inner.contexts.touched() {
        let Some(after) = inner.contexts.get_arc(&id) else {
            continue;
        };
        if before
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(b, &after) || unchanged(b, &after))
        {
            continue;
        }
        let after = if after.resident {
            after
        } else {
            let loaded = persist::load_context(ctx.tx(), ctx.blobs(), &id)?;
            match loaded {
                Some(s) => Arc::new(ContextState {
                    kv_revision: after.kv_revision,
                    ..s
                }),
                None => continue,
            }
        };
        let expected = before.as_ref().map_or(0, |b| b.kv_revision);
        let holds = before
            .as_ref()
            .map_or((0, super::Hlc::default()), |b| (b.version, b.hlc));
        let record = ReplicatedContext::of(&after, &r.host);
        let stored = r.handle.block_on(async {
            tokio::time::timeout(r.timeout, r.replica.store(&id, expected, holds, &record)).await
        });
        match stored {
            Ok(Ok(Stored::At(revision))) => {
                let mut state = (*after).clone();
                state.kv_revision = revision;
                inner.contexts.insert(id, state);
            }
            Ok(Ok(Stored::Changed)) => return Err(ContextError::ReplicaChanged { context: id }),
            Ok(Err(message)) => {
                return Err(ContextError::Cluster {
                    context: id,
                    message,
                });
            }
            Err(_) => {
                return Err(ContextError::Cluster {
                    context: id,
                    message: format!(
                        "the cluster's context bucket did not answer within {} ms; nothing was committed on this host, but the bucket may still take the change (it then reaches this host through the bucket's watch, with its event): read the context before making the change again",
                        r.timeout.as_millis()
                    ),
                });
            }
        }
    }
    Ok(())
}

impl ContextService {
    /// Replicates this service's contexts through `replication` (cluster mode; see
    /// [`replica`](self)). Call before the first operation; the watch that keeps the hot
    /// tier coherent calls [`install_replicated`](Self::install_replicated).
    pub fn replicate(&self, replication: Replication) {
        *self
            .shared
            .replication
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(replication));
    }

    /// The revision of the replica's entry this host's copy of context `id` is (0: not
    /// known yet); `None` when this host has no context `id`.
    pub fn kv_revision(&self, id: &str) -> Option<u64> {
        self.shared
            .committed()
            .contexts
            .get(id)
            .map(|s| s.kv_revision)
    }

    /// The link to the replica, in cluster mode.
    pub(super) fn replication(&self) -> Option<Arc<Replication>> {
        self.shared
            .replication
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs revision `kv_revision` of a context's replicated entry, unless this host's
    /// copy is already that revision or later. A newer version becomes a version of this
    /// host's history (op `replicated`, by the entry's writer) with a `created` or `updated`
    /// event whose data has `replicatedFrom` (the host that made it, when not this one). An
    /// entry that is not a later version of the copy replaces it ([`Installed::Replaced`]).
    pub async fn install_replicated(
        &self,
        kv_revision: u64,
        record: ReplicatedContext,
    ) -> Result<Installed, ContextError> {
        let id = record.id.clone();
        // An entry this host stored whose answer it did not get (a timeout) carries no
        // event yet anywhere: its event here is forwarded like any of this host's.
        let own = self.replication().is_some_and(|r| r.host == record.host);
        self.run_unreplicated(
            Some(id.clone()),
            Box::new(move |sh, inner, ctx| {
                let local = inner.contexts.get_arc(&id);
                if local.as_ref().is_some_and(|l| l.kv_revision >= kv_revision) {
                    return Ok(Installed::Same);
                }
                let ahead = record.hlc.wall_ms.saturating_sub(sh.clock.now_ms());
                if ahead > MAX_CLOCK_AHEAD_MS {
                    return Err(OpError::RolledBack(ContextError::Cluster {
                        context: id,
                        message: format!(
                            "the cluster's entry is stamped {ahead} ms ahead of this host's clock; at most {MAX_CLOCK_AHEAD_MS} ms (MAX_CLOCK_AHEAD_MS) is taken: check the hosts' clocks (NTP)"
                        ),
                    }));
                }
                sh.clock.observe(Some(record.hlc));
                if let Some(l) = &local
                    && l.version == record.version
                    && l.hlc == record.hlc
                {
                    // The same state (this host's own entry, or a restart): only the
                    // revision is adopted.
                    let mut same = (**l).clone();
                    same.kv_revision = kv_revision;
                    inner.contexts.insert(id, same);
                    return Ok(Installed::Same);
                }
                // The bucket is authoritative: an entry that is not a later version of this
                // host's copy (a copy that went its own way, e.g. after the NATS server lost
                // its storage and another host made the context again) replaces it, and the
                // copy's versions from there on are dropped from this host's history.
                let diverged = local.as_ref().is_some_and(|l| l.version >= record.version);
                if diverged {
                    let l = local.as_ref().expect("checked");
                    tracing::warn!(
                        context = id,
                        local = l.version,
                        entry = record.version,
                        from = record.host,
                        "this host's copy of a context differs from the cluster's; the cluster's replaces it"
                    );
                    persist::delete_versions_from(ctx.tx(), &id, record.version)?;
                }
                let Stamp {
                    now_ms: now,
                    revision,
                    ..
                } = sh.stamp(inner);
                let (writer, host) = (record.writer.clone(), record.host.clone());
                let mut state = record.into_state(revision, kv_revision);
                // At least the current version is kept, whatever the entry says.
                state.history_limit = state.history_limit.map(|l| l.max(1));
                let schema_changed = local.as_ref().is_none_or(|l| l.schema != state.schema);
                if schema_changed {
                    match &state.schema {
                        Some(schema) => {
                            let v = compile_schema(&id, schema)?;
                            inner.schemas.insert(id.clone(), v);
                        }
                        None => {
                            inner.schemas.remove(&id);
                        }
                    }
                }
                {
                    let version = ContextVersion {
                        context_id: id.clone(),
                        version: state.version,
                        revision,
                        agent_id: writer.clone(),
                        hlc: state.hlc,
                        op: "replicated".into(),
                        doc: state.doc.clone(),
                    };
                    persist::insert_version(
                        ctx.tx(),
                        ctx.blobs(),
                        &version,
                        state.history_limit,
                        now,
                    )?;
                }
                persist::upsert_context(ctx.tx(), ctx.blobs(), &state)?;
                let kind = if local.is_none() {
                    EventType::Created
                } else {
                    EventType::Updated
                };
                let mut data = json!({
                    "version": state.version, "revision": revision,
                    "hlc": state.hlc.to_string(), "op": "replicated",
                    "contextType": state.context_type, "strategy": state.strategy,
                });
                if !own {
                    data["replicatedFrom"] = json!(host);
                }
                let event = NewEvent::new(kind).context(&id).agent(&writer).data(data);
                sh.bus.stage(ctx, vec![event])?;
                inner.revision = revision;
                inner.contexts.insert(id, state);
                Ok(if diverged {
                    Installed::Replaced
                } else {
                    Installed::Later
                })
            }),
        )
        .await
    }

    /// After an operation found context `id` changed on another host: installs the
    /// replica's entry (what the operation is made again on).
    pub(super) async fn catch_up(&self, r: &Replication, id: &str) -> Result<(), ContextError> {
        let fetched = tokio::time::timeout(r.timeout, r.replica.fetch(id))
            .await
            .map_err(|_| ContextError::Cluster {
                context: id.to_string(),
                message: format!(
                    "the cluster's context bucket did not answer within {} ms",
                    r.timeout.as_millis()
                ),
            })?
            .map_err(|message| ContextError::Cluster {
                context: id.to_string(),
                message,
            })?;
        let Some((revision, record)) = fetched else {
            return self.forget_replica_revision(id).await;
        };
        if record.id != id {
            return Err(ContextError::Cluster {
                context: id.to_string(),
                message: format!("the bucket's entry for it holds context `{}`", record.id),
            });
        }
        let local = self.shared.committed().contexts.get(id).map(|s| s.version);
        if let Some(local) = local
            && record.version > local + 1
        {
            // Versions this host has not seen: each becomes a version of its history, in
            // order, so strategies that compare against the versions since a write's base
            // (eventual, causal, manual) find them (as far as the bucket keeps them).
            let history = tokio::time::timeout(r.timeout, r.replica.history(id))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            for (revision, record) in history {
                if record.version > local && record.id == id {
                    self.install_replicated(revision, record).await?;
                }
            }
        }
        if self.install_replicated(revision, record).await? == Installed::Replaced {
            // What the operation was based on is not the cluster's: it is not made again.
            return Err(ContextError::Cluster {
                context: id.to_string(),
                message: "this host's copy differed from the cluster's state (the NATS server \
                          lost its storage, or the entry was replaced from outside); the \
                          cluster's state is installed here now: read it before changing it"
                    .into(),
            });
        }
        Ok(())
    }

    /// Forgets which entry revision each context's copy is (after the cluster's bucket was
    /// made again, whose revisions start over): the next change of each is stored as a new
    /// entry, or meets the entry another host stored first.
    pub async fn forget_replica_revisions(&self) -> Result<(), ContextError> {
        // Through the writer, like every change of the hot tier (a runtime thread never
        // waits for the hot tier's write lock in cluster mode; see `documents`).
        self.run_unreplicated(
            None,
            Box::new(|_, inner, _| {
                let known: Vec<String> = inner
                    .contexts
                    .iter()
                    .filter(|(_, s)| s.kv_revision != 0)
                    .map(|(k, _)| k.clone())
                    .collect();
                for id in known {
                    if let Some(s) = inner.contexts.get(&id) {
                        let mut s = s.clone();
                        s.kv_revision = 0;
                        inner.contexts.insert(id, s);
                    }
                }
                Ok(())
            }),
        )
        .await
    }

    /// Forgets the entry revision of context `id`'s copy (its entry is gone from the
    /// bucket, e.g. deleted from outside): its next change is stored as a new entry.
    async fn forget_replica_revision(&self, id: &str) -> Result<(), ContextError> {
        let id = id.to_string();
        self.run_unreplicated(
            Some(id.clone()),
            Box::new(move |_, inner, _| {
                if let Some(s) = inner.contexts.get(&id)
                    && s.kv_revision != 0
                {
                    let mut s = s.clone();
                    s.kv_revision = 0;
                    inner.contexts.insert(id, s);
                }
                Ok(())
            }),
        )
        .await
    }
}
