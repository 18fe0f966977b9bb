//! The `qi-host` binary: output, JSON, and one-line errors for bad input.

use qi_guest_artifacts::*;
use std::process::{Command, Output};

fn qi_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qi-host"))
        .args(args)
        .env("QI_HOST_CACHE_DIR", crate::common::cache_dir())
        .output()
        .expect("qi-host runs")
}

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
    assert!(
        out.contains("\"who\": \"newcomer\""),
        "the input is echoed: {out}"
    );
    // The receipt's lines carry measured numbers, not just their labels.
    let measured = |label: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` line in {out}"));
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{line}` has no number"))
    };
    assert!(measured("fuel consumed") > 0, "{out}");
    assert!(measured("peak memory") > 0, "{out}");
    assert_eq!(measured("host calls"), 1, "hello logs once: {out}");
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
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("failure   [RESOURCE] fuel limit exceeded (fuel = 1000000)"),
        "{}",
        stdout(&o)
    );
    assert!(
        !stdout(&o).contains("\noutput\n"),
        "a failed agent has no output: {}",
        stdout(&o)
    );
}

#[test]
fn run_agent_dir_grants_are_readable_and_writable_only_with_rw() {
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

    // The same write through an `ro` grant is refused and through an `rw` grant lands.
    let write = |mode: &str| {
        let grant = format!("{}:/workspace:{mode}", dir.path().display());
        qi_host(&[
            "run-agent",
            HOSTILE_COMPONENT,
            "--task",
            "write",
            "--input",
            r#"{"mode": "fs.fill-disk", "path": "/workspace/written", "bytes": 5}"#,
            "--dir",
            &grant,
            "--json",
        ])
    };
    let ro = write("ro");
    assert_eq!(ro.status.code(), Some(1), "{}", stdout(&ro));
    assert!(!dir.path().join("written").exists(), "written through `ro`");
    let rw = write("rw");
    assert!(rw.status.success(), "{}\n{}", stdout(&rw), stderr(&rw));
    assert_eq!(
        std::fs::metadata(dir.path().join("written")).unwrap().len(),
        5
    );
}

#[test]
fn run_agent_of_a_missing_file_is_a_one_line_error() {
    one_line_error(
        &qi_host(&["run-agent", "/no/such/agent.wasm", "--task", "x"]),
        "cannot read component",
    );
}

#[test]
fn run_agent_of_a_text_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    std::fs::write(&path, "this is text").unwrap();
    one_line_error(
        &qi_host(&["run-agent", path.to_str().unwrap(), "--task", "x"]),
        "not a WebAssembly file",
    );
}

#[test]
fn inspect_of_a_core_module_is_a_one_line_error_naming_it() {
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
fn inspect_of_a_component_of_another_world_is_a_one_line_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.wasm");
    std::fs::write(&path, wat::parse_str("(component)").unwrap()).unwrap();
    one_line_error(
        &qi_host(&["inspect", path.to_str().unwrap()]),
        "does not export the `qi:agent/agent` world",
    );
}

#[test]
fn inspect_of_a_component_importing_what_the_host_lacks_names_the_import() {
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
fn bad_run_agent_flags_are_one_line_errors_naming_the_flag() {
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
    // Flags the argument parser refuses are bad input too, on one line that names them.
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "x",
            "--isolation",
            "nope",
        ]),
        "`nope` is not an isolation level",
    );
    one_line_error(&qi_host(&["run-agent", HELLO_COMPONENT]), "--task");
}

#[test]
fn inspect_shows_agent_info_imports_and_exports() {
    let o = qi_host(&["inspect", FILE_STATS_COMPONENT]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"agent     file-stats 0.1.0 (Specialized)"),
        "{out}"
    );
    // Each list is the indented lines under its heading.
    let section = |heading: &str| -> Vec<&str> {
        lines
            .iter()
            .skip_while(|l| **l != heading)
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim())
            .collect()
    };
    let imports = section("imports");
    assert!(imports.contains(&"qi:agent/log@0.1.0"), "{out}");
    assert!(imports.contains(&"wasi:filesystem/preopens@0.2.6"), "{out}");
    assert_eq!(section("exports"), ["describe", "run"], "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("runnable  yes: targets qi:agent/agent@0.1.0")),
        "{out}"
    );
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
    let mut todo = vec![data.path().to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                let needle = b"Code review report";
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "plaintext in {}",
                    p.display()
                );
            }
        }
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

