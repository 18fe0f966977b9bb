//! Field-level changes: JSON Pointer set/remove, JSON merge patch (RFC 7396), and the diff
//! between two documents, all normalized to a list of [`FieldChange`]s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One field change: set `path` to `value`, or remove it when `value` is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// JSON Pointer (`""` is the whole document).
    pub path: String,
    /// New value; `None` removes the field.
    pub value: Option<Value>,
}

/// A JSON Pointer operation as sent by agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum PointerOp {
    /// Set `path` to `value`, creating parent objects as needed.
    Set {
        /// JSON Pointer.
        path: String,
        /// Value.
        value: Value,
    },
    /// Remove `path`.
    Remove {
        /// JSON Pointer.
        path: String,
    },
}

/// Why a change cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The pointer is not valid JSON Pointer syntax.
    #[error("`{0}` is not a JSON Pointer (it must be empty or start with `/`)")]
    BadPointer(String),
    /// A parent on the path is not an object.
    #[error("cannot set `{0}`: a parent is not an object")]
    NotAnObject(String),
    /// The document is nested deeper than the host parses.
    #[error("document is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Deepest nesting the host walks for a guest.
pub const MAX_DEPTH: usize = 64;

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn tokens(path: &str) -> Result<Vec<String>, PatchError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| PatchError::BadPointer(path.to_string()))?;
    let t: Vec<String> = rest.split('/').map(unescape).collect();
    if t.len() > MAX_DEPTH {
        return Err(PatchError::TooDeep);
    }
    Ok(t)
}

/// Applies one change to `doc`.
pub fn apply(doc: &mut Value, change: &FieldChange) -> Result<(), PatchError> {
    let toks = tokens(&change.path)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = change.value.clone().unwrap_or(Value::Null);
        return Ok(());
    };
    let mut cur = doc;
    for t in parents {
        if cur.is_null() && change.value.is_some() {
            *cur = Value::Object(Map::new());
        }
        let obj = match cur {
            Value::Object(o) => o,
            _ if change.value.is_none() => return Ok(()),
            _ => return Err(PatchError::NotAnObject(change.path.clone())),
        };
        cur = match change.value {
            Some(_) => obj.entry(t.clone()).or_insert(Value::Null),
            None => match obj.get_mut(t) {
                Some(v) => v,
                None => return Ok(()),
            },
        };
    }
    if cur.is_null() && change.value.is_some() {
        *cur = Value::Object(Map::new());
    }
    match (cur, &change.value) {
        (Value::Object(o), Some(v)) => {
            o.insert(last.clone(), v.clone());
        }
        (Value::Object(o), None) => {
            o.remove(last);
        }
        (_, None) => {}
        (_, Some(_)) => return Err(PatchError::NotAnObject(change.path.clone())),
    }
    Ok(())
}

/// Applies changes in order.
pub fn apply_all(doc: &mut Value, changes: &[FieldChange]) -> Result<(), PatchError> {
    changes.iter().try_for_each(|c| apply(doc, c))
}

/// The value at `path`, if any.
pub fn get<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    doc.pointer(path)
}

/// Pointer operations as changes (validating the pointers).
pub fn from_pointer_ops(ops: &[PointerOp]) -> Result<Vec<FieldChange>, PatchError> {
    ops.iter()
        .map(|op| {
            let (path, value) = match op {
                PointerOp::Set { path, value } => (path, Some(value.clone())),
                PointerOp::Remove { path } => (path, None),
            };
            tokens(path)?;
            Ok(FieldChange {
                path: path.clone(),
                value,
            })
        })
        .collect()
}

/// A merge patch (RFC 7396) as changes: objects recurse, `null` removes, anything else sets.
pub fn from_merge_patch(patch: &Value) -> Result<Vec<FieldChange>, PatchError> {
    fn walk(
        prefix: &str,
        patch: &Value,
        out: &mut Vec<FieldChange>,
        depth: usize,
    ) -> Result<(), PatchError> {
        if depth > MAX_DEPTH {
            return Err(PatchError::TooDeep);
        }
        match patch {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = format!("{prefix}/{}", escape(k));
                    match v {
                        Value::Null => out.push(FieldChange { path, value: None }),
                        Value::Object(_) => walk(&path, v, out, depth + 1)?,
                        _ => out.push(FieldChange {
                            path,
                            value: Some(v.clone()),
                        }),
                    }
                }
                Ok(())
            }
            other => {
                out.push(FieldChange {
                    path: prefix.to_string(),
                    value: Some(other.clone()),
                });
                Ok(())
            }
        }
    }
    let mut out = Vec::new();
    walk("", patch, &mut out, 0)?;
    Ok(out)
}

