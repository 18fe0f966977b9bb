//! The operations `qi-host serve` offers, as MCP tools and as `POST /v1/tools/<name>`: their
//! argument shapes (each a JSON Schema, generated from the types here) and descriptions.
//!
//! Arguments are objects with snake_case fields; an unknown field is an error, as is a
//! value of the wrong type. Sizes are bounded ([`crate::serve::config::ServeLimits`]
//! `max_argument_bytes` for the whole call; the bounds below per field).

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Most entries a listing returns at once (`limit` fields).
pub const MAX_LIST: usize = 1_000;

/// `list_agents`: no arguments.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListAgentsArgs {}

/// Limits a request may lower (never raise past the registered spec).
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NarrowLimits {
    /// CPU budget, fuel units.
    pub fuel: Option<u64>,
    /// Memory cap, MiB.
    pub max_memory_mb: Option<u32>,
    /// Wall-clock limit, ms.
    pub max_execution_time_ms: Option<u64>,
    /// Tool-call budget.
    pub max_tool_calls: Option<u32>,
    /// File-operation budget.
    pub max_file_operations: Option<u32>,
}

/// What happens to a call's work when its client goes away before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDisconnect {
    /// The work goes on; its result is kept (`run_status`).
    Continue,
    /// The work is stopped.
    Cancel,
}

/// `run_agent`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAgentArgs {
    /// A registered agent's name (see `list_agents`); never a path.
    pub agent: String,
    /// What the agent should do (at most 64 KiB).
    pub task: String,
    /// The task's input (any JSON; default null).
    #[serde(default)]
    pub input: Value,
    /// Lower limits for this run.
    #[serde(default)]
    pub limits: Option<NarrowLimits>,
    /// Default `cancel`: the agent is terminated when the client goes away.
    #[serde(default)]
    pub on_disconnect: Option<OnDisconnect>,
}

/// `run_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunTaskArgs {
    /// A registered manifest's name (see `list_agents`); never a path.
    pub manifest: String,
    /// Values for the manifest's literal inputs, keyed `<subtask>.<input>` (at most 256).
    #[serde(default)]
    pub inputs: BTreeMap<String, Value>,
    /// Wait for the result (default true; progress arrives as MCP progress notifications).
    /// With false, the answer is the run id at once.
    #[serde(default)]
    pub wait: Option<bool>,
    /// Default `continue`: the run goes on when the client goes away.
    #[serde(default)]
    pub on_disconnect: Option<OnDisconnect>,
}

/// `plan_task`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanTaskArgs {
    /// A registered manifest's name.
    pub manifest: String,
}

/// `run_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunStatusArgs {
    /// The run id `run_task` returned.
    pub run_id: String,
}

/// `terminate`: exactly one of `run_id` and `agent_id`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TerminateArgs {
    /// A run of this client (any run for the operator).
    #[serde(default)]
    pub run_id: Option<String>,
    /// An agent `run_agent` started for this client (any for the operator).
    #[serde(default)]
    pub agent_id: Option<String>,
}

/// `context_get` and `context_history`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextIdArgs {
    /// The context id.
    pub id: String,
    /// `context_history` only: how many versions, newest first (1 to 1,000; default 20).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `context_put`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextPutArgs {
    /// The context id.
    pub id: String,
    /// The new document.
    pub doc: Value,
    /// The version the writer read (required by the `strong`, `eventual` and `causal`
    /// strategies; see `context_get`).
    #[serde(default)]
    pub base_version: Option<u64>,
    /// Create the context with this type when it does not exist.
    #[serde(default)]
    pub context_type: Option<String>,
}

/// `context_patch`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextPatchArgs {
    /// The context id.
    pub id: String,
    /// A JSON merge patch (RFC 7396).
    pub patch: Value,
    /// The version the writer read.
    #[serde(default)]
    pub base_version: Option<u64>,
}

/// `context_list`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContextListArgs {
    /// Only this context type.
    #[serde(default)]
    pub context_type: Option<String>,
    /// Only contexts owned by this agent.
    #[serde(default)]
    pub owner: Option<String>,
}

