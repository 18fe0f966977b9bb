//! The Cedar schema the host generates for policy conditions: one principal type (`Agent`),
//! one resource type (`Resource`), one action per operation name, and the request context.
//!
//! ```text
//! entity Agent = { id: String, name: String, kind: String, trust: Long,
//!                  capabilities: Set<String>, isolation: String };
//! entity Resource = { kind: String, id: String, name: String, type: String, owner: String,
//!                     labels: Set<String> };
//! action "get", "put", ... appliesTo { principal: Agent, resource: Resource,
//!                                      context: { rules: Set<String> } };
//! ```
//!
//! Every attribute is always present (a missing name, type or owner is `""`, missing labels
//! `[]`), so a condition never needs `has`.

use crate::model::ResourceKind;
use cedar_policy::Schema;
use serde_json::json;
use std::sync::OnceLock;

/// Resource kinds and the actions the host asks about for each (the `<kind>` of a resource
/// name `<kind>/<id>`).
pub const ACTIONS: &[(&str, &[&str])] = &[
    (
        ResourceKind::Context.as_str(),
        ResourceKind::Context.actions(),
    ),
    (
        ResourceKind::Events.as_str(),
        ResourceKind::Events.actions(),
    ),
    (ResourceKind::Sync.as_str(), ResourceKind::Sync.actions()),
    (
        ResourceKind::Channel.as_str(),
        ResourceKind::Channel.actions(),
    ),
    (ResourceKind::Tool.as_str(), ResourceKind::Tool.actions()),
    (ResourceKind::Llm.as_str(), ResourceKind::Llm.actions()),
    (ResourceKind::File.as_str(), ResourceKind::File.actions()),
    (
        ResourceKind::Network.as_str(),
        ResourceKind::Network.actions(),
    ),
    (ResourceKind::Agent.as_str(), ResourceKind::Agent.actions()),
    (ResourceKind::Run.as_str(), ResourceKind::Run.actions()),
    (ResourceKind::Audit.as_str(), ResourceKind::Audit.actions()),
];

/// Whether `kind` is a resource kind of [`ACTIONS`].
pub fn is_kind(kind: &str) -> bool {
    ACTIONS.iter().any(|(k, _)| *k == kind)
}

/// Every action name of [`ACTIONS`], once each, in table order.
pub fn action_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for (_, actions) in ACTIONS {
        for a in *actions {
            if !names.contains(a) {
                names.push(a);
            }
        }
    }
    names
}

/// The Cedar entity type of principals.
pub const AGENT_TYPE: &str = "Agent";
/// The Cedar entity type of resources.
pub const RESOURCE_TYPE: &str = "Resource";
/// The Cedar entity type of actions.
pub const ACTION_TYPE: &str = "Action";

/// The schema, built once.
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        Schema::from_json_value(schema_json()).expect("the generated policy schema is valid")
    })
}

/// The schema in Cedar's JSON schema format.
fn schema_json() -> serde_json::Value {
    {
        let string = || json!({"type": "String"});
        let strings = || json!({"type": "Set", "element": {"type": "String"}});
        let actions: serde_json::Map<String, serde_json::Value> = action_names()
            .into_iter()
            .map(|a| {
                (
                    a.to_string(),
                    json!({"appliesTo": {
                        "principalTypes": [AGENT_TYPE],
                        "resourceTypes": [RESOURCE_TYPE],
                        "context": {"type": "Record", "attributes": {"rules": strings()}},
                    }}),
                )
            })
            .collect();
        let schema = json!({"": {
            "entityTypes": {
                AGENT_TYPE: {"shape": {"type": "Record", "attributes": {
                    "id": string(), "name": string(), "kind": string(),
                    "trust": {"type": "Long"}, "capabilities": strings(), "isolation": string(),
                }}},
                RESOURCE_TYPE: {"shape": {"type": "Record", "attributes": {
                    "kind": string(), "id": string(), "name": string(), "type": string(),
                    "owner": string(), "labels": strings(),
                }}},
            },
            "actions": actions,
        }});
        schema
    }
}

/// The schema in Cedar's own syntax (what `qi-host policy check --schema` prints).
pub fn schema_text() -> String {
    cedar_policy::SchemaFragment::from_json_value(schema_json())
        .map_err(|e| e.to_string())
        .and_then(|f| f.to_cedarschema().map_err(|e| e.to_string()))
        .map(|t| t.replace("__cedar::", ""))
        .unwrap_or_else(|e| format!("// cannot print the schema: {e}"))
}
