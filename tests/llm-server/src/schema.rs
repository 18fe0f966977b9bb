//! A minimal value valid for a simple JSON Schema: what the default reply answers when a request
//! asks for structured output.

use serde_json::{Map, Value, json};

/// How deep subschemas and `$ref`s are followed; past it the value is `null`. Bounds the work on
/// a recursive schema (a tree type whose `$ref` points back at itself).
const MAX_DEPTH: usize = 32;

/// A small value that satisfies `schema` when the schema is simple: the `const`, or the first
/// `enum` value; for an object every property in `properties`; strings `"x"` (repeated to
/// `minLength`); arrays of `minItems` minimal items (empty by default); numbers `minimum` or 0;
/// booleans `false`. `anyOf`/`oneOf`/`allOf` use their first subschema and local `$ref`s
/// (`#/$defs/...`, `#/definitions/...`) are followed. Anything else is `null`.
pub(crate) fn minimal_value(schema: &Value) -> Value {
    minimal(schema, schema, 0)
}

fn minimal(schema: &Value, root: &Value, depth: usize) -> Value {
    let Some(schema) = schema.as_object() else {
        return Value::Null;
    };
    if depth > MAX_DEPTH {
        return Value::Null;
    }
    if let Some(value) = schema.get("const") {
        return value.clone();
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|values| values.first())
    {
        return first.clone();
    }
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return match reference.strip_prefix('#').and_then(|p| root.pointer(p)) {
            Some(target) => minimal(target, root, depth + 1),
            None => Value::Null,
        };
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(first) = schema
            .get(combinator)
            .and_then(Value::as_array)
            .and_then(|subschemas| subschemas.first())
        {
            return minimal(first, root, depth + 1);
        }
    }
    let declared_type = match schema.get("type") {
        Some(Value::String(name)) => Some(name.as_str()),
        Some(Value::Array(names)) => names.first().and_then(Value::as_str),
        _ => None,
    };
    let implied_type = schema.contains_key("properties").then_some("object");
    let bound = |key: &str| {
        let declared = schema.get(key).and_then(Value::as_u64);
        declared.and_then(|n| usize::try_from(n).ok()).unwrap_or(0)
    };
    match declared_type.or(implied_type) {
        Some("object") => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let values: Map<String, Value> = properties
                .into_iter()
                .flatten()
                .map(|(name, property)| (name.clone(), minimal(property, root, depth + 1)))
                .collect();
            Value::Object(values)
        }
        Some("array") => {
            let item = schema
                .get("items")
                .map_or(Value::Null, |items| minimal(items, root, depth + 1));
            Value::Array(vec![item; bound("minItems")])
        }
        Some("string") => Value::String("x".repeat(bound("minLength").max(1))),
        Some("integer" | "number") => schema
            .get("minimum")
            .filter(|minimum| minimum.is_number())
            .cloned()
            .unwrap_or(json!(0)),
        Some("boolean") => Value::Bool(false),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::minimal_value;
    use serde_json::json;

    #[test]
    fn simple_object_gets_first_enum_value_and_typed_defaults() {
        let schema = json!({
            "type": "object",
            "properties": {
                "verdict": {"type": "string", "enum": ["approve", "reject"]},
                "summary": {"type": "string"},
                "findings": {"type": "array", "items": {"type": "string"}},
                "score": {"type": "number"},
                "count": {"type": "integer", "minimum": 1},
                "blocking": {"type": "boolean"},
                "note": {"type": ["string", "null"]}
            },
            "required": ["verdict", "summary", "findings", "score", "count", "blocking", "note"],
            "additionalProperties": false
        });
        assert_eq!(
            minimal_value(&schema),
            json!({
                "verdict": "approve",
                "summary": "x",
                "findings": [],
                "score": 0,
                "count": 1,
                "blocking": false,
                "note": "x"
            })
        );
    }

    #[test]
    fn local_refs_are_followed_and_recursion_is_bounded() {
        let schema = json!({
            "type": "object",
            "properties": {
                "child": {"$ref": "#/$defs/Node"},
                "tags": {"type": "array", "minItems": 2, "items": {"const": "t"}},
                "code": {"type": "string", "minLength": 3}
            },
            "$defs": {
                "Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}
            }
        });
        let value = minimal_value(&schema);
        assert_eq!(value["tags"], json!(["t", "t"]));
        assert_eq!(value["code"], json!("xxx"));
        let mut node = &value["child"];
        let mut depth = 0;
        while node.is_object() {
            node = &node["next"];
            depth += 1;
        }
        assert!((2..=super::MAX_DEPTH).contains(&depth), "depth {depth}");
        assert!(node.is_null());
    }
}
