//! The JSON Schema of a `json-schema` response format: bounded before it is compiled, and
//! compiled with linear-time regexes under a size limit, so that a small schema cannot make
//! the host spend seconds compiling patterns or validate an answer through exponentially many
//! `$ref` paths: a `$ref` names only `#/$defs/<name>` and references never recurse, so the
//! work of a validation is bounded by the schema's size times the answer's.

use serde_json::Value;

/// Most nodes (objects, arrays and values) in a schema.
pub const MAX_NODES: usize = 2_048;
/// Deepest nesting of a schema.
pub const MAX_DEPTH: usize = 32;
/// Most `$ref`s in a schema (with `allOf` fan-out, the paths a validation walks grow with
/// their number: at 16 they stay in the tens of thousands).
pub const MAX_REFS: usize = 16;
/// Most regexes (`pattern` values and `patternProperties` keys) in a schema.
pub const MAX_PATTERNS: usize = 16;
/// Longest regex, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// Largest compiled regex (the `regex` crate's size limits), in bytes.
pub const MAX_COMPILED_REGEX_BYTES: usize = 256 << 10;

struct Count {
    nodes: usize,
    refs: usize,
    patterns: usize,
}

fn walk(v: &Value, depth: usize, c: &mut Count) -> Result<(), String> {
    c.nodes += 1;
    if c.nodes > MAX_NODES {
        return Err(format!("more than {MAX_NODES} nodes"));
    }
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH}"));
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref" | "$dynamicRef" | "$recursiveRef", _) => {
                        c.refs += 1;
                        if c.refs > MAX_REFS {
                            return Err(format!("more than {MAX_REFS} `$ref`s"));
                        }
                    }
                    ("pattern", Value::String(p)) => pattern(p, c)?,
                    ("patternProperties", Value::Object(props)) => {
                        for p in props.keys() {
                            pattern(p, c)?;
                        }
                    }
                    _ => {}
                }
                walk(v, depth + 1, c)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                walk(v, depth + 1, c)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn pattern(p: &str, c: &mut Count) -> Result<(), String> {
    c.patterns += 1;
    if c.patterns > MAX_PATTERNS {
        return Err(format!("more than {MAX_PATTERNS} patterns"));
    }
    if p.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "a pattern of {} bytes; at most {MAX_PATTERN_BYTES}",
            p.len()
        ));
    }
    Ok(())
}

