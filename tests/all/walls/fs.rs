//! `hostile` guest, `fs.*` modes: links out of a mount, handles, disk and files quotas,
//! counted streams; and the host's file tools against a planted link.

use crate::common::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::{
    AgentFailure, AgentReport, DirectoryGrant, FileSystemAccess, IsolationLevel, LimitKind,
    SubAgentSpecification,
};
use serde_json::{Value, json};
use std::path::Path;

/// A `restricted` spec with `dir` mounted read-write at `/workspace`.
pub fn writable(dir: &Path) -> SubAgentSpecification {
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.file_system_access = FileSystemAccess::Restricted;
    s.directories.push(DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(true),
    });
    s
}

/// A mount directory `mount/` inside a fresh temporary directory, with a canary file beside it
/// (outside the mount) that no agent may touch.
pub struct Sandbox {
    pub root: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("mount")).unwrap();
        std::fs::write(root.path().join("outside-file"), "canary").unwrap();
        Sandbox { root }
    }
    pub fn mount(&self) -> std::path::PathBuf {
        self.root.path().join("mount")
    }
    #[track_caller]
    pub fn assert_canary_untouched(&self) {
        let canary = self.root.path().join("outside-file");
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "canary");
        let entries: Vec<_> = std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            entries.len(),
            2,
            "nothing new beside the mount: {entries:?}"
        );
    }
}

async fn hostile(spec: SubAgentSpecification, input: Value) -> AgentReport {
    run(HOSTILE_COMPONENT, spec, input).await
}

/// What the guest saw: its output, or the report it logged before failing on a refusal.
#[track_caller]
pub fn seen(report: &AgentReport) -> Value {
    if let Some(out) = &report.output {
        return out.clone();
    }
    let logged = report
        .logs
        .iter()
        .find(|l| l.message == "fs report")
        .unwrap_or_else(|| panic!("no fs report: {:?}", report.failure));
    let (_, text) = logged
        .fields
        .iter()
        .find(|(k, _)| k == "report")
        .expect("report field");
    serde_json::from_str(text).unwrap()
}

/// What wasi-libc makes of a refused stream write: it turns every `last-operation-failed`
/// into EIO without asking `filesystem-error-code` (which would say `insufficient-space`), so
/// a Rust guest sees an uncategorized I/O error; the report still names the limit.
const STREAM_REFUSAL: &str = "Uncategorized";

/// The limit the report names and the `io::ErrorKind` the guest got.
#[track_caller]
fn refused(report: &AgentReport) -> (LimitKind, String) {
    let (limit, _) = limit(report);
    let kind = seen(report)["error"]["kind"]
        .as_str()
        .expect("an error")
        .to_string();
    (limit, kind)
}

#[tokio::test]
async fn symlinks_out_of_the_mount_are_refused_and_none_is_left() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.mount().join("a")).unwrap();
    let report = hostile(
        writable(&sb.mount()),
        json!({"mode": "fs.symlink-out", "links": [
            ["..", "/workspace/l1"],
            ["../outside-file", "/workspace/l2"],
            ["../../../../../../", "/workspace/l3"],
            ["/etc/passwd", "/workspace/l4"],
            ["../../outside-file", "/workspace/a/l5"],
            ["a/../../outside-file", "/workspace/l6"],
            ["../x", "/workspace/a/inside"],
            ["a", "/workspace/down"],
        ]}),
    )
    .await;
    let out = ok(&report);
    let attempts = out["attempts"].as_array().unwrap();
    for a in &attempts[..6] {
        assert_eq!(a["ok"], false, "{a}");
        assert_eq!(a["error"]["kind"], "PermissionDenied", "{a}");
    }
    assert_eq!(attempts[6]["ok"], true, "{}", attempts[6]);
    assert_eq!(attempts[7]["ok"], true, "{}", attempts[7]);
    for l in ["l1", "l2", "l3", "l4", "l6"] {
        assert!(
            std::fs::symlink_metadata(sb.mount().join(l)).is_err(),
            "{l}"
        );
    }
    assert!(std::fs::symlink_metadata(sb.mount().join("a/l5")).is_err());
    assert_eq!(
        std::fs::read_link(sb.mount().join("a/inside")).unwrap(),
        Path::new("../x")
    );
    assert_eq!(report.usage.access_denied, 6);
    assert_eq!(report.usage.files_created, 2);
    sb.assert_canary_untouched();
}

