//! `hostile` guest, `fs.ops`: quota and link walls attacked with sequences of ordinary calls
//! (a link hard-linked elsewhere, creates through a dangling link, a deep tree moved up) and
//! the host's `fs.write` tool against the agent's quotas.

use super::fs::{Sandbox, seen, writable};
use crate::common::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::{AgentReport, SubAgentSpecification};
use serde_json::{Value, json};

async fn ops(spec: SubAgentSpecification, input: Value) -> AgentReport {
    let mut input = input;
    input["mode"] = json!("fs.ops");
    run(HOSTILE_COMPONENT, spec, input).await
}

/// Whether each step of an `fs.ops` report passed.
#[track_caller]
fn passed(out: &Value) -> Vec<bool> {
    out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_bool().unwrap())
        .collect()
}

#[tokio::test]
async fn a_hard_link_to_a_symlink_is_checked_like_the_symlink_itself() {
    // `linkat` without AT_SYMLINK_FOLLOW gives the symlink itself a second name: a link that
    // is fine one level down (`a/l -> ../outside-file` reaches the root) leaves the mount
    // from the root.
    let sb = Sandbox::new();
    std::fs::create_dir(sb.mount().join("a")).unwrap();
    let report = ops(
        writable(&sb.mount()),
        json!({"ops": [
            ["symlink", "../outside-file", "/workspace/a/l"],
            ["hardlink", "/workspace/a/l", "/workspace/up"],
            ["hardlink", "/workspace/a/l", "/workspace/a/same-level"],
        ]}),
    )
    .await;
    let out = ok(&report);
    assert_eq!(passed(out), [true, false, true], "{out}");
    assert_eq!(out["error"]["kind"], "PermissionDenied", "{out}");
    assert!(std::fs::symlink_metadata(sb.mount().join("up")).is_err());
    assert_eq!(
        std::fs::read_link(sb.mount().join("a/same-level")).unwrap(),
        std::path::Path::new("../outside-file")
    );
    assert_eq!(report.usage.access_denied, 1);
    sb.assert_canary_untouched();
}

/// Files in the mount after a dangling link `l -> t` and `rounds` rounds of "create through
/// the link, rename `t` away", with `max_files_created`.
async fn create_through_a_link(max_files_created: u32, rounds: u64) -> (AgentReport, usize) {
    let sb = Sandbox::new();
    let mut s = writable(&sb.mount());
    s.resource_limits.max_files_created = max_files_created;
    let report = ops(
        s,
        json!({
            "ops": [["symlink", "t", "/workspace/l"]],
            "loop": [["create", "/workspace/l"], ["rename", "/workspace/t", "/workspace/f{i}"]],
            "repeat": rounds,
        }),
    )
    .await;
    let entries = std::fs::read_dir(sb.mount()).unwrap().count();
    (report, entries)
}

#[tokio::test]
async fn a_file_created_through_a_dangling_link_takes_a_file_unit() {
    // Inside: the link and two files are three entries.
    let (inside, entries) = create_through_a_link(3, 2).await;
    let out = ok(&inside);
    assert_eq!(out["refused"], 0, "{out}");
    assert_eq!(entries, 3);
    assert_eq!(inside.usage.files_created, 3);
    // One round more: the third create is refused, its rename finds nothing.
    let (past, entries) = create_through_a_link(3, 10).await;
    let out = ok(&past);
    assert_eq!(out["done"], 5, "{out}");
    assert_eq!(out["error"]["kind"], "QuotaExceeded", "{out}");
    assert_eq!(entries, 3, "no file beyond the quota");
    assert_eq!(past.usage.files_created, 3);
}

/// Moves `p/top` up to `top`, where `top` holds a chain of `depth` nested directories built
/// by the guest with short paths (each round nests the tree one level deeper).
async fn move_up_a_tree(depth: u64) -> (AgentReport, bool) {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.mount().join("p/top")).unwrap();
    let mut s = writable(&sb.mount());
    s.resource_limits.max_files_created = 100_000;
    s.resource_limits.max_file_operations = 1_000_000;
    let built = ops(
        s.clone(),
        json!({
            "loop": [
                ["mkdir", "/workspace/p/n"],
                ["rename", "/workspace/p/top", "/workspace/p/n/d"],
                ["rename", "/workspace/p/n", "/workspace/p/top"],
            ],
            "repeat": depth,
        }),
    )
    .await;
    assert_eq!(ok(&built)["refused"], 0);
    let moved = ops(
        s,
        json!({"ops": [["rename", "/workspace/p/top", "/workspace/top"]]}),
    )
    .await;
    let there = sb.mount().join("top").exists();
    (moved, there)
}

#[tokio::test]
async fn a_deep_tree_is_checked_without_recursion_and_refused_past_the_depth_limit() {
    // Thousands of levels: refused, and the host neither overflows its stack nor opens a
    // descriptor per level.
    let (deep, there) = move_up_a_tree(5_000).await;
    assert_eq!(ok(&deep)["error"]["kind"], "PermissionDenied");
    assert!(!there);
    let limit = qi_host::wasi::filesystem::MAX_MOVED_DEPTH as u64;
    let (inside, there) = move_up_a_tree(limit).await;
    assert_eq!(ok(&inside)["refused"], 0, "{:?}", inside.output);
    assert!(there);
    let (past, there) = move_up_a_tree(limit + 1).await;
    let out = ok(&past);
    assert_eq!(out["error"]["kind"], "PermissionDenied", "{out}");
    assert!(!there);
}

