//! The sandbox walls hold for Python as for Rust: `py-hostile` loops, grows, escapes, dials
//! out, floods its output, raises and exits, and each attempt ends with its precise error
//! while the host goes on.

use super::*;
use qi_host::{AgentFailure, ErrorCategory, LimitKind};

const CANARY: &str = "CANARY-py-71c3: outside the mount, never to be read";

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_fuel() {
    let mut s = py_spec();
    s.fuel = 200_000_000;
    let Some(report) = hostile(s, json!({"mode": "spin"})).await else {
        return;
    };
    let (kind, message) = limit(&report);
    assert_eq!(kind, LimitKind::Fuel, "{message}");
    assert_eq!(report.usage.fuel_consumed, 200_000_000);
    assert_eq!(report.error_category, Some(ErrorCategory::Resource));
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_wall_clock() {
    let mut s = py_spec();
    s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
    s.resource_limits.max_execution_time_ms = 300;
    let Some(report) = hostile(s, json!({"mode": "spin"})).await else {
        return;
    };
    let (kind, message) = limit(&report);
    assert_eq!(kind, LimitKind::ExecutionTime);
    assert!(message.contains("maxExecutionTimeMs = 300"), "{message}");
}

/// Growth past `maxMemoryMB` is refused by the host's limiter: the agent ends with the memory
/// limit (never a Python `MemoryError` the agent could swallow), within its cap.
#[tokio::test]
async fn memory_growth_is_stopped_at_the_cap() {
    let mut s = py_spec();
    s.resource_limits.max_memory_mb = 48;
    let Some(report) = hostile(s, json!({"mode": "grow", "step_mb": 1})).await else {
        return;
    };
    let (kind, message) = limit(&report);
    assert_eq!(kind, LimitKind::Memory, "{message}");
    assert!(message.contains("maxMemoryMB = 48"), "{message}");
    assert!(report.usage.peak_memory_bytes <= 48 << 20);
}

/// Reads outside the mount, through `..` and through a link planted in the mount all fail;
/// the canary is unread and unchanged. The same read inside the mount succeeds.
#[tokio::test]
async fn file_escapes_fail_and_the_canary_stays_unread() {
    let outer = tempfile::tempdir().unwrap();
    let ws = outer.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("inside.txt"), "inside the mount").unwrap();
    let canary = outer.path().join("outside.txt");
    std::fs::write(&canary, CANARY).unwrap();
    std::os::unix::fs::symlink(&canary, ws.join("link-out")).unwrap();
    let paths = [
        "/workspace/inside.txt".to_string(),
        canary.display().to_string(),
        "/workspace/../outside.txt".into(),
        "/workspace/link-out".into(),
        "/etc/passwd".into(),
    ];
    let Some(report) = hostile(
        restricted_spec(&ws),
        json!({"mode": "read", "paths": paths}),
    )
    .await
    else {
        return;
    };
    let out = ok(&report);
    assert_eq!(out[&paths[0]]["ok"], "inside the mount", "{out}");
    for path in &paths[1..] {
        assert!(out[path]["error"].is_string(), "{path}: {out}");
    }
    let seen = format!(
        "{:?} {:?} {} {}",
        report.output, report.logs, report.stdout, report.stderr
    );
    assert!(!seen.contains("CANARY-py"), "the canary leaked: {seen}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), CANARY);
}

/// A write to a read-only mount fails; on a writable mount the disk quota stops a large write
/// (`maxDiskBytes`), just inside it succeeds.
#[tokio::test]
async fn writes_are_refused_on_read_only_mounts_and_past_the_disk_quota() {
    let dir = tempfile::tempdir().unwrap();
    let Some(report) = hostile(
        restricted_spec(dir.path()),
        json!({"mode": "write", "path": "/workspace/new.txt", "bytes": 10}),
    )
    .await
    else {
        return;
    };
    assert!(ok(&report)["error"].is_string(), "{:?}", report.output);
    assert!(!dir.path().join("new.txt").exists());

    let writable = |quota: u64| {
        let mut s = restricted_spec(dir.path());
        s.security_constraints.file_system_access = qi_host::FileSystemAccess::Restricted;
        s.directories[0].writable = Some(true);
        s.resource_limits.max_disk_bytes = quota;
        s
    };
    let inside = hostile(
        writable(100_000),
        json!({"mode": "write", "path": "/workspace/fits.bin", "bytes": 100_000}),
    )
    .await
    .unwrap();
    assert_eq!(ok(&inside)["ok"], 100_000, "{:?}", inside.output);
    assert_eq!(inside.usage.disk_bytes_written, 100_000);
    // Past the quota the write fails (the bundled wasi-libc reports the host's ENOSPC as
    // EIO); an agent that handles it completes, one that lets it escape fails with the limit.
    let past = hostile(
        writable(100_000),
        json!({"mode": "write", "path": "/workspace/big.bin", "bytes": 100_001}),
    )
    .await
    .unwrap();
    let error = ok(&past)["error"].as_str().unwrap().to_owned();
    assert!(error.starts_with("OSError"), "{error}");
    assert!(past.usage.disk_bytes_written <= 100_000, "{:?}", past.usage);
    let written = std::fs::metadata(dir.path().join("big.bin")).map_or(0, |m| m.len());
    assert!(written <= 100_000, "{written} bytes landed past the quota");
    let uncaught = hostile(
        writable(100_000),
        json!({"mode": "write", "path": "/workspace/big2.bin", "bytes": 100_001, "raise": true}),
    )
    .await
    .unwrap();
    let (kind, message) = limit(&uncaught);
    assert_eq!(kind, LimitKind::DiskBytes, "{message}");
}

/// A Python agent without a network grant cannot reach a listening port on loopback; with
/// the grant it can (so the wall, not Python, is what stops the first).
#[tokio::test]
async fn network_is_denied_without_a_grant_and_works_with_one() {
    let server = TestServer::start().await;
    let input = json!({"mode": "connect", "host": "127.0.0.1", "port": server.addr.port()});
    let Some(denied) = hostile(py_spec(), input.clone()).await else {
        return;
    };
    assert!(ok(&denied)["error"].is_string(), "{:?}", denied.output);
    assert_eq!(
        server.connections_so_far().await,
        0,
        "the listener was reached"
    );

    let allowed = hostile(network_spec(&[server.addr.to_string()]), input)
        .await
        .unwrap();
    let out = ok(&allowed);
    assert!(
        out["ok"]
            .as_str()
            .is_some_and(|s| s.starts_with("HTTP/1.0 200")),
        "{out}"
    );
}

/// Name resolution is not a side channel: a sandboxed Python agent's lookup fails and counts
/// as a denied network operation.
#[tokio::test]
async fn name_resolution_is_denied() {
    let Some(report) = hostile(py_spec(), json!({"mode": "resolve", "host": "localhost"})).await
    else {
        return;
    };
    assert!(ok(&report)["error"].is_string(), "{:?}", report.output);
    assert_eq!(report.usage.network_allowed, 0, "{:?}", report.usage);
    assert!(
        report.usage.network_denied >= 1,
        "the host never saw the lookup: {:?}",
        report.usage
    );
}

/// Output over the cap (1 MiB by default) is refused by size: a JSON string of `n` characters
/// is `n + 2` bytes, so `n = 1 MiB - 2` passes and one more fails.
#[tokio::test]
async fn huge_output_is_refused_past_the_cap() {
    const CAP: u64 = 1 << 20;
    let Some(past) = hostile(py_spec(), json!({"mode": "huge", "bytes": CAP - 1})).await else {
        return;
    };
    let (kind, message) = limit(&past);
    assert_eq!(kind, LimitKind::OutputSize, "{message}");
    assert!(
        message.contains(&format!("output is {} bytes", CAP + 1)),
        "{message}"
    );
    let inside = hostile(py_spec(), json!({"mode": "huge", "bytes": CAP - 2}))
        .await
        .unwrap();
    assert_eq!(ok(&inside).as_str().unwrap().len() as u64, CAP - 2);
}

/// An uncaught exception is the agent's `failed` error carrying the exception and its
/// traceback (file, line and function of each frame), not a trap.
#[tokio::test]
async fn an_exception_reaches_the_report_with_its_traceback() {
    let Some(report) = hostile(py_spec(), json!({"mode": "raise"})).await else {
        return;
    };
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert!(
        message.starts_with("ValueError: the hostile agent failed on purpose"),
        "{message}"
    );
    assert!(
        message.contains("Traceback (most recent call last)"),
        "{message}"
    );
    assert!(message.contains("in _inner_failure"), "{message}");
    assert!(message.contains("app.py\", line"), "{message}");
    assert_eq!(report.error_category, Some(ErrorCategory::Business));
}

/// Unbounded recursion ends as Python's `RecursionError` with a bounded traceback (16 KiB of
/// its end), or at the wasm stack limit: either way this agent only.
#[tokio::test]
async fn unbounded_recursion_ends_this_agent_only() {
    let Some(report) = hostile(py_spec(), json!({"mode": "recurse"})).await else {
        return;
    };
    match &report.failure {
        Some(AgentFailure::AgentError { message, .. }) => {
            assert!(message.starts_with("RecursionError"), "{message}");
            assert!(message.len() < 24 * 1024, "{} bytes", message.len());
        }
        Some(AgentFailure::LimitExceeded { limit, .. }) => assert_eq!(*limit, LimitKind::Stack),
        other => panic!("expected RecursionError or the stack limit, got {other:?}"),
    }
    let next = hostile(py_spec(), json!({"mode": "environ"}))
        .await
        .unwrap();
    ok(&next);
}

#[tokio::test]
async fn sys_exit_is_a_failure_naming_the_call() {
    let Some(report) = hostile(py_spec(), json!({"mode": "exit"})).await else {
        return;
    };
    let (kind, message) = agent_error(&report);
    assert_eq!(kind, "failed");
    assert_eq!(message, "the agent called sys.exit(3)");
}

/// Python sees no host environment variables or arguments.
#[tokio::test]
async fn sees_no_host_environment() {
    let Some(report) = hostile(py_spec(), json!({"mode": "environ"})).await else {
        return;
    };
    let out = ok(&report);
    assert_eq!(out["environ"], json!({}), "{out}");
    assert!(
        out["argv"].as_array().is_some_and(|a| a.len() <= 1),
        "{out}"
    );
}
