//! README's isolation table: `monitored` allows `fileSystemAccess = full`, under which a grant
//! that does not say `rw` or `ro` is writable; under `restricted` (`fileSystemAccess =
//! restricted`) the same grant is read-only.

use super::fs::{Sandbox, seen};
use crate::common::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::{DirectoryGrant, FileSystemAccess, IsolationLevel, SubAgentSpecification};
use serde_json::json;

/// `level` and `access`, with `dir` mounted at `/workspace` by a grant that names no mode.
fn spec_with(
    dir: &std::path::Path,
    level: IsolationLevel,
    access: FileSystemAccess,
) -> SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = level;
    s.security_constraints.file_system_access = access;
    s.directories.push(DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: None,
    });
    s
}

fn write_five_bytes() -> serde_json::Value {
    json!({"mode": "fs.fill-disk", "path": "/workspace/out", "bytes": 5})
}

#[tokio::test]
async fn monitored_full_access_makes_an_unmarked_grant_writable() {
    let sb = Sandbox::new();
    let s = spec_with(
        &sb.mount(),
        IsolationLevel::Monitored,
        FileSystemAccess::Full,
    );
    let report = run(HOSTILE_COMPONENT, s, write_five_bytes()).await;
    assert!(report.failure.is_none(), "{:?}", report.failure);
    assert_eq!(seen(&report)["done"], 5);
    assert_eq!(std::fs::read(sb.mount().join("out")).unwrap().len(), 5);
    sb.assert_canary_untouched();
}

#[tokio::test]
async fn restricted_access_keeps_the_same_grant_read_only() {
    let sb = Sandbox::new();
    let s = spec_with(
        &sb.mount(),
        IsolationLevel::Restricted,
        FileSystemAccess::Restricted,
    );
    let report = run(HOSTILE_COMPONENT, s, write_five_bytes()).await;
    let out = seen(&report);
    assert_eq!(out["done"], 0, "{out}");
    assert!(!out["error"].is_null(), "{out}");
    assert!(
        !sb.mount().join("out").exists(),
        "a read-only mount was written"
    );
    sb.assert_canary_untouched();
}