/// The definition names of `#/$defs/<name>` (or `#/definitions/<name>`) references under `v`;
/// `Err` for a reference of any other form.
fn refs_under(v: &Value, out: &mut Vec<String>) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if matches!(k.as_str(), "$ref" | "$dynamicRef" | "$recursiveRef") {
                    let target = v.as_str().unwrap_or_default();
                    let name = target
                        .strip_prefix("#/$defs/")
                        .or_else(|| target.strip_prefix("#/definitions/"))
                        .filter(|n| !n.is_empty() && !n.contains('/'))
                        .ok_or_else(|| {
                            format!(
                                "`{}`: a `$ref` may name only `#/$defs/<name>`",
                                super::providers::cap(target, 64)
                            )
                        })?;
                    out.push(name.to_string());
                } else {
                    refs_under(v, out)?;
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                refs_under(v, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses references that recurse: with recursion, the work of validating an answer grows
/// exponentially with the answer's depth (two `$ref`s to the root double it per level).
fn no_recursion(schema: &Value) -> Result<(), String> {
    let mut defs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for key in ["$defs", "definitions"] {
        if let Some(Value::Object(map)) = schema.get(key) {
            for (name, def) in map {
                let mut refs = Vec::new();
                refs_under(def, &mut refs)?;
                defs.insert(name.clone(), refs);
            }
        }
    }
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.remove("$defs");
        map.remove("definitions");
    }
    let mut from_root = Vec::new();
    refs_under(&root, &mut from_root)?;
    // Depth-first over the definitions: 0 unseen, 1 on the path, 2 done.
    fn visit(
        name: &str,
        defs: &std::collections::BTreeMap<String, Vec<String>>,
        state: &mut std::collections::BTreeMap<String, u8>,
    ) -> Result<(), String> {
        match state.get(name) {
            Some(1) => return Err(format!("`$defs/{name}` refers to itself (recursion)")),
            Some(_) => return Ok(()),
            None => {}
        }
        let refs = defs
            .get(name)
            .ok_or_else(|| format!("`$ref` to `$defs/{name}`, which is not defined"))?;
        state.insert(name.to_string(), 1);
        for r in refs {
            visit(r, defs, state)?;
        }
        state.insert(name.to_string(), 2);
        Ok(())
    }
    let mut state = Default::default();
    for r in from_root.iter().chain(defs.keys()) {
        visit(r, &defs, &mut state)?;
    }
    Ok(())
}

/// `schema` checked against the bounds above (and without recursive `$ref`s) and compiled;
/// `Err` says which bound or why it does not compile.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object".into());
    }
    walk(
        schema,
        0,
        &mut Count {
            nodes: 0,
            refs: 0,
            patterns: 0,
        },
    )?;
    no_recursion(schema)?;
    jsonschema::options()
        .with_pattern_options(
            jsonschema::PatternOptions::regex()
                .size_limit(MAX_COMPILED_REGEX_BYTES)
                .dfa_size_limit(MAX_COMPILED_REGEX_BYTES),
        )
        .build(schema)
        .map_err(|e| {
            format!(
                "is not a usable JSON Schema: {}",
                super::providers::cap(&e.to_string(), 200)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_bound_holds_at_its_edge() {
        let refs = |n: usize| {
            let props: serde_json::Map<String, Value> = (0..n)
                .map(|i| (format!("p{i}"), json!({"$ref": "#/$defs/x"})))
                .collect();
            json!({"type": "object", "properties": props, "$defs": {"x": {"type": "string"}}})
        };
        assert!(compile(&refs(MAX_REFS)).is_ok());
        assert!(compile(&refs(MAX_REFS + 1)).unwrap_err().contains("$ref"));
        let patterns = |n: usize| {
            let props: serde_json::Map<String, Value> = (0..n)
                .map(|i| {
                    (
                        format!("p{i}"),
                        json!({"type": "string", "pattern": "^a+$"}),
                    )
                })
                .collect();
            json!({"type": "object", "properties": props})
        };
        assert!(compile(&patterns(MAX_PATTERNS)).is_ok());
        assert!(
            compile(&patterns(MAX_PATTERNS + 1))
                .unwrap_err()
                .contains("patterns")
        );
        let mut deep = json!({"type": "string"});
        for _ in 0..MAX_DEPTH / 2 {
            deep = json!({"items": deep});
        }
        assert!(compile(&deep).is_ok());
        for _ in 0..MAX_DEPTH / 2 + 1 {
            deep = json!({"items": deep});
        }
        assert!(compile(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn recursive_references_are_refused_and_shared_ones_are_not() {
        let to_root = json!({"items": {"allOf": [{"$ref": "#"}, {"$ref": "#"}]}});
        assert!(compile(&to_root).unwrap_err().contains("$defs"));
        let cycle = json!({"$defs": {"a": {"items": {"$ref": "#/$defs/b"}},
                                     "b": {"items": {"$ref": "#/$defs/a"}}},
                           "$ref": "#/$defs/a"});
        assert!(compile(&cycle).unwrap_err().contains("itself"));
        let shared = json!({"$defs": {"s": {"type": "string"}},
                            "properties": {"a": {"$ref": "#/$defs/s"}, "b": {"$ref": "#/$defs/s"}}});
        assert!(compile(&shared).is_ok());
        let missing = json!({"$ref": "#/$defs/nowhere"});
        assert!(compile(&missing).unwrap_err().contains("not defined"));
    }

    #[test]
    fn a_regex_too_large_to_compile_small_is_refused() {
        let s = json!({"type": "string", "pattern": "\\p{L}{200}"});
        assert!(compile(&s).is_err());
        assert!(compile(&json!({"type": "string", "pattern": "^[a-z]{1,8}$"})).is_ok());
    }
}
