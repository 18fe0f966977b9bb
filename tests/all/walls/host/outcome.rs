//! `hostile` guest and bundled guests against the host's handling of how an agent ends: its
//! output, stdout/stderr, `exit`, the identity policies see, receipts of failed spawns, and the
//! pairs of the older limits (tool output, `fs.read`, live agents).

use super::*;

/// The pair for each stream: exactly the capture is kept whole with nothing dropped; one
/// byte more keeps the same bytes and counts the one dropped.
#[tokio::test]
async fn stdout_and_stderr_keep_64_kib_each_and_count_the_rest_as_dropped() {
    for stream in ["stdout", "stderr"] {
        for bytes in [
            STDIO_CAPTURE_BYTES,
            STDIO_CAPTURE_BYTES + 1,
            4 * STDIO_CAPTURE_BYTES,
        ] {
            let r = run(
                HOSTILE_COMPONENT,
                spec(),
                json!({"mode": "host.stdout", "bytes": bytes, "stream": stream}),
            )
            .await;
            assert_eq!(ok(&r)["errors"], 0, "{stream} {bytes}: writes never fail");
            let (kept, dropped, other) = if stream == "stdout" {
                (&r.stdout, r.usage.stdout_dropped, &r.stderr)
            } else {
                (&r.stderr, r.usage.stderr_dropped, &r.stdout)
            };
            // `hostile` writes only `o`s: the first 64 KiB are kept as written.
            assert_eq!(kept.len(), STDIO_CAPTURE_BYTES, "{stream} {bytes}");
            assert!(kept.bytes().all(|b| b == b'o'), "{stream} {bytes}");
            assert_eq!(
                dropped,
                (bytes - STDIO_CAPTURE_BYTES) as u64,
                "{stream} {bytes}"
            );
            assert!(
                other.is_empty(),
                "{stream} {bytes}: the other stream is untouched"
            );
            assert!(r.usage.wasi_calls > 0, "stdio writes are counted");
        }
    }
}

#[tokio::test]
async fn a_guest_exit_is_the_agents_own_failure() {
    for code in [0, 3] {
        let r = run(
            HOSTILE_COMPONENT,
            spec(),
            json!({"mode": "host.exit", "code": code}),
        )
        .await;
        match r.failure {
            // WASI 0.2 `exit` carries only success or failure.
            Some(AgentFailure::Exited { status }) => assert_eq!(status, i32::from(code != 0)),
            other => panic!("expected Exited, got {other:?}"),
        }
        assert_eq!(r.error_category, Some(ErrorCategory::Business));
    }
}

#[tokio::test]
async fn output_at_max_output_bytes_passes_and_one_byte_more_is_output_size() {
    let limit = 1000u64;
    let mut s = spec();
    s.configuration_overrides
        .insert("maxOutputBytes".into(), json!(limit));
    // huge-output returns N + 2 bytes of JSON.
    let at = run(
        HUGE_OUTPUT_COMPONENT,
        s.clone(),
        json!({"bytes": limit - 2}),
    )
    .await;
    assert_eq!(ok(&at).as_str().map(str::len), Some(limit as usize - 2));
    let past = run(HUGE_OUTPUT_COMPONENT, s, json!({"bytes": limit - 1})).await;
    match past.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value,
            ref detail,
        }) => {
            assert_eq!(limit_value, limit);
            assert!(detail.contains(&format!("{} bytes", limit + 1)), "{detail}");
        }
        other => panic!("expected OutputSize, got {other:?}"),
    }
}

