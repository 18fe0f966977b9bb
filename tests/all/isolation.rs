//! Filesystem access modes and monitored isolation.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{DirectoryGrant, FileSystemAccess, IsolationLevel};
use serde_json::json;

fn fs_spec(
    dir: &std::path::Path,
    access: FileSystemAccess,
    writable: Option<bool>,
) -> qi_host::SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = IsolationLevel::Monitored;
    s.security_constraints.file_system_access = access;
    s.security_constraints.allowed_tools = vec!["fs.*".into()];
    s.directories.push(DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable,
    });
    s
}

fn write_call() -> serde_json::Value {
    json!({"calls": [{"tool": "fs.write", "input": {"path": "/workspace/out.txt", "content": "hi"}}]})
}

#[tokio::test]
async fn read_only_refuses_writes_even_when_the_grant_asks_for_rw() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::ReadOnly, Some(true)),
        write_call(),
    )
    .await;
    assert_eq!(ok(&report)["results"][0]["error"]["kind"], "access-denied");
    assert!(!dir.path().join("out.txt").exists());
}

#[tokio::test]
async fn restricted_writes_only_where_the_grant_says_rw() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::Restricted, None),
        write_call(),
    )
    .await;
    assert_eq!(ok(&report)["results"][0]["error"]["kind"], "access-denied");

    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::Restricted, Some(true)),
        write_call(),
    )
    .await;
    assert!(ok(&report)["results"][0]["ok"].is_object());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "hi"
    );
}

#[tokio::test]
async fn filesystem_write_prohibition_beats_a_rw_grant() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = fs_spec(dir.path(), FileSystemAccess::Full, Some(true));
    s.security_constraints.prohibited_operations = vec!["filesystem-write".into()];
    let report = run(TOOL_USER_COMPONENT, s, write_call()).await;
    assert_eq!(ok(&report)["results"][0]["error"]["kind"], "access-denied");
    assert!(!dir.path().join("out.txt").exists());
}

#[tokio::test]
async fn file_tools_cannot_leave_the_workspace() {
    let outer = tempfile::tempdir().unwrap();
    let ws = outer.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    const CANARY: &str = "CANARY-93c1: beside the mount, never to be read";
    std::fs::write(outer.path().join("secret.txt"), CANARY).unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret.txt"), ws.join("link")).unwrap();
    let calls = json!({"calls": [
        {"tool": "fs.read", "input": {"path": "/workspace/../secret.txt"}},
        {"tool": "fs.read", "input": {"path": "/workspace/link"}},
        {"tool": "fs.read", "input": {"path": "/etc/passwd"}},
        {"tool": "fs.read", "input": {"path": "workspace/link"}},
    ]});
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(&ws, FileSystemAccess::ReadOnly, None),
        calls,
    )
    .await;
    let out = ok(&report);
    let errors: Vec<(&str, &str)> = out["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["error"]["kind"].as_str().unwrap_or("escaped"),
                r["error"]["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            (
                "access-denied",
                "`/workspace/../secret.txt` contains `..`; paths must stay inside the granted directories"
            ),
            (
                "access-denied",
                "`/workspace/link`: a path led outside of the filesystem"
            ),
            (
                "access-denied",
                "`/etc/passwd` is outside the agent's directories (/workspace)"
            ),
            (
                "invalid-input",
                "`workspace/link` is not absolute; paths start at a granted directory such as /workspace"
            ),
        ],
        "{out}"
    );
    let seen = format!("{out} {:?} {}", report.logs, report.stderr);
    assert!(!seen.contains("CANARY-93c1"), "the canary leaked: {seen}");
    assert_eq!(
        std::fs::read_to_string(outer.path().join("secret.txt")).unwrap(),
        CANARY
    );
}

#[tokio::test]
async fn monitored_agents_have_every_host_call_recorded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    let calls = json!({"calls": [
        {"tool": "fs.list", "input": {"path": "/workspace"}},
        {"tool": "clock.now", "input": {}},
    ]});
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::ReadOnly, None),
        calls,
    )
    .await;
    ok(&report);
    let log = &report.host_call_log;
    assert_eq!(log.len() as u64, report.usage.host_calls, "{log:?}");
    assert!(
        log.iter()
            .any(|c| c.call == "tools.call" && c.target == "fs.list" && c.outcome == "ok")
    );
    assert!(log.iter().any(|c| c.call == "budget.get"));

    // Not monitored: nothing recorded.
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["clock.now".into()];
    let report = run(TOOL_USER_COMPONENT, s, json!(null)).await;
    ok(&report);
    assert!(report.host_call_log.is_empty());
}

#[tokio::test]
async fn monitored_full_access_makes_a_grant_writable_unless_it_says_read_only() {
    // `restricted` access with the same grant (no `writable`) refuses the write: see
    // `restricted_writes_only_where_the_grant_says_rw`.
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::Full, None),
        write_call(),
    )
    .await;
    assert!(
        ok(&report)["results"][0]["ok"].is_object(),
        "{:?}",
        report.output
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "hi"
    );

    let dir = tempfile::tempdir().unwrap();
    let report = run(
        TOOL_USER_COMPONENT,
        fs_spec(dir.path(), FileSystemAccess::Full, Some(false)),
        write_call(),
    )
    .await;
    assert_eq!(ok(&report)["results"][0]["error"]["kind"], "access-denied");
    assert!(!dir.path().join("out.txt").exists());
}
