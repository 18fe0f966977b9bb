//! One test module per bundled guest: each checks exactly what its README line says the host
//! must do with it. `foreach_guest!` makes a guest without a module here a compile error.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{AgentFailure, AgentStatus, ErrorCategory, LimitKind};
use serde_json::json;

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
foreach_guest!(assert_test_exists);

pub use self::file_stats::workspace as file_stats_workspace;

/// The `hostile` guest's tests live in `walls/`, one file per wall.
mod hostile {
    #[allow(unused_imports)]
    pub use crate::walls::*;
}

/// The model guests' tests live in `llm/`, one file per concern.
mod llm_agent {
    #[allow(unused_imports)]
    pub use crate::llm::*;
}

mod ai_reviewer {
    #[allow(unused_imports)]
    pub use crate::llm::*;
}

mod key_hunter {
    #[allow(unused_imports)]
    pub use crate::llm::*;
}

mod hello {
    use super::*;

    #[tokio::test]
    async fn echoes_and_reports_measured_usage() {
        let report = run(HELLO_COMPONENT, spec(), json!({"name": "qi"})).await;
        let out = ok(&report);
        assert_eq!(out["echo"], "test task");
        assert_eq!(out["input"], json!({"name": "qi"}));
        assert_eq!(out["agent"], "hello");
        assert_eq!(report.status, AgentStatus::Completed);
        let info = report.agent.as_ref().unwrap();
        assert_eq!(info.name, "hello");
        let u = &report.usage;
        assert!(u.fuel_consumed > 0, "{u:?}");
        assert!(u.peak_memory_bytes >= 64 * 1024, "{u:?}");
        assert!(u.wall_time_us > 0);
        assert!(u.host_calls >= 1, "hello logs once: {u:?}");
        assert_eq!(u.tool_calls, 0);
        assert_eq!(u.file_operations, 0);
        assert!(report.logs.iter().any(|l| {
            l.fields
                .iter()
                .any(|(k, v)| k == "task_id" && v == &report.task_id)
        }));
    }

    #[tokio::test]
    async fn sees_no_host_environment_or_arguments() {
        let report = run(HELLO_COMPONENT, spec(), json!(null)).await;
        let out = ok(&report);
        assert_eq!(out["env_vars"], 0, "{out}");
        assert_eq!(out["args"], 0, "{out}");
    }

    #[tokio::test]
    async fn same_input_burns_the_same_fuel() {
        let a = run(HELLO_COMPONENT, spec(), json!({"n": 1})).await;
        let b = run(HELLO_COMPONENT, spec(), json!({"n": 1})).await;
        assert_eq!(a.usage.fuel_consumed, b.usage.fuel_consumed);
    }
}

mod file_stats {
    use super::*;

    pub fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one two\nthree\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "alpha beta gamma\n").unwrap();
        dir
    }

    #[tokio::test]
    async fn counts_lines_and_words_in_its_read_only_workspace() {
        let dir = workspace();
        let report = run(
            FILE_STATS_COMPONENT,
            restricted_spec(dir.path()),
            json!(null),
        )
        .await;
        let out = ok(&report);
        assert_eq!(
            out["total"],
            json!({"files": 2, "lines": 3, "words": 6, "bytes": 31})
        );
        assert_eq!(out["files"][0]["path"], "/workspace/a.txt");
        assert_eq!(out["files"][1]["path"], "/workspace/sub/b.md");
        assert!(report.usage.file_operations >= 4, "{:?}", report.usage);
    }

    #[tokio::test]
    async fn sandboxed_agent_sees_no_filesystem() {
        let report = run(FILE_STATS_COMPONENT, spec(), json!({"dir": "/"})).await;
        match &report.failure {
            Some(AgentFailure::AgentError { message, .. }) => {
                assert_eq!(message, "/: No such file or directory (os error 44)")
            }
            other => panic!("expected the agent's own error, got {other:?}"),
        }
    }
}

mod tool_user {
    use super::*;

