//! The containment matrix: every attack of the `hostile` guest (files, handles, disk, links,
//! network, host-call arguments, stdio, exit), under `sandbox` and under `restricted`, all at
//! once in one host process (with a context store) beside well-behaved agents.
//!
//! Each hostile agent must end with its own precise outcome (the limit its report names, or
//! the refusals it saw), the well-behaved agents' results must be exact, and afterwards the
//! host's open descriptors must be back at their baseline, every mount must hold no more than
//! its agent's disk quota, no canary outside a mount or behind a refused port may have been
//! touched, and resident memory must return near where it started.
//!
//! Its own test binary, so that its descriptor and memory measurements see no other test.

#[allow(dead_code)]
#[path = "all/common.rs"]
mod common;

use common::*;
use qi_guest_artifacts::{FILE_STATS_COMPONENT, HELLO_COMPONENT, HOSTILE_COMPONENT};
use qi_host::sandbox::STDIO_CAPTURE_BYTES;
use qi_host::{
    AgentFailure, AgentHost, AgentReport, DirectoryGrant, ErrorCategory, FileSystemAccess,
    HostConfig, IsolationLevel, LimitKind, NetworkAccessLevel, SubAgentSpecification, TaskRequest,
    ToolRegistry,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// What each open descriptor points at, for the failure message.
fn fd_targets() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, so sparse files count only
/// what they really hold) and their largest logical size.
fn disk_use(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut blocks, mut largest) = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            let (b, l) = disk_use(&entry.path());
            blocks += b;
            largest = largest.max(l);
        } else {
            blocks += meta.blocks() * 512;
            largest = largest.max(meta.len());
        }
    }
    (blocks, largest)
}

/// What a case must end with.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Stopped at this limit, named by the report.
    Limit(LimitKind),
    /// Completed, and this check of its output holds.
    Output(fn(&Value) -> bool, &'static str),
    /// Failed as the agent's own error (BUSINESS), not the host's.
    AgentError,
    /// Ended by its own `exit` with this status.
    Exited(i32),
}

struct Case {
    name: String,
    spec: SubAgentSpecification,
    component: &'static str,
    input: Value,
    expect: Expect,
    /// The mount, to check its disk use after the run.
    mount: Option<PathBuf>,
}

fn sandboxed() -> SubAgentSpecification {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["clock.now".into()];
    // Room for the guest to build a document one byte over the 16 MiB argument limit.
    s.resource_limits.max_memory_mb = 128;
    s
}

fn restricted(mount: &Path, network: &[String]) -> SubAgentSpecification {
    let mut s = sandboxed();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.file_system_access = FileSystemAccess::Restricted;
    s.directories.push(DirectoryGrant {
        host_path: mount.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(true),
    });
    if !network.is_empty() {
        s.security_constraints.network_access_level = NetworkAccessLevel::Restricted;
        s.resource_limits.allowed_network_hosts = network.to_vec();
    }
    s
}

fn all_refused(out: &Value) -> bool {
    out["attempts"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["ok"] == false))
}

fn refused(out: &Value) -> bool {
    !out["error"].is_null()
}

