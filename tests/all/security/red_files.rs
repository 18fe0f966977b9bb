//! Red team: names are paths, so moving a directory renames every file inside it. A rule
//! written for what a directory holds (`file/workspace/secret/**`) must stop the move of the
//! directory (or of any directory above it) that would give those files a name it does not
//! cover.

use super::files::{OPEN, SECRET, Want, check, mount, probe, read};
use super::*;

/// Every file and tool allowed, except what `secret/` and `deep/a/secret/` hold.
const SECRET_TREE_DENIED: &str = r#"
[[policies]]
id = "tree"
[[policies.rules]]
effect = "allow"
resources = ["file/**", "tool/*"]
[[policies.rules]]
effect = "deny"
resources = ["file/workspace/secret/**", "file/workspace/deep/a/secret/**"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_directory_does_not_rename_the_files_a_rule_protects() {
    let s = secured(Some(SECRET_TREE_DENIED)).await;
    let dir = mount();
    let root = dir.path();
    std::fs::create_dir_all(root.join("deep/a/secret")).unwrap();
    std::fs::write(root.join("deep/a/secret/x"), SECRET).unwrap();
    use Want::{Denied, Ok};
    let steps: Vec<(Value, Want)> = vec![
        // The canaries are out of reach under their names.
        (json!(["open", "root", "secret/x", "r", "x"]), Denied),
        (json!(["open", "root", "deep/a/secret/x", "r", "x"]), Denied),
        // Moving the directory that holds them (or one above it) would rename them.
        (json!(["rename", "root", "secret", "moved"]), Denied),
        (
            json!(["open", "root", "moved/x", "r", "x"]),
            Want::Value("not-present"),
        ),
        (json!(["rename", "root", "deep", "up"]), Denied),
        (json!(["rename", "root", "deep/a", "deep/b"]), Denied),
        (json!(["rename", "root", "./deep/a/", "deep/c"]), Denied),
        // A directory without protected files moves as before.
        (json!(["rename", "root", "open", "open2"]), Ok),
        (json!(["open", "root", "open2/a", "r", "a"]), Ok),
        (json!(["read", "a"]), Want::Value(OPEN)),
    ];
    let (_, results) = probe(
        &s,
        granted(root),
        steps.iter().map(|(step, _)| step.clone()).collect(),
    )
    .await;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| {
            if r["error"] == "no-entry" {
                json!({"ok": false, "value": "not-present"})
            } else {
                r
            }
        })
        .collect();
    check(&steps, &results);
    assert_eq!(read(root, "secret/x"), SECRET);
    assert_eq!(read(root, "deep/a/secret/x"), SECRET);
}

/// Every file and tool allowed, except what `secret/` holds (the directory may be listed).
const SECRET_FILES_DENIED: &str = r#"
[[policies]]
id = "contents"
[[policies.rules]]
effect = "allow"
resources = ["file/**", "tool/*"]
[[policies.rules]]
effect = "deny"
resources = ["file/workspace/secret/**"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_list_tells_no_size_the_stat_gate_refuses() {
    let s = secured(Some(SECRET_FILES_DENIED)).await;
    let dir = mount();
    let root = dir.path();
    let steps = vec![
        // What `stat-at` tells of the canary: nothing.
        json!(["stat-at", "root", "secret/x"]),
        json!(["stat-at", "root", "open/a"]),
        json!(["call", "fs.list", {"path": "/workspace/secret"}]),
        json!(["call", "fs.list", {"path": "/workspace/open"}]),
    ];
    let (_, results) = probe(&s, granted(root), steps).await;
    assert_eq!(results[0]["error"], "access", "{}", results[0]);
    assert_eq!(results[1]["value"], OPEN.len(), "{}", results[1]);
    let bytes = |listing: &Value, name: &str| {
        listing["value"]["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("{listing}"))
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {listing}"))["bytes"]
            .clone()
    };
    // The names are the directory's (`list` on it is allowed), the size is the file's.
    assert_eq!(bytes(&results[2], "x"), Value::Null, "{}", results[2]);
    assert_eq!(bytes(&results[3], "a"), json!(OPEN.len()), "{}", results[3]);
}