/// `hostile` calling `clock.now` `n` times through `run-agent` with `flags`.
fn clock_calls(n: usize, flags: &[&str]) -> (Option<i32>, serde_json::Value) {
    let calls: Vec<_> = (0..n)
        .map(|_| serde_json::json!({"tool": "clock.now", "input": {}}))
        .collect();
    let input = serde_json::json!({"mode": "host.tools", "calls": calls}).to_string();
    let mut args = vec![
        "run-agent",
        HOSTILE_COMPONENT,
        "--task",
        "t",
        "--input",
        &input,
    ];
    args.extend_from_slice(flags);
    args.push("--json");
    let o = qi_host(&args);
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code(), report)
}

#[track_caller]
fn tool_call_limit(code: Option<i32>, report: &serde_json::Value, limit: u64) {
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["failure"]["limit"], "tool-calls", "{report}");
    assert_eq!(report["failure"]["limit_value"], limit, "{report}");
    assert_eq!(report["usage"]["tool_calls"], limit, "{report}");
}

#[test]
fn run_agent_max_tool_calls_and_allow_tool_set_the_budget_pair() {
    let allow = ["--allow-tool", "clock.now", "--max-tool-calls", "3"];
    let (code, inside) = clock_calls(3, &allow);
    assert_eq!(code, Some(0), "{inside}");
    assert_eq!(inside["output"]["calls"], 3, "{inside}");
    let (code, past) = clock_calls(4, &allow);
    tool_call_limit(code, &past, 3);
    // Without `--allow-tool` the first call is refused.
    let (code, refused) = clock_calls(1, &["--max-tool-calls", "3"]);
    assert_eq!(code, Some(1), "{refused}");
    assert_eq!(refused["usage"]["access_denied"], 1, "{refused}");
}

#[test]
fn run_agent_spec_file_sets_the_spec_and_rejects_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"resourceLimits": {"maxToolCalls": 2}, "securityConstraints": {"allowedTools": ["clock.now"]}}"#,
    )
    .unwrap();
    let spec_flag = ["--spec", spec.to_str().unwrap()];
    let (code, inside) = clock_calls(2, &spec_flag);
    assert_eq!(code, Some(0), "{inside}");
    let (code, past) = clock_calls(3, &spec_flag);
    tool_call_limit(code, &past, 2);

    std::fs::write(&spec, r#"{"resourceLimits": {"maxToolCall": 2}}"#).unwrap();
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "t",
            "--spec",
            spec.to_str().unwrap(),
        ]),
        "maxToolCall",
    );
}

#[test]
fn run_agent_isolation_flag_sets_the_level() {
    let calls_logged = |level: &str| {
        let o = qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "t",
            "--isolation",
            level,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["host_call_log"].as_array().unwrap().len()
    };
    // Only `monitored` records host calls: hello makes one (its log record).
    assert_eq!(calls_logged("monitored"), 1);
    assert_eq!(calls_logged("sandbox"), 0);
    one_line_error(
        &qi_host(&[
            "run-agent",
            HELLO_COMPONENT,
            "--task",
            "t",
            "--isolation",
            "sandbox",
            "--dir",
            "/tmp:/w",
        ]),
        "`directories` is not allowed at isolation level `sandbox`",
    );
}

#[test]
fn run_agent_allow_host_admits_the_listed_port_only() {
    // A listener that accepts: a connect the flag does not allow must not reach it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap();
    let probe = |allow: String| {
        let input = serde_json::json!({"target": target.to_string()}).to_string();
        let o = qi_host(&[
            "run-agent",
            NET_PROBE_COMPONENT,
            "--task",
            "probe",
            "--input",
            &input,
            "--allow-host",
            &allow,
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["output"]["connected"].clone()
    };
    assert_eq!(probe(format!("127.0.0.1:{}", target.port() ^ 1)), false);
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a connect to a port not allowed reached the listener"
    );
    assert_eq!(probe(format!("127.0.0.1:{}", target.port())), true);
    listener
        .accept()
        .expect("the allowed connect reached the listener");
}
