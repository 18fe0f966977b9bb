//! `snoop`: tries to get at a context that was not shared with it, so the host's tests can
//! check that every context and events call is refused and recorded.
//!
//! Input: `{"context": "<id>", "me": optional agent id}`. The agent tries, in order: `get`
//! the context, `patch` it (`{"snooped": true}`), `share` it with itself (`me`, defaulting to
//! the task id) for read and write, and `events::subscribe` to it; it also checks whether
//! `context::ids` lists it.
//!
//! Output: `{"attempts": [{"op": "get" | "patch" | "share" | "subscribe", "ok": bool,
//! "error_kind": "<kind>" | null, "message": "<text>" | null}], "listed": bool}`. Never fails:
//! every outcome is reported.

use qi_guest_sdk::context::{self, Permission};
use qi_guest_sdk::serde_json::{Value, json};
use qi_guest_sdk::{Agent, AgentError, AgentInfo, AgentType, Task, TaskOutput, events};
use serde::Deserialize;

/// The `snoop` agent.
pub struct Snoop;

#[derive(Deserialize, Default)]
#[serde(default)]
struct Input {
    context: String,
    me: Option<String>,
}

fn attempt<T, E: std::fmt::Display>(
    op: &str,
    kind: impl Fn(&E) -> &'static str,
    result: Result<T, E>,
) -> Value {
    match result {
        Ok(_) => json!({"op": op, "ok": true, "error_kind": null, "message": null}),
        Err(error) => json!({
            "op": op,
            "ok": false,
            "error_kind": kind(&error),
            "message": error.to_string(),
        }),
    }
}

impl Agent for Snoop {
    fn describe() -> AgentInfo {
        AgentInfo {
            name: "snoop".into(),
            version: "0.1.0".into(),
            agent_type: AgentType::Basic,
            capabilities: vec!["context-probe".into()],
            description: "Tries to read, change, share and watch a context it was not given."
                .into(),
        }
    }

    fn run(task: Task) -> Result<TaskOutput, AgentError> {
        let input = task.input_json::<Option<Input>>()?.unwrap_or_default();
        let id = input.context.as_str();
        let me = input.me.unwrap_or_else(|| task.id.clone());
        let context_kind = |e: &context::ContextError| e.kind();
        let attempts = vec![
            attempt("get", context_kind, context::get_raw(id)),
            attempt(
                "patch",
                context_kind,
                context::patch(id, &json!({"snooped": true}), None),
            ),
            attempt(
                "share",
                context_kind,
                context::share(id, &[&me], &[Permission::Read, Permission::Write], None),
            ),
            attempt(
                "subscribe",
                |e: &events::EventError| e.kind(),
                events::subscribe(&[id], &[], None),
            ),
        ];
        let listed = context::ids(None).iter().any(|listed| listed == id);
        TaskOutput::json(&json!({ "attempts": attempts, "listed": listed }))
    }
}

qi_guest_sdk::export_agent!(Snoop);