#[tokio::test]
async fn an_error_message_at_max_output_bytes_is_reported_and_one_byte_more_is_output_size() {
    let limit = 1000u64;
    let mut s = spec();
    s.configuration_overrides
        .insert("maxOutputBytes".into(), json!(limit));
    let at = run(
        HOSTILE_COMPONENT,
        s.clone(),
        json!({"mode": "host.big-error", "bytes": limit}),
    )
    .await;
    match &at.failure {
        Some(AgentFailure::AgentError {
            error_kind,
            message,
        }) => {
            assert_eq!(error_kind, "failed");
            assert_eq!(message.len() as u64, limit);
        }
        other => panic!("expected the agent's error, got {other:?}"),
    }
    let past = run(
        HOSTILE_COMPONENT,
        s,
        json!({"mode": "host.big-error", "bytes": limit + 1}),
    )
    .await;
    match past.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            limit_value,
            ref detail,
        }) => {
            assert_eq!(limit_value, limit);
            assert!(
                detail.contains(&format!("error message is {} bytes", limit + 1)),
                "{detail}"
            );
        }
        other => panic!("expected OutputSize, got {other:?}"),
    }
}

/// Spawns `hostile` with a description of exactly `bytes` bytes (see its `describe`).
async fn spawn_describing(bytes: usize) -> Result<qi_host::SubAgent, Error> {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("bytes"), bytes.to_string()).expect("bytes file");
    let mut s = spec();
    s.isolation_level = IsolationLevel::Restricted;
    s.security_constraints.file_system_access = qi_host::FileSystemAccess::Restricted;
    s.directories.push(qi_host::DirectoryGrant {
        host_path: dir.path().to_path_buf(),
        guest_path: "/describe".into(),
        writable: Some(false),
    });
    host().spawn(&load(HOSTILE_COMPONENT), s).await
}