/// The changes that turn `old` into `new`: objects are compared key by key, recursively;
/// anything else (arrays, scalars) is one field.
pub fn diff(old: &Value, new: &Value) -> Result<Vec<FieldChange>, PatchError> {
    fn walk(
        prefix: &str,
        old: &Value,
        new: &Value,
        out: &mut Vec<FieldChange>,
        depth: usize,
    ) -> Result<(), PatchError> {
        if depth > MAX_DEPTH {
            return Err(PatchError::TooDeep);
        }
        match (old, new) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, va) in a {
                    let path = format!("{prefix}/{}", escape(k));
                    match b.get(k) {
                        None => out.push(FieldChange { path, value: None }),
                        Some(vb) => walk(&path, va, vb, out, depth + 1)?,
                    }
                }
                for (k, vb) in b {
                    if !a.contains_key(k) {
                        out.push(FieldChange {
                            path: format!("{prefix}/{}", escape(k)),
                            value: Some(vb.clone()),
                        });
                    }
                }
                Ok(())
            }
            (a, b) if a == b => Ok(()),
            (_, b) => {
                out.push(FieldChange {
                    path: prefix.to_string(),
                    value: Some(b.clone()),
                });
                Ok(())
            }
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out, 0)?;
    Ok(out)
}

/// Whether two fields overlap: equal, or one contains the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    fn contains(outer: &str, inner: &str) -> bool {
        inner.starts_with(outer)
            && (outer.len() == inner.len() || inner.as_bytes()[outer.len()] == b'/')
    }
    contains(a, b) || contains(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn diff_then_apply_reproduces_the_new_document() {
        let old = json!({"a": 1, "b": {"c": [1, 2], "d": "x"}, "gone": true});
        let new = json!({"a": 2, "b": {"c": [1, 2], "e": null}, "n/ew~": {"x": 1}});
        let changes = diff(&old, &new).unwrap();
        let mut doc = old.clone();
        apply_all(&mut doc, &changes).unwrap();
        assert_eq!(doc, new);
        let paths: Vec<_> = changes.iter().map(|c| c.path.as_str()).collect();
        assert!(paths.contains(&"/b/d") && paths.contains(&"/n~1ew~0") && paths.contains(&"/gone"));
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut doc = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"}, "tags": ["example", "sample"], "content": "x"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123", "author": {"familyName": null}, "tags": ["example"]});
        apply_all(&mut doc, &from_merge_patch(&patch).unwrap()).unwrap();
        assert_eq!(
            doc,
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"], "content": "x", "phoneNumber": "+01-123"})
        );
    }

    #[test]
    fn pointer_ops_and_overlap() {
        let mut doc = json!({});
        let ops = vec![
            PointerOp::Set {
                path: "/a/b".into(),
                value: json!(1),
            },
            PointerOp::Remove { path: "/zz".into() },
        ];
        apply_all(&mut doc, &from_pointer_ops(&ops).unwrap()).unwrap();
        assert_eq!(doc, json!({"a": {"b": 1}}));
        assert!(matches!(
            from_pointer_ops(&[PointerOp::Remove { path: "a".into() }]),
            Err(PatchError::BadPointer(_))
        ));
        assert!(overlaps("/a", "/a/b") && overlaps("/a/b", "/a") && overlaps("", "/x"));
        assert!(!overlaps("/a", "/ab") && !overlaps("/a/b", "/a/c"));
        let mut scalar = json!({"a": 1});
        assert!(
            apply(
                &mut scalar,
                &FieldChange {
                    path: "/a/b".into(),
                    value: Some(json!(1))
                }
            )
            .is_err()
        );
    }
}