#[tokio::test]
async fn a_link_cannot_be_moved_to_where_its_target_leaves_the_mount() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.mount().join("a")).unwrap();
    let s = writable(&sb.mount());
    let made = hostile(
        s.clone(),
        json!({"mode": "fs.symlink-out", "links": [["../outside-file", "/workspace/a/l"]]}),
    )
    .await;
    assert_eq!(ok(&made)["attempts"][0]["ok"], true);
    let moved = hostile(
        s,
        json!({"mode": "fs.rename", "links": [
            ["/workspace/a/l", "/workspace/l"],
            ["/workspace/a/l", "/workspace/a/l2"],
        ]}),
    )
    .await;
    let out = ok(&moved);
    assert_eq!(out["attempts"][0]["ok"], false, "{out}");
    assert_eq!(out["attempts"][0]["error"]["kind"], "PermissionDenied");
    assert_eq!(out["attempts"][1]["ok"], true, "{out}");
    assert!(std::fs::symlink_metadata(sb.mount().join("l")).is_err());
    assert!(std::fs::symlink_metadata(sb.mount().join("a/l2")).is_ok());
    sb.assert_canary_untouched();
}

#[tokio::test]
async fn a_directory_cannot_be_moved_up_when_a_link_inside_would_leave_the_mount() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.mount().join("a/b/deep")).unwrap();
    // `a/b/l -> ../../x` reaches `x` at the root: inside while `b` is two levels down.
    std::os::unix::fs::symlink("../../x", sb.mount().join("a/b/l")).unwrap();
    std::fs::create_dir_all(sb.mount().join("p/q")).unwrap();
    let report = hostile(
        writable(&sb.mount()),
        json!({"mode": "fs.rename", "links": [
            ["/workspace/a/b", "/workspace/c"],
            ["/workspace/a/b", "/workspace/p/q/c"],
            ["/workspace/p/q/c", "/workspace/p/c"],
        ]}),
    )
    .await;
    let out = ok(&report);
    let ok_at = |i: usize| out["attempts"][i]["ok"].as_bool().unwrap();
    assert!(
        !ok_at(0),
        "one level up: the link would reach above the root: {out}"
    );
    assert_eq!(out["attempts"][0]["error"]["kind"], "PermissionDenied");
    assert!(ok_at(1), "deeper is fine: {out}");
    assert!(ok_at(2), "back to depth 2 is fine: {out}");
    assert!(!sb.mount().join("c").exists());
    assert!(std::fs::symlink_metadata(sb.mount().join("p/c/l")).is_ok());
    sb.assert_canary_untouched();
}

#[tokio::test]
async fn hard_links_never_cross_mounts() {
    let sb = Sandbox::new();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("secret"), "read-only data").unwrap();
    std::fs::write(sb.mount().join("mine"), "mine").unwrap();
    let mut s = writable(&sb.mount());
    s.directories.push(DirectoryGrant {
        host_path: other.path().to_path_buf(),
        guest_path: "/data".into(),
        writable: Some(false),
    });
    let report = hostile(
        s,
        json!({"mode": "fs.hardlink-cross", "links": [
            ["/data/secret", "/workspace/stolen"],
            ["/workspace/mine", "/workspace/mine2"],
        ]}),
    )
    .await;
    let out = ok(&report);
    let attempts = out["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["ok"], false);
    assert_eq!(attempts[0]["error"]["kind"], "CrossesDevices", "{out}");
    assert_eq!(attempts[1]["ok"], true, "{out}");
    assert!(!sb.mount().join("stolen").exists());
    assert_eq!(
        std::fs::read_to_string(sb.mount().join("mine2")).unwrap(),
        "mine"
    );
    sb.assert_canary_untouched();
}