    #[tokio::test]
    async fn calls_allowed_tools_and_reports_refusals() {
        let mut s = spec();
        s.security_constraints.allowed_tools = vec!["clock.*".into(), "nope".into()];
        let input = json!({"calls": [
            {"tool": "clock.now", "input": {}},
            {"tool": "fs.write", "input": {"path": "/x", "content": "y"}},
            {"tool": "nope", "input": {}},
        ]});
        let report = run(TOOL_USER_COMPONENT, s, input).await;
        let out = ok(&report);
        let results = out["results"].as_array().unwrap();
        assert!(results[0]["ok"]["unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
        assert_eq!(results[1]["error"]["kind"], "access-denied");
        assert_eq!(results[2]["error"]["kind"], "not-found");
        // Every attempt costs a tool call, the refused and the unknown ones included.
        assert_eq!(report.usage.tool_calls, 3);
        assert_eq!(report.usage.access_denied, 1);
    }

    #[tokio::test]
    async fn prohibited_operations_beat_allowed_tools() {
        let mut s = spec();
        s.security_constraints.allowed_tools = vec!["*".into()];
        s.security_constraints.prohibited_operations = vec!["clock.now".into()];
        let report = run(
            TOOL_USER_COMPONENT,
            s,
            json!({"calls": [{"tool": "clock.now", "input": {}}]}),
        )
        .await;
        let out = ok(&report);
        assert_eq!(out["results"][0]["error"]["kind"], "access-denied");
        assert!(
            out["results"][0]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("prohibited")
        );
    }

    #[tokio::test]
    async fn stops_when_its_budget_says_so() {
        let mut s = spec();
        s.security_constraints.allowed_tools = vec!["clock.now".into()];
        s.resource_limits.max_tool_calls = 2;
        let calls: Vec<_> = (0..5)
            .map(|_| json!({"tool": "clock.now", "input": {}}))
            .collect();
        let report = run(TOOL_USER_COMPONENT, s, json!({"calls": calls})).await;
        let out = ok(&report);
        assert_eq!(out["results"].as_array().unwrap().len(), 2);
        assert_eq!(out["stopped"], "budget");
        assert_eq!(out["remaining"]["tool_calls"], 0);
        assert_eq!(report.usage.tool_calls, 2);
    }
}

mod sleeper {
    use super::*;

    /// On paused tokio time the guest's WASI sleep is a tokio timer: the clock moves by exactly
    /// the time it slept, and only when it really waited.
    #[tokio::test(start_paused = true)]
    async fn sleeps_inside_wasi_for_the_time_it_is_given() {
        let host = new_host(2);
        let sleeper = host.load(SLEEPER_COMPONENT).expect("sleeper loads");
        let before = tokio::time::Instant::now();
        let report = host
            .run(
                &sleeper,
                spec(),
                qi_host::TaskRequest::new("sleep", json!({"ms": 30})),
            )
            .await
            .expect("spawns");
        assert_eq!(ok(&report)["slept_ms"], 30);
        assert_eq!(before.elapsed(), std::time::Duration::from_millis(30));
    }
}

mod spin_forever {
    use super::*;

    #[tokio::test]
    async fn is_stopped_by_fuel() {
        let mut s = spec();
        s.fuel = 50_000_000;
        let report = run(SPIN_FOREVER_COMPONENT, s, json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::Fuel);
        assert!(message.contains("fuel"), "{message}");
        assert_eq!(report.usage.fuel_consumed, 50_000_000);
        assert_eq!(report.error_category, Some(ErrorCategory::Resource));
    }

    #[tokio::test]
    async fn is_stopped_by_the_wall_clock() {
        let mut s = spec();
        s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
        s.resource_limits.max_execution_time_ms = 200;
        let report = run(SPIN_FOREVER_COMPONENT, s, json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::ExecutionTime);
        assert!(message.contains("maxExecutionTimeMs = 200"), "{message}");
    }
}

mod memory_hog {
    use super::*;

    #[tokio::test]
    async fn is_stopped_at_its_memory_cap() {
        let mut s = spec();
        s.resource_limits.max_memory_mb = 16;
        let report = run(MEMORY_HOG_COMPONENT, s, json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::Memory);
        assert!(message.contains("maxMemoryMB = 16"), "{message}");
        assert!(report.usage.peak_memory_bytes <= 16 << 20);
    }
}

mod stack_overflow {
    use super::*;

    #[tokio::test]
    async fn ends_with_a_stack_limit_error() {
        let report = run(STACK_OVERFLOW_COMPONENT, spec(), json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::Stack);
        assert!(message.contains("call stack exhausted"), "{message}");
    }

    #[tokio::test]
    async fn running_off_the_shadow_stack_is_a_trap() {
        let report = run(
            STACK_OVERFLOW_COMPONENT,
            spec(),
            json!({"mode": "shadow-stack"}),
        )
        .await;
        match &report.failure {
            Some(AgentFailure::Trapped { message }) => {
                assert!(message.contains("out of bounds memory access"), "{message}")
            }
            other => panic!("expected a trap, got {other:?}"),
        }
    }
}

mod fs_escape;

mod net_probe {
    use super::*;

    #[tokio::test]
    async fn cannot_reach_an_accepting_listener_that_is_not_allowed() {
        let server = TestServer::start().await;
        let other_port = format!("127.0.0.1:{}", server.addr.port().wrapping_add(1));
        let report = run(
            NET_PROBE_COMPONENT,
            network_spec(&[other_port]),
            json!({"target": server.addr.to_string(), "http": true}),
        )
        .await;
        let out = ok(&report);
        assert_eq!(out["connected"], false, "{out}");
        assert_eq!(report.usage.network_denied, 1, "{:?}", report.usage);
        assert_eq!(
            server.connections_so_far().await,
            0,
            "the listener was reached"
        );
    }

    #[tokio::test]
    async fn sandboxed_agent_cannot_reach_an_accepting_listener() {
        let server = TestServer::start().await;
        let report = run(
            NET_PROBE_COMPONENT,
            spec(),
            json!({"target": server.addr.to_string(), "http": true}),
        )
        .await;
        assert_eq!(ok(&report)["connected"], false);
        assert_eq!(report.usage.network_allowed, 0, "{:?}", report.usage);
        assert_eq!(
            server.connections_so_far().await,
            0,
            "the listener was reached"
        );
    }
}

mod tool_spammer {
    use super::*;

    #[tokio::test]
    async fn is_stopped_at_max_tool_calls() {
        let mut s = spec();
        s.security_constraints.allowed_tools = vec!["clock.now".into()];
        s.resource_limits.max_tool_calls = 10;
        let report = run(TOOL_SPAMMER_COMPONENT, s, json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::ToolCalls);
        assert!(message.contains("maxToolCalls = 10"), "{message}");
        assert_eq!(report.usage.tool_calls, 10);
    }
}

mod panicker {
    use super::*;

    #[tokio::test]
    async fn panic_message_reaches_the_report() {
        let report = run(PANICKER_COMPONENT, spec(), json!(null)).await;
        match &report.failure {
            Some(AgentFailure::Panicked { message }) => {
                assert!(
                    message.contains("deliberate panic from panicker"),
                    "{message}"
                )
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        assert_eq!(report.status, AgentStatus::Failed);
    }
}

mod huge_output {
    use super::*;

    #[tokio::test]
    async fn output_over_the_cap_is_an_error() {
        let report = run(HUGE_OUTPUT_COMPONENT, spec(), json!(null)).await;
        let (kind, message) = limit(&report);
        assert_eq!(kind, LimitKind::OutputSize);
        assert!(message.contains("16777218 bytes"), "{message}");
    }
}

mod compute;

// The context guests need a host with a context store attached; their tests live in
// `crate::context`, one module per guest.

mod racer {
    #[allow(unused_imports)]
    pub(crate) use crate::context::racer as tests;
}

mod subscriber {
    #[allow(unused_imports)]
    pub(crate) use crate::context::subscriber as tests;
}

mod snoop {
    #[allow(unused_imports)]
    pub(crate) use crate::context::snoop as tests;
}

// The coordination guests: `worker` and `analyzer` also run alone; `reviewer` and `reporter`
// need a coordinated run (a decision point, a context store).

mod worker {
    use super::*;

    #[tokio::test]
    async fn runs_its_steps_and_emits_its_outputs() {
        let report = run(
            WORKER_COMPONENT,
            spec(),
            json!({"subtask": "s", "attempt": 1, "inputs": {
                "steps": [{"work": 1000}, {"barrier": "p", "tolerate": true}],
                "emit": {"answer": 42},
                "other": "x"
            }}),
        )
        .await;
        let out = ok(&report);
        assert_eq!(out["answer"], 42);
        assert_eq!(out["received"], json!({"other": "x"}));
        // The same loop as `compute`'s cpu kind: the checksums agree.
        let compute = run(
            COMPUTE_COMPONENT,
            spec(),
            json!({"kind": "cpu", "iterations": 1000}),
        )
        .await;
        assert_eq!(out["work"], ok(&compute)["checksum"]);
        // Outside a coordinated run, sync calls are refused (and tolerated here).
        let err = out["sync"][0]["error"].as_str().unwrap();
        assert!(err.contains("not-coordinated"), "{err}");
    }

    #[tokio::test]
    async fn fails_on_purpose_when_told_to() {
        let report = run(
            WORKER_COMPONENT,
            spec(),
            json!({"subtask": "s", "attempt": 1, "inputs": {"steps": [{"fail_before_attempt": 2}]}}),
        )
        .await;
        match &report.failure {
            Some(AgentFailure::AgentError { message, .. }) => {
                assert!(
                    message.contains("attempt 1 of s fails on purpose"),
                    "{message}"
                )
            }
            other => panic!("expected the agent's failure, got {other:?}"),
        }
    }
}

mod analyzer {
    use super::*;

    #[tokio::test]
    async fn counts_a_shard_of_its_read_only_workspace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.rs"),
            "// header\nfn main() {\n    // TODO: x\n}\n\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.py"),
            format!("def f():\n    return '{}'\n", "y".repeat(120)),
        )
        .unwrap();
        let report = run(
            ANALYZER_COMPONENT,
            restricted_spec(dir.path()),
            json!({"subtask": "s", "attempt": 1, "inputs": {"files": ["a.rs", "b.py", "missing.rs", "../x"]}}),
        )
        .await;
        let out = ok(&report);
        let a = &out["findings"]["a.rs"];
        assert_eq!(a["lines"], 5);
        assert_eq!(a["blank"], 1);
        assert_eq!(a["comment"], 2);
        assert_eq!(a["todo"], 1);
        assert_eq!(a["functions"], 1);
        assert_eq!(out["findings"]["b.py"]["long_lines"], 1);
        assert_eq!(out["totals"]["files"], 2);
        assert!(out["errors"]["missing.rs"].is_string());
        assert!(out["errors"]["../x"].is_string());
        assert!(report.usage.file_operations > 0);
    }
}

/// One subtask of `agent` with `inputs` (TOML), meeting itself at a decision point `v`.
async fn coordinated(
    agent: &str,
    inputs: &str,
) -> (crate::coord::Harness, qi_host::coord::RunReport) {
    let h = crate::coord::harness().await;
    let toml = format!(
        r#"
[task]
id = "t"
[strategy]
type = "hybrid"
[[strategy.synchronizationPoints]]
id = "v"
type = "decision"
participants = ["s"]
[agents.a]
component = "guest:{agent}"
config = {{ focus = "todos" }}
[[subtasks]]
id = "s"
inputs = {inputs}
"#
    );
    let (r, _) = h.run(&toml).await;
    (h, r)
}

mod reviewer {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn votes_by_its_focus_and_receives_the_decision() {
        let many_todos = r#"[{ name = "findings", value = [{ totals = { files = 1, lines = 100, comment = 10, todo = 3, long_lines = 0 } }] }, { name = "decision", value = "v" }]"#;
        let (_, r) = coordinated("reviewer", many_todos).await;
        assert!(r.success, "{r:#?}");
        let out = r.results[0].output.as_ref().unwrap();
        assert_eq!(out["review"]["vote"], "changes-requested");
        assert_eq!(out["decision"], "changes-requested");
        let clean = many_todos.replace("todo = 3", "todo = 0");
        let (_, r) = coordinated("reviewer", &clean).await;
        assert_eq!(r.results[0].output.as_ref().unwrap()["decision"], "approve");
    }
}

/// `messenger` needs a coordinated run: its runs are in `coord::channels`. Alone, every
/// channel call is `not-coordinated` and the agent fails saying so.
mod messenger {
    use super::*;