/// `events_tail`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsTailArgs {
    /// The context whose events.
    pub context: String,
    /// Events after this sequence number (default: the newest `limit`).
    #[serde(default)]
    pub after: Option<u64>,
    /// How many (1 to 1,000; default 50).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `audit_query`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQueryArgs {
    /// Agent glob, e.g. `client:*` (a caller that is not the operator sees only its own).
    #[serde(default)]
    pub agent: Option<String>,
    /// Resource glob, e.g. `context/plan*`.
    #[serde(default)]
    pub resource: Option<String>,
    /// Operation glob, e.g. `serve.*`.
    #[serde(default)]
    pub operation: Option<String>,
    /// `allow`, `deny` or `record`.
    #[serde(default)]
    pub decision: Option<String>,
    /// Recorded at or after, unix ms.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Recorded at or before, unix ms.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// The newest N matching entries (1 to 1,000; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One tool: name, one-line description, JSON Schema of its arguments.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolDef {
    /// Its name.
    pub name: &'static str,
    /// What it does.
    pub description: &'static str,
    /// Its arguments' JSON Schema.
    #[serde(rename = "inputSchema")]
    pub input_schema: Value,
}

fn schema<T: JsonSchema>() -> Value {
    let mut v = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        // An object schema with `properties` even when empty: some clients require it.
        o.entry("properties")
            .or_insert_with(|| Value::Object(Default::default()));
        o.insert("type".into(), Value::String("object".into()));
    }
    v
}

/// Every tool, in a stable order. Built once: the schemas are generated on first use and
/// shared after (a call checks its tool name against this list).
pub fn tools() -> &'static [ToolDef] {
    static TOOLS: std::sync::OnceLock<Vec<ToolDef>> = std::sync::OnceLock::new();
    TOOLS.get_or_init(build)
}

/// Whether `name` is one of the tools.
pub fn is_tool(name: &str) -> bool {
    tools().iter().any(|t| t.name == name)
}

fn build() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "list_agents",
            description: "List the registered agents (describe info and limit ceilings) and the registered manifests.",
            input_schema: schema::<ListAgentsArgs>(),
        },
        ToolDef {
            name: "run_agent",
            description: "Run a registered agent on one task in its own sandbox; returns its output and usage receipt.",
            input_schema: schema::<RunAgentArgs>(),
        },
        ToolDef {
            name: "run_task",
            description: "Run a registered multi-agent manifest; reports progress and returns the run id and, when done, its report.",
            input_schema: schema::<RunTaskArgs>(),
        },
        ToolDef {
            name: "plan_task",
            description: "Show how a registered manifest would be distributed, without running it.",
            input_schema: schema::<PlanTaskArgs>(),
        },
        ToolDef {
            name: "run_status",
            description: "Status of a run: state, progress, per-subtask states and, when done, its report.",
            input_schema: schema::<RunStatusArgs>(),
        },
        ToolDef {
            name: "terminate",
            description: "Stop a run (run_id) or an agent started by run_agent (agent_id).",
            input_schema: schema::<TerminateArgs>(),
        },
        ToolDef {
            name: "context_get",
            description: "Read a shared context: document, version, strategy, status.",
            input_schema: schema::<ContextIdArgs>(),
        },
        ToolDef {
            name: "context_put",
            description: "Replace a shared context's document (creates it when context_type is given and it does not exist).",
            input_schema: schema::<ContextPutArgs>(),
        },
        ToolDef {
            name: "context_patch",
            description: "Apply a JSON merge patch (RFC 7396) to a shared context.",
            input_schema: schema::<ContextPatchArgs>(),
        },
        ToolDef {
            name: "context_list",
            description: "List the shared contexts the caller may read.",
            input_schema: schema::<ContextListArgs>(),
        },
        ToolDef {
            name: "context_history",
            description: "A shared context's versions, newest first.",
            input_schema: schema::<ContextIdArgs>(),
        },
        ToolDef {
            name: "events_tail",
            description: "Events of one shared context, oldest first, after a sequence number or the newest ones.",
            input_schema: schema::<EventsTailArgs>(),
        },
        ToolDef {
            name: "audit_query",
            description: "Search the tamper-evident audit log.",
            input_schema: schema::<AuditQueryArgs>(),
        },
    ]
}

/// Parses a tool's arguments: a one-line error naming the tool and the field.
pub fn parse<T: serde::de::DeserializeOwned>(tool: &str, args: Value) -> Result<T, super::OpError> {
    let args = if args.is_null() {
        Value::Object(Default::default())
    } else {
        args
    };
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path.is_empty() {
            String::new()
        } else {
            format!(" field `{path}`:")
        };
        super::OpError::invalid(format!(
            "arguments of `{tool}`:{at} {}; see the tool's inputSchema",
            e.inner()
        ))
    })
}