#[track_caller]
fn describe_refused(r: Result<qi_host::SubAgent, Error>, needle: &str) {
    use qi_host::interfaces::limits::MAX_DESCRIBE_BYTES;
    match r {
        Err(Error::Spawn(
            AgentFailure::LimitExceeded {
                limit: LimitKind::ArgumentSize,
                limit_value,
                detail,
            },
            usage,
        )) => {
            assert_eq!(limit_value, MAX_DESCRIBE_BYTES as u64, "{detail}");
            assert!(detail.contains(needle), "{detail} lacks {needle}");
            assert!(
                usage.fuel_consumed > 0,
                "the receipt counts what describe() used"
            );
        }
        other => panic!("expected a describe() refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn describe_answers_at_the_limit_spawn_and_longer_ones_are_refused_uncopied() {
    use qi_host::interfaces::limits::MAX_DESCRIBE_BYTES;
    // Name, version and the one capability `hostile` declares, besides its description.
    let fixed = "hostile".len() + "0.1.0".len() + "sandbox-probe".len();
    let at = spawn_describing(MAX_DESCRIBE_BYTES - fixed)
        .await
        .expect("an answer at the limit spawns");
    assert_eq!(
        at.description().description.len(),
        MAX_DESCRIBE_BYTES - fixed
    );
    drop(at);
    describe_refused(
        spawn_describing(MAX_DESCRIBE_BYTES - fixed + 1).await,
        &format!("describe() answered {} bytes", MAX_DESCRIBE_BYTES + 1),
    );
    // Far past it: refused before wasmtime copies the answer.
    describe_refused(
        spawn_describing(16 * MAX_DESCRIBE_BYTES).await,
        "refused before it was copied",
    );
}

#[tokio::test]
async fn a_spawn_that_fails_after_guest_code_ran_still_has_its_receipt() {
    let mut s = spec();
    s.fuel = 1_000;
    let err = host()
        .spawn(&load(HELLO_COMPONENT), s)
        .await
        .expect_err("1000 fuel cannot instantiate");
    match err {
        Error::Spawn(AgentFailure::LimitExceeded { limit, .. }, usage) => {
            assert_eq!(limit, LimitKind::Fuel);
            assert_eq!(usage.fuel_consumed, 1_000);
            assert!(usage.wall_time_us > 0);
        }
        other => panic!("expected a spawn failure, got {other:?}"),
    }
}

#[tokio::test]
async fn live_agents_are_capped_at_max_live_agents() {
    let host = crate::common::new_host(2);
    let hello = host.load(HELLO_COMPONENT).expect("hello loads");
    let a = host.spawn(&hello, spec()).await.expect("first spawns");
    let b = host.spawn(&hello, spec()).await.expect("second spawns");
    match host.spawn(&hello, spec()).await {
        Err(Error::TooManyAgents { limit }) => assert_eq!(limit, 2),
        other => panic!("expected TooManyAgents, got {other:?}"),
    }
    // A finished agent frees its place.
    drop(a);
    let c = host.spawn(&hello, spec()).await.expect("a place was freed");
    drop((b, c));
}

/// Allows `clock.now` to agents named `hostile` only.
const HOSTILE_MAY_READ_THE_CLOCK: &str = r#"
[[policies]]
id = "hostile-clock"
priority = 1
[[policies.rules]]
effect = "allow"
resources = ["tool/clock.now"]
agents = ["hostile"]
"#;

#[tokio::test]
async fn policies_match_the_host_assigned_name_not_the_declared_one() {
    use qi_host::security::{AccessControl, AccessPolicy, PolicySet};
    let file: toml::Value = toml::from_str(HOSTILE_MAY_READ_THE_CLOCK).expect("policy toml");
    let list: Vec<AccessPolicy> = file["policies"].clone().try_into().expect("policies parse");
    let access = std::sync::Arc::new(AccessControl::new(
        Some(PolicySet::new(list).expect("policies valid")),
        None,
    ));
    let host = context_host().await.with_access(access);
    let probe = json!({"mode": "host.tool-input", "bytes": 8});
    // The component declares `hostile` in describe(); the host named it otherwise.
    for (name, allowed) in [
        (Some("reviewer"), false),
        (None, false),
        (Some("hostile"), true),
    ] {
        let mut s = hostile_spec();
        s.name = name.map(str::to_string);
        let r = host
            .run(
                &host.load(HOSTILE_COMPONENT).expect("hostile loads"),
                s,
                TaskRequest::new("attack", probe.clone()),
            )
            .await
            .expect("hostile spawns");
        assert_eq!(r.agent.as_ref().map(|a| a.name.as_str()), Some("hostile"));
        if allowed {
            assert_eq!(ok(&r)["ok"], true, "named {name:?}");
        } else {
            match &r.failure {
                Some(AgentFailure::AgentError { message, .. }) => {
                    assert!(message.contains("access-denied"), "{message}")
                }
                other => panic!("named {name:?}: expected a refusal, got {other:?}"),
            }
            assert_eq!(r.usage.access_denied, 1, "named {name:?}");
            // A refused call still costs a tool call.
            assert_eq!(r.usage.tool_calls, 1, "named {name:?}");
        }
    }
}

#[tokio::test]
async fn clock_reads_are_counted_as_wasi_calls() {
    let mut calls = Vec::new();
    for count in [0, 100] {
        let r = run(
            HOSTILE_COMPONENT,
            spec(),
            json!({"mode": "host.clock", "count": count}),
        )
        .await;
        ok(&r);
        calls.push(r.usage.wasi_calls);
    }
    assert_eq!(calls[1] - calls[0], 100, "{calls:?}");
}

/// `test.sized {"bytes": N}` answers a JSON string of exactly N bytes of JSON text.
struct Sized;

impl qi_host::Tool for Sized {
    fn name(&self) -> &str {
        "test.sized"
    }
    fn description(&self) -> &str {
        "Answers a JSON string of exactly {\"bytes\": N} bytes"
    }
    fn call(&self, _ctx: qi_host::ToolContext, input: Value) -> qi_host::ToolFuture {
        let bytes = input["bytes"].as_u64().unwrap_or(2) as usize;
        Box::pin(async move { Ok(Value::String("x".repeat(bytes.saturating_sub(2)))) })
    }
}

#[tokio::test]
async fn tool_output_at_the_limit_is_handed_over_and_one_byte_more_is_refused() {
    use qi_host::interfaces::limits::MAX_TOOL_OUTPUT_BYTES;
    let mut tools = ToolRegistry::with_builtins();
    tools.register(Sized);
    let host = AgentHost::with_tools(
        HostConfig {
            max_live_agents: 4,
            cache_dir: Some(cache_dir()),
            ..HostConfig::default()
        },
        tools,
    )
    .expect("host starts");
    let hostile = host.load(HOSTILE_COMPONENT).expect("hostile loads");
    let mut s = hostile_spec();
    s.resource_limits.max_memory_mb = 128;
    s.security_constraints
        .allowed_tools
        .push("test.sized".into());
    let attack = |bytes: usize| json!({"mode": "host.tool", "tool": "test.sized", "input": {"bytes": bytes}});
    let at = host
        .run(
            &hostile,
            s.clone(),
            TaskRequest::new("t", attack(MAX_TOOL_OUTPUT_BYTES)),
        )
        .await
        .expect("spawns");
    assert_eq!(ok(&at)["bytes"], MAX_TOOL_OUTPUT_BYTES);
    let past = host
        .run(
            &hostile,
            s,
            TaskRequest::new("t", attack(MAX_TOOL_OUTPUT_BYTES + 1)),
        )
        .await
        .expect("spawns");
    match &past.failure {
        Some(AgentFailure::AgentError { message, .. }) => assert!(
            message.contains(&format!(
                "tool output is more than {MAX_TOOL_OUTPUT_BYTES} bytes; the limit is \
                 {MAX_TOOL_OUTPUT_BYTES}"
            )),
            "{message}"
        ),
        other => panic!("expected the refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn fs_read_of_a_file_at_the_limit_passes_and_one_byte_more_is_refused() {
    use qi_host::tools::FS_READ_MAX_BYTES;
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = FS_READ_MAX_BYTES as usize;
    std::fs::write(dir.path().join("at.txt"), "a".repeat(limit)).expect("write");
    std::fs::write(dir.path().join("past.txt"), "a".repeat(limit + 1)).expect("write");
    let mut s = hostile_spec();
    s.directories.push(qi_host::DirectoryGrant {
        host_path: dir.path().to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(false),
    });
    s.security_constraints.allowed_tools.push("fs.read".into());
    let read = |file: &str| json!({"mode": "host.tool", "tool": "fs.read", "input": {"path": format!("/workspace/{file}")}});
    let at = run(HOSTILE_COMPONENT, s.clone(), read("at.txt")).await;
    // The content plus the JSON around it.
    assert!(ok(&at)["bytes"].as_u64().unwrap() > FS_READ_MAX_BYTES);
    let past = run(HOSTILE_COMPONENT, s, read("past.txt")).await;
    match &past.failure {
        Some(AgentFailure::AgentError { message, .. }) => assert!(
            message.contains(&format!("is larger than {FS_READ_MAX_BYTES} bytes")),
            "{message}"
        ),
        other => panic!("expected the refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_output_over_the_limit_is_refused_without_being_copied() {
    use qi_host::interfaces::limits::MAX_HOST_CALL_TRANSFER_BYTES;
    // Larger than the Store's hostcall fuel: had the host copied it, wasmtime would have
    // refused the transfer instead; the length alone was read in guest memory.
    let bytes = MAX_HOST_CALL_TRANSFER_BYTES + (1 << 20);
    let mut s = spec();
    s.resource_limits.max_memory_mb = 128;
    let r = run(HUGE_OUTPUT_COMPONENT, s, json!({"bytes": bytes})).await;
    match r.failure {
        Some(AgentFailure::LimitExceeded {
            limit: LimitKind::OutputSize,
            ref detail,
            ..
        }) => assert!(
            detail.contains(&format!("output is {} bytes", bytes + 2)),
            "{detail}"
        ),
        other => panic!("expected OutputSize, got {other:?}"),
    }
}

#[test]
fn run_agent_name_is_the_name_policies_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("p.toml");
    std::fs::write(&policies, HOSTILE_MAY_READ_THE_CLOCK).expect("write policies");
    let run_agent = |name: Option<&str>| {
        let mut cmd = crate::common::qi_host_command();
        cmd.args(["run-agent", HOSTILE_COMPONENT, "--task", "probe"])
            .args(["--input", r#"{"mode": "host.tool-input", "bytes": 8}"#])
            .args(["--allow-tool", "clock.now", "--json"])
            .arg("--policies")
            .arg(&policies);
        if let Some(name) = name {
            cmd.args(["--name", name]);
        }
        let o = cmd.output().expect("qi-host runs");
        let report: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&o.stderr));
        });
        (o.status.code(), report)
    };
    // The component declares `hostile`; without `--name` the policy does not match it.
    let (code, report) = run_agent(None);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["usage"]["access_denied"], 1, "{report}");
    let (code, report) = run_agent(Some("hostile"));
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["output"]["ok"], true, "{report}");
}

/// `hostile` with `dir` mounted read-write at `/workspace`, `fs.write` allowed, and the given
/// disk and file quotas.
fn fs_write_spec(dir: &std::path::Path, disk: u64, files: u32) -> SubAgentSpecification {
    let mut s = hostile_spec();
    s.security_constraints.file_system_access = qi_host::FileSystemAccess::Restricted;
    s.directories.push(qi_host::DirectoryGrant {
        host_path: dir.to_path_buf(),
        guest_path: "/workspace".into(),
        writable: Some(true),
    });
    s.security_constraints.allowed_tools.push("fs.write".into());
    s.resource_limits.max_disk_bytes = disk;
    s.resource_limits.max_files_created = files;
    s
}

fn writes(files: &[(&str, usize)]) -> Value {
    let calls: Vec<Value> = files
        .iter()
        .map(|(path, bytes)| {
            json!({"tool": "fs.write", "input": {"path": format!("/workspace/{path}"), "content": "w".repeat(*bytes)}})
        })
        .collect();
    json!({"mode": "host.tools", "calls": calls})
}

#[tokio::test]
async fn the_fs_write_tool_is_held_to_the_disk_quota() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let quota = 1000;
    let at = run(
        HOSTILE_COMPONENT,
        fs_write_spec(dir.path(), quota, 10),
        // Replacing a file is charged like the guest's own truncate-and-write: every byte
        // written (truncation gives nothing back).
        writes(&[("a", 600), ("a", 300), ("b", 100)]),
    )
    .await;
    assert_eq!(ok(&at)["calls"], 3);
    assert_eq!(at.usage.disk_bytes_written, quota);
    assert_eq!(at.usage.files_created, 2);
    let dir = tempfile::tempdir().expect("temporary directory");
    let past = run(
        HOSTILE_COMPONENT,
        fs_write_spec(dir.path(), quota, 10),
        writes(&[("a", 600), ("b", 401)]),
    )
    .await;
    assert_eq!(limit(&past).0, LimitKind::DiskBytes);
    assert!(
        !dir.path().join("b").exists(),
        "nothing written past the quota"
    );
    assert_eq!(past.usage.disk_bytes_written, 600);
}

#[tokio::test]
async fn the_fs_write_tool_is_held_to_the_files_quota() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let at = run(
        HOSTILE_COMPONENT,
        fs_write_spec(dir.path(), 1 << 20, 2),
        writes(&[("a", 1), ("b", 1), ("a", 2)]),
    )
    .await;
    assert_eq!(ok(&at)["calls"], 3);
    assert_eq!(at.usage.files_created, 2);
    let dir = tempfile::tempdir().expect("temporary directory");
    let past = run(
        HOSTILE_COMPONENT,
        fs_write_spec(dir.path(), 1 << 20, 2),
        writes(&[("a", 1), ("b", 1), ("c", 1)]),
    )
    .await;
    assert_eq!(limit(&past).0, LimitKind::FilesCreated);
    assert!(
        !dir.path().join("c").exists(),
        "no file created past the quota"
    );
    assert_eq!(past.usage.files_created, 2);
}
