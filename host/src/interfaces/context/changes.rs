//! The calls of `qi:agent/context` that change or read a context's history and conflicts:
//! pointer patch, history, rollback, resolve, pending.

use super::super::AgentState;
use super::super::limits::{self, MAX_DOCUMENT_BYTES};
use super::super::qi;
use super::{admit_write, context_call, decided, parse_json, refused, written};
use crate::context::{Change, PointerOp, ResolveChoice};
use qi::agent::context::{
    ContextError as WitContextError, PointerOp as WitPointerOp, ResolveChoice as WitResolveChoice,
    VersionInfo, WriteResult as WitWriteResult,
};
use std::time::Instant;

/// Most operations one `pointer-patch` carries.
pub const MAX_POINTER_OPS: usize = 1_024;

/// Most versions one `history` call returns.
pub const MAX_HISTORY_VERSIONS: u32 = 64;

fn pointer_op_bytes(op: &WitPointerOp) -> usize {
    match op {
        WitPointerOp::Set(s) => s.path.len() + s.value.len(),
        WitPointerOp::Remove(path) => path.len(),
    }
}

impl AgentState {
    pub(super) async fn context_pointer_patch(
        &mut self,
        id: String,
        ops: Vec<WitPointerOp>,
        base_version: Option<u64>,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes: usize = ops.iter().map(pointer_op_bytes).sum();
        let r = async {
            let call = "context.pointer-patch";
            let (svc, me) = context_call(&shared, call).await?;
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            limits::items(&shared, call, "ops", &ops, MAX_POINTER_OPS).map_err(refused)?;
            if bytes > MAX_DOCUMENT_BYTES {
                return Err(WitContextError::Invalid(format!(
                    "{call}: `ops` carry {bytes} bytes; the limit is {MAX_DOCUMENT_BYTES}"
                )));
            }
            limits::stored(&shared, call, "ops", bytes, 1).map_err(refused)?;
            admit_write(&shared, call, &id, "patch", bytes).await?;
            let mut parsed = Vec::with_capacity(ops.len());
            for (i, op) in ops.into_iter().enumerate() {
                parsed.push(match op {
                    WitPointerOp::Set(s) => PointerOp::Set {
                        value: parse_json(&format!("ops[{i}].value"), &s.value)?,
                        path: s.path,
                    },
                    WitPointerOp::Remove(path) => PointerOp::Remove { path },
                });
            }
            let r = svc
                .write(&me, &id, Change::Pointer(parsed), base_version)
                .await;
            written(&shared, bytes, r)
        }
        .await;
        self.finish_context("context.pointer-patch", &id, bytes, start, &r);
        r
    }

    pub(super) async fn context_history(
        &mut self,
        id: String,
        limit: u32,
    ) -> Result<Vec<VersionInfo>, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let call = "context.history";
            let (svc, me) = context_call(&shared, call).await?;
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            if !(1..=MAX_HISTORY_VERSIONS).contains(&limit) {
                return Err(WitContextError::Invalid(format!(
                    "{call}: `limit` is {limit}; it must be 1 to {MAX_HISTORY_VERSIONS}"
                )));
            }
            shared
                .gate("context", &id, "history")
                .map_err(WitContextError::AccessDenied)?;
            let versions = svc
                .history(&me, &id, limit as usize)
                .await
                .map_err(|e| decided(&shared, e))?;
            let mut out = Vec::new();
            let mut total = 0usize;
            for v in versions {
                let doc = v.doc.to_string();
                total += doc.len();
                if total > MAX_DOCUMENT_BYTES && !out.is_empty() {
                    break;
                }
                out.push(VersionInfo {
                    version: v.version,
                    revision: v.revision,
                    agent: v.agent_id,
                    op: v.op,
                    hlc: v.hlc.to_string(),
                    doc,
                });
            }
            Ok(out)
        }
        .await;
        self.finish_context("context.history", &id, id.len(), start, &r);
        r
    }

    pub(super) async fn context_rollback(
        &mut self,
        id: String,
        version: u64,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let call = "context.rollback";
            let (svc, me) = context_call(&shared, call).await?;
            limits::ids(&shared, call, "id", [&id])
                .and_then(|()| limits::stored(&shared, call, "id", 0, 1))
                .map_err(refused)?;
            admit_write(&shared, call, &id, "rollback", 0).await?;
            let r = svc.rollback(&me, &id, version).await;
            written(&shared, 0, r)
        }
        .await;
        self.finish_context("context.rollback", &id, id.len(), start, &r);
        r
    }

    pub(super) async fn context_resolve(
        &mut self,
        id: String,
        choice: WitResolveChoice,
    ) -> Result<WitWriteResult, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let bytes = match &choice {
            WitResolveChoice::Agent(s)
            | WitResolveChoice::Fields(s)
            | WitResolveChoice::Document(s) => s.len(),
        };
        let r = async {
            let call = "context.resolve";
            let (svc, me) = context_call(&shared, call).await?;
            limits::ids(&shared, call, "id", [&id]).map_err(refused)?;
            let choice = match choice {
                WitResolveChoice::Agent(agent) => {
                    limits::ids(&shared, call, "agent", [&agent]).map_err(refused)?;
                    ResolveChoice::Agent(agent)
                }
                WitResolveChoice::Fields(text) => {
                    limits::bytes(&shared, call, "fields", &text, MAX_DOCUMENT_BYTES)
                        .map_err(refused)?;
                    ResolveChoice::Fields(serde_json::from_str(&text).map_err(|e| {
                        WitContextError::Invalid(format!(
                            "`fields` must be a JSON object of JSON Pointer to value: {e}"
                        ))
                    })?)
                }
                WitResolveChoice::Document(text) => {
                    limits::bytes(&shared, call, "document", &text, MAX_DOCUMENT_BYTES)
                        .map_err(refused)?;
                    ResolveChoice::Document(parse_json("document", &text)?)
                }
            };
            limits::stored(&shared, call, "choice", bytes, 1).map_err(refused)?;
            admit_write(&shared, call, &id, "resolve", bytes).await?;
            let r = svc.resolve(&me, &id, choice).await;
            written(&shared, bytes, r)
        }
        .await;
        self.finish_context("context.resolve", &id, bytes, start, &r);
        r
    }

    pub(super) async fn context_pending(
        &mut self,
        id: String,
    ) -> Result<Option<String>, WitContextError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let call = "context.pending";
            let (svc, me) = context_call(&shared, call).await?;
            limits::ids(&shared, call, "id", [&id])
                .and_then(|()| limits::stored(&shared, call, "id", 0, 1))
                .map_err(refused)?;
            shared
                .gate("context", &id, "get")
                .map_err(WitContextError::AccessDenied)?;
            let view = svc.get(&me, &id).await.map_err(|e| decided(&shared, e))?;
            Ok(view.pending.map(|p| {
                serde_json::json!({
                    "fields": p.fields,
                    "values": p.values,
                    "conflictIds": p.conflict_ids,
                })
                .to_string()
            }))
        }
        .await;
        self.finish_context("context.pending", &id, id.len(), start, &r);
        r
    }
}
