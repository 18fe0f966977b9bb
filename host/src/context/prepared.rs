//! A write worked out on the caller's thread, so the store's single writer thread only
//! checks that it still applies and stores it.
//!
//! The writer thread serializes every change of the store: whatever it spends per write caps
//! the store's throughput. Most of a write does not need it: the diff of a put, applying the
//! changes, the schema check, measuring and encoding the result depend only on the state the
//! write is based on. When the caller names the current version as its base and the
//! committed hot tier holds that context's document, [`ContextService::prepare`] runs the
//! strategy engine there, against that committed state, with the same inputs the writer would
//! use. The writer then takes the prepared result only if the context is still that very
//! state (the same [`Arc`], so no change committed or was staged in between) with the same
//! schema: the engine is deterministic, so the result is the one it would compute itself.
//! It still does, under the writer, what depends on commit order: the access check, the
//! stamp (revision, HLC, time), the rows and the event. Anything else (another change came
//! first, a refusal, a conflict, an evicted document, a result over the size limit) is left
//! to the writer's own path, which decides and reports it as before.

use super::engine::{self, Stamp, Write};
use super::{
    ContextError, ContextService, ContextState, ContextStatus, Inner, OpError, Permission, Shared,
    WriteCtx, WriteResult, json_len, persist, result_with_len, schema_check,
};
use crate::events::{EventType, NewEvent};
use crate::store::encode_value;
use serde_json::json;
use std::sync::Arc;

/// A write the writer thread can store without working it out again.
pub(super) struct Prepared {
    /// The committed state it was computed from (held, so its address is not reused).
    seen: Arc<ContextState>,
    /// The schema it was checked against.
    schema: Option<Arc<jsonschema::Validator>>,
    /// The write, with its changes normalized.
    write: Write,
    /// The state after the write; revision, HLC and time are set when it is stored.
    state: ContextState,
    /// The new version's number.
    version: u64,
    /// The document's compact JSON length, bytes.
    doc_json: u64,
    /// The document as stored ([`encode_value`], not sealed).
    encoded_doc: Vec<u8>,
    /// The field stamps as stored (not sealed).
    encoded_stamps: Vec<u8>,
}

impl Prepared {
    /// Whether the document stays inline in its rows (sealed, too) under the blob tier's
    /// `threshold`: storing it writes no blob file of its own. (A first write after encryption
    /// was enabled reseals earlier versions, blobs included; a prepared write found stale when
    /// it is stored is worked out again and may then store a larger document.)
    pub(super) fn stays_inline(&self, threshold: usize) -> bool {
        self.encoded_doc.len() + crate::store::crypto::SEALED_OVERHEAD <= threshold
    }
}

impl ContextService {
    /// Works `changes` (a put's document is `doc`) out against the committed state of `id`,
    /// when `base` is its current version and its document is in memory; `None` when the
    /// writer must work the write out itself (see the module documentation).
    pub(super) fn prepare(
        &self,
        id: &str,
        base: Option<u64>,
        put: Option<&serde_json::Value>,
        changes: Option<&[super::FieldChange]>,
        mut write: Write,
    ) -> Option<Prepared> {
        let base = base?;
        let (seen, schema) = {
            let committed = self.shared.committed();
            let seen = committed.context_arc(id)?;
            (seen, committed.schemas.get(id).cloned())
        };
        if !seen.resident || seen.version != base || seen.status != ContextStatus::Active {
            return None;
        }
        write.changes = match (changes, put) {
            (Some(c), _) => c.to_vec(),
            (None, Some(doc)) => super::patch::diff(&seen.doc, doc).ok()?,
            (None, None) => return None,
        };
        // Revision, HLC and time are the writer's; it sets them on the result.
        let provisional = Stamp {
            hlc: write.hlc,
            revision: seen.revision,
            now_ms: seen.updated_at,
        };
        let applied = {
            let check = schema.as_deref().map(schema_check);
            engine::apply_write(
                &seen,
                &write,
                provisional,
                check
                    .as_ref()
                    .map(|c| c as &dyn Fn(&serde_json::Value) -> Result<(), String>),
                &[],
            )
            .ok()?
        };
        let version = applied.version?;
        if !applied.conflicts.is_empty() || applied.state.pending.is_some() {
            return None;
        }
        let doc_json = json_len(&applied.state.doc);
        if doc_json as usize > self.shared.config.max_document_bytes {
            return None;
        }
        let encoded_stamps = persist::encode_stamps(&applied.state.field_stamps).ok()?;
        Some(Prepared {
            encoded_doc: encode_value(&applied.state.doc),
            encoded_stamps,
            seen,
            schema,
            write,
            state: applied.state,
            version,
            doc_json,
        })
    }