#[tokio::test]
async fn file_tools_do_not_follow_a_planted_link_out_of_the_mount() {
    let sb = Sandbox::new();
    std::os::unix::fs::symlink("../outside-file", sb.mount().join("planted")).unwrap();
    std::os::unix::fs::symlink("..", sb.mount().join("up")).unwrap();
    std::os::unix::fs::symlink("../created-outside", sb.mount().join("dangling")).unwrap();
    let tools = qi_host::ToolRegistry::with_builtins();
    let grants = qi_host::sandbox::resolve_grants(&writable(&sb.mount()))
        .await
        .unwrap();
    let ctx = qi_host::ToolContext {
        agent_id: "test".into(),
        preopens: std::sync::Arc::new(grants.preopens),
        quota: None,
        files: None,
    };
    let call = |name: &str, input: Value| tools.get(name).unwrap().call(ctx.clone(), input);
    let read = call("fs.read", json!({"path": "/workspace/planted"})).await;
    assert!(read.is_err(), "{read:?}");
    let write = call(
        "fs.write",
        json!({"path": "/workspace/planted", "content": "overwritten"}),
    )
    .await;
    assert!(write.is_err(), "{write:?}");
    let through = call(
        "fs.write",
        json!({"path": "/workspace/up/outside-file", "content": "overwritten"}),
    )
    .await;
    assert!(through.is_err(), "{through:?}");
    let dangling = call(
        "fs.write",
        json!({"path": "/workspace/dangling", "content": "escaped"}),
    )
    .await;
    assert!(dangling.is_err(), "{dangling:?}");
    let list = call("fs.list", json!({"path": "/workspace/up"})).await;
    assert!(list.is_err(), "{list:?}");
    // The links themselves are listed, as links, not followed.
    let listed = call("fs.list", json!({"path": "/workspace"}))
        .await
        .unwrap();
    let kinds: Vec<_> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("dangling", "link"), ("planted", "link"), ("up", "link")]
    );
    sb.assert_canary_untouched();
}

/// How many files the guest could hold open at once with `max_open_handles`.
async fn handles_held(max_open_handles: u32, count: u64) -> AgentReport {
    let sb = Sandbox::new();
    std::fs::write(sb.mount().join("f"), "f").unwrap();
    let mut s = writable(&sb.mount());
    s.resource_limits.max_open_handles = max_open_handles;
    hostile(
        s,
        json!({"mode": "fs.hold-handles", "path": "/workspace/f", "count": count}),
    )
    .await
}

#[tokio::test]
async fn open_handles_up_to_the_cap_pass_one_more_is_refused() {
    // Everything the agent holds counts (its preopen, stdio streams), so measure what is left
    // for files at two caps: the difference is exactly the difference of the caps.
    let at_64 = handles_held(64, 1_000).await;
    let at_96 = handles_held(96, 1_000).await;
    let room = seen(&at_64)["done"].as_u64().unwrap();
    assert_eq!(seen(&at_96)["done"].as_u64().unwrap(), room + 32);
    assert!(room > 48, "{room}");

    let inside = handles_held(64, room).await;
    assert_eq!(ok(&inside)["done"], room);
    let past = handles_held(64, room + 1).await;
    assert_eq!(
        refused(&past),
        (LimitKind::OpenHandles, "OutOfMemory".to_string())
    );
    assert_eq!(seen(&past)["done"], room);
    assert_eq!(seen(&past)["refused"], 1);
}

#[tokio::test]
async fn disk_bytes_up_to_the_quota_pass_one_more_is_refused() {
    let write = |bytes: u64| async move {
        let sb = Sandbox::new();
        let mut s = writable(&sb.mount());
        s.resource_limits.max_disk_bytes = 100_000;
        let r = hostile(
            s,
            json!({"mode": "fs.fill-disk", "path": "/workspace/big", "bytes": bytes}),
        )
        .await;
        let size = std::fs::metadata(sb.mount().join("big")).map(|m| m.len());
        (r, size.unwrap_or(0))
    };
    let (inside, size) = write(100_000).await;
    assert_eq!(ok(&inside)["done"], 100_000);
    assert_eq!(size, 100_000);
    assert_eq!(inside.usage.disk_bytes_written, 100_000);
    assert_eq!(inside.usage.files_created, 1);

    let (past, size) = write(100_001).await;
    assert_eq!(
        refused(&past),
        (LimitKind::DiskBytes, STREAM_REFUSAL.to_string())
    );
    assert!(size <= 100_000, "{size}");
    assert!(past.usage.disk_bytes_written <= 100_000);
}

#[tokio::test]
async fn a_write_at_a_far_offset_is_charged_its_logical_size() {
    let sparse = |offset: u64, how: &'static str| async move {
        let sb = Sandbox::new();
        let mut s = writable(&sb.mount());
        s.resource_limits.max_disk_bytes = 1 << 20;
        let r = hostile(
            s,
            json!({"mode": "fs.sparse", "path": "/workspace/s", "offset": offset, "how": how}),
        )
        .await;
        (r, std::fs::metadata(sb.mount().join("s")).unwrap().len())
    };
    for (how, error) in [("pwrite", "StorageFull"), ("seek", STREAM_REFUSAL)] {
        let (inside, size) = sparse((1 << 20) - 1, how).await;
        ok(&inside);
        assert_eq!(size, 1 << 20, "{how}");
        assert_eq!(inside.usage.disk_bytes_written, 1 << 20, "{how}");
        let (past, size) = sparse(1 << 20, how).await;
        assert_eq!(
            refused(&past),
            (LimitKind::DiskBytes, error.to_string()),
            "{how}"
        );
        assert_eq!(size, 0, "nothing written ({how})");
        // The red team's version: one byte at 1 GiB.
        let (far, size) = sparse(1 << 30, how).await;
        assert_eq!(limit(&far).0, LimitKind::DiskBytes, "{how}");
        assert_eq!(size, 0, "{how}");
    }
}

