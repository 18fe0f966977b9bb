//! The `qi-host` binary: output, JSON, and one-line errors for bad input.

use qi_guest_artifacts::*;
use std::process::{Command, Output};

use crate::common::qi_host_output as qi_host;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn one_line_error(o: &Output, expect: &str) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("error"), "{err}");
    assert!(err.contains(expect), "`{err}` does not say `{expect}`");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn run_agent_prints_output_and_usage() {
    let o = qi_host(&[
        "run-agent",
        HELLO_COMPONENT,
        "--task",
        "greet",
        "--input",
        r#"{"who":"newcomer"}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("\"echo\": \"greet\""), "{out}");
    assert!(out.contains("fuel consumed"), "{out}");
    assert!(out.contains("peak memory"), "{out}");
}

#[test]
fn run_agent_json_is_machine_readable() {
    let o = qi_host(&["run-agent", HELLO_COMPONENT, "--task", "greet", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"]["echo"], "greet");
    assert!(v["usage"]["fuel_consumed"].as_u64().unwrap() > 0);
}

#[test]
fn a_failing_agent_exits_1_with_the_reason() {
    let o = qi_host(&[
        "run-agent",
        SPIN_FOREVER_COMPONENT,
        "--task",
        "spin",
        "--fuel",
        "1000000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("fuel limit exceeded"), "{}", stdout(&o));
}

#[test]
fn run_agent_with_a_read_only_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one two\n").unwrap();
    let grant = format!("{}:/workspace:ro", dir.path().display());
    let o = qi_host(&[
        "run-agent",
        FILE_STATS_COMPONENT,
        "--task",
        "stats",
        "--dir",
        &grant,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["output"]["total"]["words"], 2);
}

#[test]
fn missing_file() {
    one_line_error(
        &qi_host(&["run-agent", "/no/such/agent.wasm", "--task", "x"]),
        "cannot read component",
    );
}

#[test]
fn not_wasm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    std::fs::write(&path, "this is text").unwrap();
    one_line_error(
        &qi_host(&["run-agent", path.to_str().unwrap(), "--task", "x"]),
        "not a WebAssembly file",
    );
}

#[test]
fn core_module_instead_of_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(
        &path,
        wat::parse_str("(module (func (export \"run\")))").unwrap(),
    )
    .unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "core WebAssembly module, not a component",
    );
}

#[test]
fn component_of_another_world() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.wasm");
    std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "does not export the `qi:agent/agent` world",
    );
}

#[test]
fn component_importing_what_the_host_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("needs.wasm");
    let wat = r#"(component (import "acme:db/query@1.0.0" (instance (export "run" (func)))))"#;
    std::fs::write(&path, wat::parse_str(wat).unwrap()).unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "acme:db/query",
    );
}

#[test]
fn invalid_limits() {
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "x",
            "--max-memory-mb",
            "0",
        ]),
        "resourceLimits.maxMemoryMB",
    );
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "x",
            "--input",
            "{nope",
        ]),
        "--input",
    );
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "x",
            "--dir",
            "/tmp:/w:xx:yy",
        ]),
        "--dir",
    );
}