/// Every attack, as `(mode, input, expectation when restricted)`. Under `sandbox` the agent has
/// no mount and no network: every attack must fail or be refused without touching anything.
fn attacks(canary_port: u16) -> Vec<(&'static str, Value, Expect)> {
    let links = json!([
        ["..", "/workspace/l1"],
        ["../outside-file", "/workspace/l2"],
        ["../../../../../../", "/workspace/l3"],
    ]);
    vec![
        (
            "fs.hold-handles",
            json!({"path": "/workspace/h", "count": 100_000}),
            Expect::Limit(LimitKind::OpenHandles),
        ),
        (
            "fs.stream-write",
            json!({"path": "/workspace/big", "bytes": 200 << 20, "chunk": 64 << 10}),
            Expect::Limit(LimitKind::DiskBytes),
        ),
        (
            "fs.sparse",
            json!({"path": "/workspace/sparse", "offset": 1u64 << 30, "how": "pwrite"}),
            Expect::Limit(LimitKind::DiskBytes),
        ),
        (
            "fs.set-size",
            json!({"path": "/workspace/sized", "size": 10u64 << 30}),
            Expect::Limit(LimitKind::DiskBytes),
        ),
        (
            "fs.create-files",
            json!({"dir": "/workspace", "count": 5_000}),
            Expect::Limit(LimitKind::FilesCreated),
        ),
        (
            "fs.stream-write",
            json!({"path": "/workspace/s", "bytes": 1 << 20, "chunk": 16}),
            Expect::Limit(LimitKind::FileOperations),
        ),
        (
            "fs.symlink-out",
            json!({"links": links}),
            Expect::Output(all_refused, "every link refused"),
        ),
        // A name any resolver answers: only the wall can make this lookup fail, and it must
        // fail as `access-denied` (EACCES to a wasi-libc guest) with no address.
        (
            "net.resolve",
            json!({"name": "localhost"}),
            Expect::Output(
                |o| o["addresses"] == json!([]) && o["errno"] == 2,
                "lookup refused as access-denied",
            ),
        ),
        (
            "net.connect",
            json!({"target": format!("127.0.0.1:{canary_port}")}),
            Expect::Output(|o| o["connected"] == false && refused(o), "connect refused"),
        ),
        (
            "host.big-doc",
            json!({"bytes": (16 << 20) + 1}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.call-many",
            json!({"count": 65}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.share-list",
            json!({"count": 257}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.subscribe-list",
            json!({"count": 257}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.big-event",
            json!({"bytes": (1 << 20) + 1}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.tool-input",
            json!({"bytes": (1 << 20) + 1}),
            Expect::Limit(LimitKind::ArgumentSize),
        ),
        (
            "host.big-log",
            json!({"bytes": 1 << 20, "fields": 1000}),
            Expect::Output(|o| o["ok"] == true, "the log record truncated, not refused"),
        ),
        (
            "host.stdout",
            json!({"bytes": 1 << 20}),
            Expect::Output(|o| o["ok"] == true, "stdout past the capture discarded"),
        ),
        ("host.exit", json!({"code": 3}), Expect::Exited(1)),
        (
            "net.sockets",
            json!({"count": 10_000}),
            Expect::Output(
                |o| refused(o) && o["opened"].as_u64().is_some_and(|n| n < 256),
                "sockets stopped at the handle cap",
            ),
        ),
    ]
}

fn cases(root: &Path, canary: &TestServer, allowed_port: u16) -> Vec<Case> {
    let mut cases = Vec::new();
    let allow = vec![format!("127.0.0.1:{allowed_port}")];
    for (i, (mode, mut input, expect)) in attacks(canary.addr.port()).into_iter().enumerate() {
        input["mode"] = json!(mode);
        cases.push(Case {
            name: format!("{mode} (sandbox)"),
            spec: sandboxed(),
            component: HOSTILE_COMPONENT,
            input: input.clone(),
            // Without a mount a file attack fails as the agent's own error; every other attack
            // must end as it does under `restricted` (links, names and connects refused).
            expect: if mode.starts_with("fs.") && mode != "fs.symlink-out" {
                Expect::AgentError
            } else {
                expect
            },
            mount: None,
        });
        let mount = root.join(format!("m{i}"));
        std::fs::create_dir(&mount).unwrap();
        std::fs::write(mount.join("h"), "held").unwrap();
        cases.push(Case {
            name: format!("{mode} (restricted)"),
            spec: restricted(&mount, &allow),
            component: HOSTILE_COMPONENT,
            input,
            expect,
            mount: Some(mount),
        });
    }
    cases
}

/// A host with a context store (the `host.*` attacks use the context and the event bus).
async fn matrix_host() -> Arc<AgentHost> {
    let host = AgentHost::with_tools(
        HostConfig {
            max_live_agents: 256,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        ToolRegistry::with_builtins(),
    )
    .expect("host starts")
    .with_context(in_memory_context().await);
    Arc::new(host)
}

async fn run_on(
    host: &AgentHost,
    component: &str,
    spec: SubAgentSpecification,
    input: Value,
) -> AgentReport {
    let component = host.load(component).expect("bundled guest loads");
    host.run(&component, spec, TaskRequest::new("matrix", input))
        .await
        .expect("spawns")
}

async fn run_case(host: &AgentHost, case: &Case) -> AgentReport {
    let agent = host
        .spawn(&host.load(case.component).unwrap(), case.spec.clone())
        .await
        .unwrap_or_else(|e| panic!("{}: spawn: {e}", case.name));
    agent
        .run(TaskRequest::new("attack", case.input.clone()))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_under_sandbox_and_restricted_beside_well_behaved_agents() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("outside-file"), "canary").unwrap();
    let ws = root.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("a.txt"), "one two\nthree\n").unwrap();
    let canary = TestServer::start().await;
    let allowed = TestServer::start().await;

    let host = matrix_host().await;
    // Warm up: load every component (each stays mapped from the cache for the host's life) and
    // fill the pool with agents that behave.
    for path in [HELLO_COMPONENT, FILE_STATS_COMPONENT, HOSTILE_COMPONENT] {
        host.load(path).expect("bundled guest loads");
    }
    for i in 0..8 {
        ok(&run_on(&host, HELLO_COMPONENT, spec(), json!({"n": i})).await);
    }
    let (fds_before, rss_before) = (open_fds(), rss_bytes());
    let targets_before = fd_targets();

    let cases = Arc::new(cases(root.path(), &canary, allowed.addr.port()));
    let mut hostile = Vec::new();
    for i in 0..cases.len() {
        let (cases, host) = (cases.clone(), host.clone());
        hostile.push(tokio::spawn(
            async move { run_case(&host, &cases[i]).await },
        ));
    }
    let mut good = Vec::new();
    for n in 0..40usize {
        let (ws, host) = (ws.clone(), host.clone());
        good.push(tokio::spawn(async move {
            if n % 4 == 3 {
                let mut s = spec();
                s.isolation_level = IsolationLevel::Restricted;
                s.directories.push(DirectoryGrant {
                    host_path: ws,
                    guest_path: "/workspace".into(),
                    writable: Some(false),
                });
                let r = run_on(&host, FILE_STATS_COMPONENT, s, json!(null)).await;
                assert_eq!(ok(&r)["total"]["words"], 3, "file-stats {n}");
            } else {
                let r = run_on(&host, HELLO_COMPONENT, spec(), json!({"n": n})).await;
                assert_eq!(ok(&r)["input"]["n"], n, "hello {n}");
            }
        }));
    }
    for g in good {
        g.await.expect("every well-behaved agent completes exactly");
    }
    for (case, handle) in cases.iter().zip(hostile) {
        let report = handle.await.expect("the host survives every attack");
        assert_ne!(
            report.error_category,
            Some(ErrorCategory::System),
            "{}: a guest's attack reported as a host failure: {:?}",
            case.name,
            report.failure
        );
        match case.expect {
            Expect::Limit(kind) => {
                let (got, text) = limit(&report);
                assert_eq!(got, kind, "{}: {text}", case.name);
            }
            Expect::Output(check, what) => {
                let out = ok(&report);
                assert!(check(out), "{}: expected {what}, got {out}", case.name);
            }
            Expect::Exited(status) => assert_eq!(
                report.failure,
                Some(AgentFailure::Exited { status }),
                "{}",
                case.name
            ),
            Expect::AgentError => assert_eq!(
                report.error_category,
                Some(ErrorCategory::Business),
                "{}: {:?} / {:?}",
                case.name,
                report.failure,
                report.output
            ),
        }
        if case.input["mode"] == "host.stdout" {
            assert_eq!(
                (report.stdout.len(), report.usage.stdout_dropped),
                (STDIO_CAPTURE_BYTES, (1 << 20) - STDIO_CAPTURE_BYTES as u64),
                "{}: 64 KiB kept, the rest counted",
                case.name
            );
        }
        if let Some(mount) = &case.mount {
            let (blocks, largest) = disk_use(mount);
            let quota = case.spec.resource_limits.max_disk_bytes;
            assert!(
                blocks <= quota + (1 << 20) && largest <= quota,
                "{}: the mount holds {blocks} bytes on disk, largest file {largest} bytes; quota {quota}",
                case.name
            );
        }
    }

    assert!(host.list().is_empty(), "agents left: {:?}", host.list());
    assert_eq!(
        std::fs::read_to_string(root.path().join("outside-file")).unwrap(),
        "canary"
    );
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before,
        "host descriptors: {fds_before} before, {fds_after} after: {targets_before:?} then {:?}",
        fd_targets()
    );
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 96 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
    // Last: the count opens (and the listener accepts) one sentinel connection of its own.
    assert_eq!(
        canary.connections_so_far().await,
        0,
        "a refused connect reached the canary port"
    );
}