#[tokio::test]
async fn set_size_is_charged_its_growth() {
    let grow = |size: u64| async move {
        let sb = Sandbox::new();
        let mut s = writable(&sb.mount());
        s.resource_limits.max_disk_bytes = 4096;
        let r = hostile(
            s,
            json!({"mode": "fs.set-size", "path": "/workspace/z", "size": size}),
        )
        .await;
        (r, std::fs::metadata(sb.mount().join("z")).unwrap().len())
    };
    let (inside, len) = grow(4096).await;
    ok(&inside);
    assert_eq!(len, 4096);
    let (past, len) = grow(4097).await;
    assert_eq!(
        refused(&past),
        (LimitKind::DiskBytes, "StorageFull".to_string())
    );
    assert_eq!(len, 0);
}

#[tokio::test]
async fn files_created_up_to_the_quota_pass_one_more_is_refused() {
    let create = |count: u64| async move {
        let sb = Sandbox::new();
        let mut s = writable(&sb.mount());
        s.resource_limits.max_files_created = 20;
        let r = hostile(
            s,
            json!({"mode": "fs.create-files", "dir": "/workspace", "count": count}),
        )
        .await;
        (r, std::fs::read_dir(sb.mount()).unwrap().count())
    };
    let (inside, n) = create(20).await;
    assert_eq!(ok(&inside)["done"], 20);
    assert_eq!(n, 20);
    assert_eq!(inside.usage.files_created, 20);
    let (past, n) = create(21).await;
    assert_eq!(
        refused(&past),
        (LimitKind::FilesCreated, "QuotaExceeded".to_string())
    );
    assert_eq!(seen(&past)["done"], 20);
    assert_eq!(n, 20);
}

#[tokio::test]
async fn every_stream_write_and_read_is_a_file_operation() {
    let sb = Sandbox::new();
    let s = writable(&sb.mount());
    let w = |chunk: u64| {
        hostile(
            s.clone(),
            json!({"mode": "fs.stream-write", "path": "/workspace/w", "bytes": 4000, "chunk": chunk}),
        )
    };
    let (few, many) = (w(1000).await, w(100).await);
    assert_eq!(ok(&few)["calls"], 4);
    assert_eq!(ok(&many)["calls"], 40);
    assert_eq!(
        many.usage.file_operations - few.usage.file_operations,
        36,
        "one operation per write call"
    );
    let r = |chunk: u64| {
        hostile(
            s.clone(),
            json!({"mode": "fs.stream-read", "path": "/workspace/w", "chunk": chunk}),
        )
    };
    let (few, many) = (r(1000).await, r(100).await);
    assert_eq!(ok(&few)["done"], 4000);
    assert_eq!(ok(&many)["done"], 4000);
    assert!(
        many.usage.file_operations >= few.usage.file_operations + 36,
        "at least one operation per read call: {} vs {}",
        many.usage.file_operations,
        few.usage.file_operations
    );

    // Just inside the budget the writes pass; one fewer and the last write is refused.
    let need = w(100).await.usage.file_operations as u32;
    let mut limited = s.clone();
    limited.resource_limits.max_file_operations = need;
    let inside = hostile(
        limited.clone(),
        json!({"mode": "fs.stream-write", "path": "/workspace/w", "bytes": 4000, "chunk": 100}),
    )
    .await;
    assert_eq!(ok(&inside)["done"], 4000);
    limited.resource_limits.max_file_operations = need - 1;
    let past = hostile(
        limited,
        json!({"mode": "fs.stream-write", "path": "/workspace/w", "bytes": 4000, "chunk": 100}),
    )
    .await;
    assert_eq!(limit(&past).0, LimitKind::FileOperations);
    assert_eq!(seen(&past)["done"], 3900);
    assert!(matches!(
        past.failure,
        Some(AgentFailure::LimitExceeded { .. })
    ));
}