#[tokio::test]
async fn the_fs_write_tool_is_charged_against_the_disk_and_file_quotas() {
    let sb = Sandbox::new();
    let mut s = writable(&sb.mount());
    s.security_constraints.allowed_tools = vec!["fs.write".into()];
    s.resource_limits.max_disk_bytes = 1_000;
    s.resource_limits.max_files_created = 2;
    let write = |name: &str, bytes: usize| json!({"tool": "fs.write", "input": {"path": format!("/workspace/{name}"), "content": "w".repeat(bytes)}});
    let report = run(
        qi_guest_artifacts::TOOL_USER_COMPONENT,
        s,
        json!({"calls": [
            write("a", 999),
            write("b", 1),
            // One byte past the disk quota, into an existing file.
            write("a", 1_000),
            // A third file, empty: past the file quota.
            write("c", 0),
        ]}),
    )
    .await;
    let out = ok(&report);
    let results = out["results"].as_array().unwrap();
    assert_eq!(results[0]["ok"]["bytes"], 999, "{out}");
    assert_eq!(results[1]["ok"]["bytes"], 1, "{out}");
    for r in &results[2..] {
        assert_eq!(r["error"]["kind"], "limit-exceeded", "{out}");
    }
    assert!(
        results[2]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxDiskBytes"),
        "{out}"
    );
    assert!(
        results[3]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maxFilesCreated"),
        "{out}"
    );
    // The refused write left the file as it was; the refused create made nothing.
    assert_eq!(std::fs::metadata(sb.mount().join("a")).unwrap().len(), 999);
    assert!(!sb.mount().join("c").exists());
    assert_eq!(report.usage.disk_bytes_written, 1_000);
    assert_eq!(report.usage.files_created, 2);
}

#[tokio::test]
async fn waiting_with_a_full_handle_table_ends_the_agent_at_the_handle_limit() {
    let sb = Sandbox::new();
    std::fs::write(sb.mount().join("f"), "f").unwrap();
    let mut s = writable(&sb.mount());
    s.resource_limits.max_open_handles = 64;
    let hold = |count: u64, sleep_ms: u64| {
        run(
            HOSTILE_COMPONENT,
            s.clone(),
            json!({"mode": "fs.hold-handles", "path": "/workspace/f", "count": count, "sleep_ms": sleep_ms}),
        )
    };
    // Every handle the table has room for, with no refusal: then waiting needs one more
    // (two with wasi-libc's sleep: a pollable for the clock and one for `poll`).
    let room = seen(&hold(64, 0).await)["done"].as_u64().unwrap();
    let fits = hold(room - 2, 1).await;
    assert_eq!(ok(&fits)["done"], room - 2);
    let full = hold(room - 1, 1).await;
    let (limit, detail) = limit(&full);
    assert_eq!(limit, qi_host::LimitKind::OpenHandles, "{detail}");
    assert!(
        detail.contains("maxOpenHandles = 64") && detail.contains("handle table is full"),
        "{detail}"
    );
}

/// A spec with `rw` mounted read-write at `/workspace` and `ro` read-only at `/data`.
fn two_mounts(rw: &std::path::Path, ro: &std::path::Path) -> SubAgentSpecification {
    let mut s = writable(rw);
    s.directories.push(qi_host::DirectoryGrant {
        host_path: ro.to_path_buf(),
        guest_path: "/data".into(),
        writable: Some(false),
    });
    s
}

#[tokio::test]
async fn a_read_only_grant_inside_a_writable_one_is_refused_at_spawn() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.mount().join("ro")).unwrap();
    std::fs::write(sb.mount().join("ro/secret"), "read-only data").unwrap();
    let hostile = load(HOSTILE_COMPONENT);
    // Beside each other: fine.
    let beside = tempfile::tempdir().unwrap();
    host()
        .spawn(&hostile, two_mounts(&sb.mount(), beside.path()))
        .await
        .expect("separate mounts spawn");
    // Inside, or the same directory (also through a link): the read-only data would be
    // writable through `/workspace`.
    std::os::unix::fs::symlink(sb.mount(), sb.root.path().join("alias")).unwrap();
    for ro in [
        sb.mount().join("ro"),
        sb.mount(),
        sb.root.path().join("alias/ro"),
    ] {
        let err = host()
            .spawn(&hostile, two_mounts(&sb.mount(), &ro))
            .await
            .err()
            .unwrap_or_else(|| panic!("{} spawned", ro.display()));
        assert_eq!(err.category(), qi_host::ErrorCategory::Validation, "{err}");
        let message = err.to_string();
        assert!(
            message.contains("directories[1]") && message.contains("read-write"),
            "{message}"
        );
    }
    // A writable grant inside a read-only one is fine: the inner part is writable anyway.
    host()
        .spawn(&hostile, two_mounts(&sb.mount().join("ro"), &sb.mount()))
        .await
        .expect("read-write inside read-only spawns");
}