#[test]
fn inspect_shows_agent_info_imports_and_exports() {
    let o = qi_host(&["inspect", FILE_STATS_COMPONENT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("file-stats"), "{out}");
    assert!(out.contains("qi:agent/log@0.1.0"), "{out}");
    assert!(out.contains("run"), "{out}");
    assert!(out.contains("runnable  yes"), "{out}");
}

#[test]
fn falls_back_to_on_demand_allocation_when_the_pool_cannot_be_reserved() {
    // 1,000 pool slots need terabytes of address space; a 12 GiB `ulimit -v` refuses that
    // reservation but leaves room for one on-demand instance.
    let script = format!(
        "ulimit -v 12582912 && exec {} run-agent {HELLO_COMPONENT} --task small --json",
        env!("CARGO_BIN_EXE_qi-host")
    );
    let o = Command::new("sh")
        .args(["-c", &script])
        .env("QI_HOST_CACHE_DIR", crate::common::cache_dir())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("falling back to on-demand allocation"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["output"]["echo"], "small");
}

fn example(name: &str) -> String {
    format!(
        "{}/../examples/{name}/task.toml",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn guest_dir() -> String {
    crate::coord::guest_dir().display().to_string()
}

#[test]
fn run_prints_result_subtasks_receipts_and_metrics() {
    let data = tempfile::tempdir().unwrap();
    let o = qi_host(&[
        "run",
        &example("code-review"),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(
        out.contains("result: completed (7/7 subtasks completed)"),
        "{out}"
    );
    for part in [
        "analyze-core",
        "usage receipts",
        "coordination metrics",
        "totalAgents 7",
        "decision changes-requested (majority)",
        "# Code review report",
    ] {
        assert!(out.contains(part), "missing `{part}` in\n{out}");
    }
    // Not a terminal: progress comes as plain lines.
    let err = stderr(&o);
    assert!(err.contains("[100%] report completed reporter"), "{err}");
    // The events it points to are there.
    let run_id = out.split_whitespace().nth(1).unwrap().to_string();
    let ev = qi_host(&[
        "events",
        "tail",
        "--data-dir",
        data.path().to_str().unwrap(),
        "--filter",
        &format!("context=run/{run_id}"),
        "--json",
    ]);
    let text = stdout(&ev);
    assert!(ev.status.success(), "{}", stderr(&ev));
    assert!(
        text.contains("subtask-completed") && text.contains("sync-resolved"),
        "{text}"
    );
}

#[test]
fn run_json_and_exit_code_of_a_failed_run() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("t.toml");
    std::fs::write(
        &manifest,
        r#"
[task]
id = "t"
[strategy]
type = "parallel"
failureHandling = "graceful-degradation"
[agents.w]
component = "guest:worker"
[[subtasks]]
id = "good"
[[subtasks]]
id = "bad"
inputs = [{ name = "steps", value = [{ fail = "on purpose" }] }]
"#,
    )
    .unwrap();
    let o = qi_host(&[
        "run",
        manifest.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["success"], false);
    assert_eq!(v["partial"], true);
    assert_eq!(v["results"][1]["state"], "failed");
    assert!(
        v["results"][1]["error"]
            .as_str()
            .unwrap()
            .contains("on purpose")
    );
}

#[test]
fn plan_shows_the_distribution() {
    let o = qi_host(&["plan", &example("code-review"), "--guest-dir", &guest_dir()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    for part in [
        "strategy hybrid",
        "0: analyze-core, analyze-api, analyze-misc",
        "2: report",
        "synchronization plan",
        "verdict          decision    majority-complete",
        "fallback plan (graceful-degradation)",
    ] {
        assert!(out.contains(part), "missing `{part}` in\n{out}");
    }
}

#[test]
fn invalid_manifest_is_a_one_line_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("t.toml");
    std::fs::write(
        &manifest,
        "[task]\nid = \"t\"\n[strategy]\ntype = \"hybrid\"\n[agents.w]\ncomponent = \"guest:worker\"\n[[subtasks]]\nid = \"a\"\ndependsOn = [\"b\"]\n",
    )
    .unwrap();
    let o = qi_host(&[
        "plan",
        manifest.to_str().unwrap(),
        "--guest-dir",
        &guest_dir(),
    ]);
    one_line_error(&o, "t.toml:9: `subtasks[0].dependsOn`: no subtask `b`");
    let o = qi_host(&["run", "/no/such/manifest.toml"]);
    one_line_error(&o, "cannot read the manifest");
}

#[test]
fn run_with_policies_denies_audits_and_verifies() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("p.toml");
    // Analyzers may read files and meet; nothing else is allowed.
    std::fs::write(
        &policies,
        r#"
[[policies]]
id = "analysis-only"
[[policies.rules]]
effect = "allow"
resources = ["file/*", "sync/analysis-done", "sync/totals"]
agents = ["analyzer"]
"#,
    )
    .unwrap();
    let d = data.path().to_str().unwrap();
    let o = qi_host(&[
        "run",
        &example("code-review"),
        "--data-dir",
        d,
        "--guest-dir",
        &guest_dir(),
        "--policies",
        policies.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Analyzers complete; reviewers cannot vote and the reporter cannot write its report.
    assert_eq!(v["results"][0]["state"], "completed", "{v}");
    assert_eq!(v["results"][6]["state"], "failed", "{v}");
    let q = qi_host(&[
        "audit",
        "query",
        "--data-dir",
        d,
        "--decision",
        "deny",
        "--json",
    ]);
    assert!(q.status.success(), "{}", stderr(&q));
    let text = stdout(&q);
    assert!(
        text.contains("sync/verdict") && text.contains("context/review/inventory/"),
        "{text}"
    );
    let verify = qi_host(&["audit", "verify", "--data-dir", d]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn run_with_a_key_file_stores_only_ciphertext() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    std::fs::write(&key, qi_host::store::crypto::MasterKey::generate().to_hex()).unwrap();
    let d = data.path().to_str().unwrap();
    let k = key.to_str().unwrap();
    let o = qi_host(&[
        "run",
        &example("failure-handling"),
        "--data-dir",
        d,
        "--guest-dir",
        &guest_dir(),
        "--key-file",
        k,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("# Code review report"));
    // The report's text is nowhere on disk in the clear.
    for (p, bytes) in crate::common::files_under(data.path()) {
        assert!(
            !crate::common::contains_bytes(&bytes, b"Code review report"),
            "plaintext in {}",
            p.display()
        );
    }
    one_line_error(
        &qi_host(&["context", "list", "--data-dir", d]),
        "give its master key",
    );
    let o = qi_host(&["context", "list", "--data-dir", d, "--key-file", k]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("review/failure-handling/"),
        "{}",
        stdout(&o)
    );
}
