//! `fs-escape`: every escape fails, a canary outside the mount stays unread and unchanged.

use super::*;

const CANARY: &str = "CANARY-5b0e: outside the mount, never to be read";

/// A workspace `ws` inside a directory whose `outside.txt` (the canary) the agent must never
/// reach, with a symlink in the workspace pointing at it.
fn planted() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let outer = tempfile::tempdir().unwrap();
    let ws = outer.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let canary = outer.path().join("outside.txt");
    std::fs::write(&canary, CANARY).unwrap();
    std::os::unix::fs::symlink(&canary, ws.join("link-out")).unwrap();
    (outer, ws, canary)
}

/// The canary is unchanged and nothing of it shows in the agent's output, logs or stdio.
#[track_caller]
fn assert_canary_untouched(report: &qi_host::AgentReport, canary: &std::path::Path) {
    assert_eq!(std::fs::read_to_string(canary).unwrap(), CANARY);
    let seen = format!(
        "{:?} {:?} {} {}",
        report.output, report.logs, report.stdout, report.stderr
    );
    assert!(!seen.contains("CANARY-5b0e"), "the canary leaked: {seen}");
    let outer = canary.parent().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(outer)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["outside.txt", "ws"],
        "nothing was added beside the mount"
    );
}

fn attempt<'a>(out: &'a serde_json::Value, op: &str, path: &str) -> &'a serde_json::Value {
    out["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["op"] == op && a["path"] == path)
        .unwrap_or_else(|| panic!("no {op} of {path}: {out}"))
}

#[tokio::test]
async fn every_escape_fails_and_a_read_only_mount_refuses_the_write() {
    let (_outer, ws, canary) = planted();
    let report = run(FS_ESCAPE_COMPONENT, restricted_spec(&ws), json!(null)).await;
    let out = ok(&report);
    // Outside every preopen there is nothing (ENOENT); through the mount, leaving it or
    // writing to a read-only one is refused (EPERM).
    const ENOENT: &str = "No such file or directory (os error 44)";
    const EPERM: &str = "Operation not permitted (os error 63)";
    let expected = [
        ("read", "/etc/passwd", ENOENT),
        ("read", "../outside.txt", ENOENT),
        ("read", "/workspace/../outside.txt", EPERM),
        ("read", "/workspace/link-out", EPERM),
        ("write", "/workspace/escape-write.txt", EPERM),
        ("list", "/", ENOENT),
    ];
    assert_eq!(
        out["attempts"].as_array().unwrap().len(),
        expected.len(),
        "{out}"
    );
    for (op, path, error) in expected {
        let a = attempt(out, op, path);
        assert_eq!(a["ok"], false, "escape attempt succeeded: {a}");
        assert_eq!(a["error"], error, "{a}");
    }
    assert!(!ws.join("escape-write.txt").exists());
    assert_canary_untouched(&report, &canary);
}

#[tokio::test]
async fn on_a_read_write_mount_only_the_write_inside_it_succeeds() {
    let (_outer, ws, canary) = planted();
    let mut s = restricted_spec(&ws);
    s.security_constraints.file_system_access = qi_host::FileSystemAccess::Restricted;
    s.directories[0].writable = Some(true);
    let report = run(FS_ESCAPE_COMPONENT, s, json!(null)).await;
    let out = ok(&report);
    for a in out["attempts"].as_array().unwrap() {
        let inside = a["op"] == "write" && a["path"] == "/workspace/escape-write.txt";
        assert_eq!(a["ok"], inside, "{a}");
    }
    assert_eq!(
        std::fs::read_to_string(ws.join("escape-write.txt")).unwrap(),
        "written by fs-escape\n"
    );
    assert_canary_untouched(&report, &canary);
}
