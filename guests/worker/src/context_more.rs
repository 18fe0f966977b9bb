//! The context calls of the `context_*` probe steps beyond get, put, patch, create, delete,
//! share, revoke and ids: patch with a base, pointer patch, history, rollback, resolve,
//! pending.

use crate::{field_text, field_value, number, text};
use qi_guest_sdk::context;
use qi_guest_sdk::serde_json::{Value, json};

/// The context calls of `Probe::ContextMore`; the outcome as `run_probe` records it.
pub(crate) fn context_more(call: &str, arg: &Value) -> Value {
    let outcome = (|| -> Result<Value, String> {
        let id = || field_text(arg, "id");
        let base = || -> Result<Option<u64>, String> {
            field_value(arg, "base")
                .ok()
                .map(|b| number(&b))
                .transpose()
        };
        let written = |r: Result<context::WriteResult, context::ContextError>| {
            r.map(|w| json!({"version": w.version, "new_version": w.new_version, "conflicts": w.conflict_values()}))
                .map_err(|e| e.to_string())
        };
        match call {
            "context_pointer_patch" => {
                let mut ops = Vec::new();
                for op in field_value(arg, "ops")?
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    let path = field_text(&op, "path")?;
                    ops.push(match field_text(&op, "op")?.as_str() {
                        "set" => context::PointerOp::set(&path, field_value(&op, "value")?),
                        "remove" => context::PointerOp::remove(&path),
                        other => return Err(format!("unknown pointer op `{other}`")),
                    });
                }
                written(context::pointer_patch(&id()?, &ops, base()?))
            }
            "context_patch_at" => {
                written(context::patch(&id()?, &field_value(arg, "doc")?, base()?))
            }
            "context_history" => {
                let limit = number(&field_value(arg, "limit")?)? as u32;
                context::history(&id()?, limit)
                    .map(|vs| {
                        json!(vs
                            .into_iter()
                            .map(|v| json!({"version": v.version, "agent": v.agent, "op": v.op, "doc": v.doc}))
                            .collect::<Vec<_>>())
                    })
                    .map_err(|e| e.to_string())
            }
            "context_rollback" => written(context::rollback(
                &id()?,
                number(&field_value(arg, "version")?)?,
            )),
            "context_resolve" => {
                let resolution = if let Ok(agent) = field_text(arg, "agent") {
                    context::Resolution::Agent(agent)
                } else if let Ok(Value::Object(fields)) = field_value(arg, "fields") {
                    context::Resolution::Fields(fields.into_iter().collect())
                } else {
                    context::Resolution::Document(field_value(arg, "document")?)
                };
                written(context::resolve(&id()?, &resolution))
            }
            "context_pending" => context::pending(&text(arg)?)
                .map(|p| p.unwrap_or(Value::Null))
                .map_err(|e| e.to_string()),
            other => Err(format!("unknown context call `{other}`")),
        }
    })();
    match outcome {
        Ok(value) => json!({"probe": call, "ok": true, "value": value}),
        Err(error) => json!({"probe": call, "ok": false, "error": error}),
    }
}