    /// On the writer: when `p` still applies to the state `inner` holds for `id`, checks the
    /// writer's access and stores it (`Some` with the outcome); `None` when it no longer
    /// applies, and the writer works the write out itself.
    pub(super) fn commit_prepared(
        sh: &Shared,
        inner: &mut Inner<'_>,
        ctx: &mut WriteCtx<'_>,
        id: &str,
        p: Prepared,
    ) -> Option<Result<WriteResult, OpError>> {
        let current = inner.contexts.get_arc(id)?;
        let same_schema = match (inner.schemas.get(id), &p.schema) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !Arc::ptr_eq(&current, &p.seen) || !same_schema {
            return None;
        }
        if let Err(reason) = Self::check(sh, inner, &p.write.agent, &current, Permission::Write) {
            return Some(Err(Self::deny(
                sh,
                ctx,
                &p.write.agent,
                "write",
                id,
                reason,
            )));
        }
        Some(Self::store_prepared(sh, inner, ctx, id, p))
    }

    fn store_prepared(
        sh: &Shared,
        inner: &mut Inner<'_>,
        ctx: &mut WriteCtx<'_>,
        id: &str,
        p: Prepared,
    ) -> Result<WriteResult, OpError> {
        // The write runs without a savepoint (`Store::write_self_guarded`): whatever can fail
        // after its first row would abort every other write of the batch, so it opens one
        // first when such a step is ahead. Giving the context its first data key (a context
        // written before encryption was enabled) reseals its earlier rows, reading their
        // blobs; sealed, the document is stored twice as different bytes, so a document
        // bound for the blob tier is a second blob file written after the version row.
        if let Some(keys) = ctx.blobs().keys()
            && (!keys.has_key(id) || !p.stays_inline(ctx.blobs().threshold()))
        {
            ctx.guard()?;
        }
        let at = sh.stamp(inner);
        let Prepared {
            write: w,
            mut state,
            version,
            doc_json,
            encoded_doc,
            encoded_stamps,
            ..
        } = p;
        state.revision = at.revision;
        state.hlc = at.hlc;
        state.updated_at = at.now_ms;
        let row = persist::VersionRow {
            context_id: id,
            version,
            revision: at.revision,
            agent_id: &w.agent,
            hlc: at.hlc,
            op: w.op,
        };
        persist::insert_version_encoded(
            ctx.tx(),
            ctx.blobs(),
            &row,
            encoded_doc.clone(),
            state.history_limit,
            at.now_ms,
        )?;
        persist::upsert_context_encoded(
            ctx.tx(),
            ctx.blobs(),
            &state,
            encoded_doc,
            Some(encoded_stamps),
        )?;
        let event = if w.op == "rollback" {
            EventType::RolledBack
        } else {
            EventType::Updated
        };
        let event = NewEvent::new(event)
            .context(id)
            .agent(&w.agent)
            .data(json!({
                "version": version, "revision": at.revision, "hlc": at.hlc.to_string(), "op": w.op,
                "fields": w.changes.iter().map(|c| c.path.clone()).collect::<Vec<_>>(),
            }));
        sh.bus
            .stage_only(ctx, vec![event])
            .map_err(ContextError::from)?;
        inner.revision = at.revision;
        let result = result_with_len(&state, true, Vec::new(), doc_json);
        inner.contexts.insert(id.to_string(), state);
        Ok(result)
    }
}
