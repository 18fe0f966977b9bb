//! `qi-host run-agent`: output and receipt, exit codes, and each flag's effect.

use super::*;
use qi_guest_artifacts::*;

#[test]
fn prints_the_output_and_a_measured_receipt() {
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
fn json_report_has_status_output_and_usage() {
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
fn dir_grants_are_readable_and_writable_only_with_rw() {
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
fn a_missing_file_is_a_one_line_error() {
    one_line_error(
        &qi_host(&["run-agent", "/no/such/agent.wasm", "--task", "x"]),
        "cannot read component",
    );
}

#[test]
fn a_text_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.wasm");
    std::fs::write(&path, "this is text").unwrap();
    one_line_error(
        &qi_host(&["run-agent", path.to_str().unwrap(), "--task", "x"]),
        "not a WebAssembly file",
    );
}

#[test]
fn bad_flags_are_one_line_errors_naming_the_flag() {
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
fn max_tool_calls_and_allow_tool_set_the_budget() {
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
fn spec_file_sets_the_spec_and_rejects_unknown_fields() {
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
fn isolation_flag_sets_the_level() {
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
fn allow_host_admits_the_listed_port_only() {
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

/// Runs `run-agent component --task t <flags> --json`: the exit code and the report.
fn report_of(component: &str, flags: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut args = vec!["run-agent", component, "--task", "t"];
    args.extend_from_slice(flags);
    args.push("--json");
    let o = qi_host(&args);
    let report = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
    (o.status.code(), report)
}

/// The pair limits of these flags are checked through the library (`all::limits`); here each
/// flag must reach the spec: the failure names the flag's limit and value.
#[test]
fn memory_timeout_and_file_operation_flags_set_their_limits() {
    #[track_caller]
    fn stopped_at(run: (Option<i32>, serde_json::Value), limit: &str, value: u64) {
        let (code, report) = run;
        assert_eq!(code, Some(1), "{report}");
        assert_eq!(report["failure"]["limit"], limit, "{report}");
        assert_eq!(report["failure"]["limit_value"], value, "{report}");
    }
    stopped_at(
        report_of(MEMORY_HOG_COMPONENT, &["--max-memory-mb", "16"]),
        "memory",
        16,
    );
    // Fuel for far longer than the deadline: only the deadline can stop it.
    stopped_at(
        report_of(
            SPIN_FOREVER_COMPONENT,
            &["--timeout-ms", "200", "--fuel", "50000000000"],
        ),
        "execution-time",
        200,
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "one two\n").unwrap();
    let grant = format!("{}:/workspace:ro", dir.path().display());
    let stats = |max: &str| {
        report_of(
            FILE_STATS_COMPONENT,
            &["--dir", &grant, "--max-file-operations", max],
        )
    };
    let (code, roomy) = stats("1000");
    assert_eq!(code, Some(0), "{roomy}");
    let needed = roomy["usage"]["file_operations"].as_u64().unwrap();
    assert!(needed > 1, "{roomy}");
    let (code, inside) = stats(&needed.to_string());
    assert_eq!(code, Some(0), "{inside}");
    assert_eq!(inside["output"]["total"]["words"], 2, "{inside}");
    stopped_at(
        stats(&(needed - 1).to_string()),
        "file-operations",
        needed - 1,
    );
}

/// An agent that cannot be spawned (out of fuel while instantiated) makes `run-agent` fail;
/// the audit entries of that spawn are in the data directory's log all the same (the log is
/// flushed before the error is returned, not only after a report).
#[test]
fn a_failed_spawn_is_in_the_audit_log_when_run_agent_fails() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path().to_str().unwrap();
    let o = qi_host(&[
        "run-agent",
        HELLO_COMPONENT,
        "--task",
        "greet",
        "--fuel",
        "1",
        "--data-dir",
        d,
    ]);
    assert!(!o.status.success(), "a spawn with 1 unit of fuel fails");
    let q = qi_host(&["audit", "query", "--data-dir", d, "--json"]);
    assert!(q.status.success(), "{}", stderr(&q));
    let text = stdout(&q);
    assert!(text.contains("spawn-failed"), "{text}");
    let verify = qi_host(&["audit", "verify", "--data-dir", d]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
