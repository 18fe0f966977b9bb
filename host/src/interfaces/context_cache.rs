//! The parts of `qi:agent/context` that go through the agent's local cache
//! ([`crate::context::cache`]): `get`, `prefetch` and `sync-all-shared`. The `impl Host` in
//! [`super::context`] calls these after its argument checks and the access gate.

use super::context::decided;
use super::limits::{self, MAX_PREFETCH_CONTEXTS};
use super::qi;
use crate::context::ContextService;
use crate::context::cache::{CachedDocument, Served};
use crate::events::ReadRecording;
use crate::sandbox::AgentShared;
use qi::agent::context::{ContextError as WitContextError, Document, SharedSync, SyncSummary};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Contexts `sync-all-shared` lists (its totals count every one).
pub const MAX_SYNC_ALL_LISTED: usize = 1024;

fn document(d: CachedDocument) -> Document {
    Document {
        id: d.id,
        owner: d.owner,
        context_type: d.context_type,
        version: d.version,
        revision: d.revision,
        status: d.status.as_str().to_string(),
        doc: d.doc.to_string(),
    }
}

/// Reads `id` for the agent: from its cache, or from the store (always at `monitored`,
/// where every read is recorded). Counts the hit or miss in the receipt.
pub(super) async fn read(
    shared: &Arc<AgentShared>,
    svc: &ContextService,
    me: &str,
    id: &str,
) -> Result<Document, WitContextError> {
    let counters = &shared.counters;
    if shared.grants.monitored {
        let view = svc
            .get_with(me, id, ReadRecording::Every)
            .await
            .map_err(|e| decided(shared, e))?;
        counters
            .context_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        return Ok(document(CachedDocument::from(view)));
    }
    let (doc, served) = shared
        .context_cache
        .get(svc, me, id)
        .await
        .map_err(|e| decided(shared, e))?;
    match served {
        Served::Hit => &counters.context_cache_hits,
        Served::Miss => &counters.context_cache_misses,
    }
    .fetch_add(1, Ordering::Relaxed);
    Ok(document(doc))
}

/// `context.prefetch`: each id through the access gate and into the cache.
pub(super) async fn prefetch(
    shared: &Arc<AgentShared>,
    svc: &ContextService,
    me: &str,
    ids: &[String],
) -> Result<Vec<Result<u64, WitContextError>>, WitContextError> {
    let call = "context.prefetch";
    let refused = |r: limits::ArgumentRefusal| WitContextError::Invalid(r.into_message());
    limits::items(shared, call, "ids", ids, MAX_PREFETCH_CONTEXTS).map_err(refused)?;
    limits::ids(shared, call, "ids", ids).map_err(refused)?;
    // Each read may be recorded as an `accessed` event: one stored row each, as for `get`.
    limits::stored(shared, call, "ids", 0, ids.len()).map_err(refused)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Err(reason) = shared.gate("context", id, "get") {
            out.push(Err(WitContextError::AccessDenied(reason)));
            continue;
        }
        let r = if shared.grants.monitored {
            // Nothing is cached at `monitored`: the read is made (and recorded) all the same.
            svc.get_with(me, id, ReadRecording::Every)
                .await
                .map(|v| v.version)
        } else {
            shared
                .context_cache
                .prefetch(svc, me, id)
                .await
                .map(|(version, served)| {
                    if served == Served::Miss {
                        shared
                            .counters
                            .context_cache_prefetched
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    version
                })
        };
        out.push(r.map_err(|e| decided(shared, e)));
    }
    Ok(out)
}

/// `context.sync-all-shared`: [`ContextService::sync_all_shared_contexts`] for the agent;
/// cached copies that differ from the authoritative version are dropped.
pub(super) async fn sync_all_shared(
    shared: &Arc<AgentShared>,
    svc: &ContextService,
    me: &str,
) -> SyncSummary {
    let summary = svc.sync_all_shared_contexts(me).await;
    for c in &summary.contexts {
        shared
            .context_cache
            .ensure_coherence(&c.context_id, c.version)
            .await;
    }
    SyncSummary {
        total: summary.total_contexts as u32,
        synced: summary.synced_contexts as u32,
        conflicts: summary.conflicts as u32,
        contexts: summary
            .contexts
            .into_iter()
            .take(MAX_SYNC_ALL_LISTED)
            .map(|c| SharedSync {
                id: c.context_id,
                owner: c.owner_id,
                version: c.version,
                status: c.sync_status,
                conflicts: c.conflicts.len() as u32,
                error: c.error,
            })
            .collect(),
    }
}