    #[tokio::test]
    async fn alone_its_channel_calls_are_not_coordinated() {
        let input = json!({"subtask": "p", "attempt": 1, "inputs": {"role": "producer", "channel": "jobs", "count": 1}});
        let report = run(MESSENGER_COMPONENT, spec(), input).await;
        let failure = report.failure.as_ref().expect("no run, no channel");
        assert!(failure.to_string().contains("not-coordinated"), "{failure}");
        assert_eq!(report.usage.channel_messages_sent, 0);
    }
}

mod reporter {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_its_report_into_the_shared_context() {
        let inputs = r#"[{ name = "findings", value = [{ totals = { files = 1, lines = 50, todo = 1 }, findings = { "x.rs" = { lines = 50, todo = 1, long_lines = 0 } } }] }, { name = "context_id", value = "report/{run}" }, { name = "missing", value = ["a.analysis"] }]"#;
        let (h, r) = coordinated("reporter", inputs).await;
        assert!(r.success, "{r:#?}");
        let id = format!("report/{}", r.coordination_id);
        let doc = h
            .svc
            .get(qi_host::context::OPERATOR, &id)
            .await
            .unwrap()
            .doc;
        assert_eq!(doc["files"], 1);
        assert_eq!(doc["missing"], json!(["a.analysis"]));
        assert_eq!(doc["hotspots"][0]["path"], "x.rs");
        assert!(doc["markdown"].as_str().unwrap().contains("a.analysis"));
    }
}
