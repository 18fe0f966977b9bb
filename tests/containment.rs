//! Containment: 200 agents at once, a dozen misbehaving in every way the bundled guests know.
//! Every well-behaved agent completes with the right result, every misbehaving one fails with its
//! own precise error, the host survives, and its resident memory returns near where it started.
//!
//! Its own test binary so that its memory measurements see no other test's agents.

#[allow(dead_code)]
#[path = "all/common.rs"]
mod common;

use common::*;
use qi_guest_artifacts::*;
use qi_host::{
    AgentFailure, AgentHost, AgentReport, HostConfig, LimitKind, LoadedComponent, TaskRequest,
    Tool, ToolContext, ToolFuture, ToolRegistry,
};
use serde_json::{Value, json};
use std::collections::HashMap;

use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use tokio::sync::Notify;

/// One signal per agent id: raised when the agent enters a `test.entered*` tool, so a test
/// terminates an agent once it is known to be spinning or waiting, never after a guessed delay.
fn entered(agent_id: &str) -> Arc<Notify> {
    static ENTERED: LazyLock<Mutex<HashMap<String, Arc<Notify>>>> = LazyLock::new(Default::default);
    ENTERED
        .lock()
        .unwrap()
        .entry(agent_id.to_string())
        .or_default()
        .clone()
}

/// `test.entered`: raises the caller's [`entered`] signal and answers at once.
struct Entered;

impl Tool for Entered {
    fn name(&self) -> &str {
        "test.entered"
    }
    fn description(&self) -> &str {
        "Tells the test the agent got here, then answers {}"
    }
    fn call(&self, ctx: ToolContext, _input: Value) -> ToolFuture {
        entered(&ctx.agent_id).notify_one();
        Box::pin(async { Ok(json!({})) })
    }
}

/// `test.entered-block`: raises the caller's [`entered`] signal and never answers.
struct EnteredBlock;

impl Tool for EnteredBlock {
    fn name(&self) -> &str {
        "test.entered-block"
    }
    fn description(&self) -> &str {
        "Tells the test the agent got here, then never returns"
    }
    fn call(&self, ctx: ToolContext, _input: Value) -> ToolFuture {
        entered(&ctx.agent_id).notify_one();
        Box::pin(async {
            std::future::pending::<()>().await;
            unreachable!()
        })
    }
}

/// The shared test host plus the two signalling tools (shadows `common::host`).
fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut tools = ToolRegistry::with_builtins();
        tools.register(Entered);
        tools.register(EnteredBlock);
        AgentHost::with_tools(
            HostConfig {
                max_live_agents: 256,
                cache_dir: Some(cache_dir()),
                ..HostConfig::default()
            },
            tools,
        )
        .expect("host starts")
    })
}

fn load(path: &str) -> Arc<LoadedComponent> {
    host().load(path).expect("bundled guest loads")
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[derive(Clone, Copy, Debug)]
enum Expect {
    Hello(usize),
    Stats,
    Fails(fn(&AgentFailure) -> bool, &'static str),
    EscapesRefused,
    NetRefused,
    Terminated,
}

async fn one(i: usize, ws: std::path::PathBuf, canary_port: u16) -> (Expect, AgentReport) {
    let mut s = spec();
    let (path, input, expect): (&str, Value, Expect) = match i {
        0 => {
            s.fuel = 20_000_000;
            (
                SPIN_FOREVER_COMPONENT,
                json!(null),
                Expect::Fails(|f| f.limit() == Some(LimitKind::Fuel), "fuel"),
            )
        }
        1 => {
            s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
            s.resource_limits.max_execution_time_ms = 300;
            (
                SPIN_FOREVER_COMPONENT,
                json!(null),
                Expect::Fails(|f| f.limit() == Some(LimitKind::ExecutionTime), "deadline"),
            )
        }
        2 | 3 => {
            s.resource_limits.max_memory_mb = 48;
            (
                MEMORY_HOG_COMPONENT,
                json!(null),
                Expect::Fails(|f| f.limit() == Some(LimitKind::Memory), "memory"),
            )
        }
        4 => (
            STACK_OVERFLOW_COMPONENT,
            json!(null),
            Expect::Fails(|f| f.limit() == Some(LimitKind::Stack), "stack"),
        ),
        // A read-only mount of its own, beside the canary `outside.txt` and holding a link to it.
        5 => {
            s = crate_restricted(&ws.with_file_name("escape-ws"));
            (FS_ESCAPE_COMPONENT, json!(null), Expect::EscapesRefused)
        }
        6 => (
            NET_PROBE_COMPONENT,
            json!({"target": format!("127.0.0.1:{canary_port}"), "http": true}),
            Expect::NetRefused,
        ),
        7 => {
            s.security_constraints.allowed_tools = vec!["clock.now".into()];
            s.resource_limits.max_tool_calls = 20;
            (
                TOOL_SPAMMER_COMPONENT,
                json!(null),
                Expect::Fails(|f| f.limit() == Some(LimitKind::ToolCalls), "tool calls"),
            )
        }
        8 => (
            PANICKER_COMPONENT,
            json!(null),
            Expect::Fails(
                |f| matches!(f, AgentFailure::Panicked { message } if message.contains("deliberate")),
                "panic",
            ),
        ),
        9 => (
            HUGE_OUTPUT_COMPONENT,
            json!(null),
            Expect::Fails(|f| f.limit() == Some(LimitKind::OutputSize), "output"),
        ),
        // Terminated while waiting in a host call that never answers.
        10 => {
            s.security_constraints.allowed_tools = vec!["test.entered-block".into()];
            (
                TOOL_USER_COMPONENT,
                json!({"calls": [{"tool": "test.entered-block", "input": {}}]}),
                Expect::Terminated,
            )
        }
        // Terminated while spinning (`hostile`'s `host.spin` says when it starts): with the
        // fuel ceiling it would otherwise run into its deadline.
        11 => {
            s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
            s.security_constraints.allowed_tools = vec!["test.entered".into()];
            (
                HOSTILE_COMPONENT,
                json!({"mode": "host.spin", "tool": "test.entered"}),
                Expect::Terminated,
            )
        }
        n if n % 2 == 0 => (HELLO_COMPONENT, json!({"n": n}), Expect::Hello(n)),
        _ => {
            s = crate_restricted(&ws);
            (FILE_STATS_COMPONENT, json!(null), Expect::Stats)
        }
    };
    let agent = host().spawn(&load(path), s).await.expect("spawns");
    if matches!(expect, Expect::Terminated) {
        let id = agent.id().to_string();
        tokio::spawn(async move {
            entered(&id).notified().await;
            host().terminate(&id, "containment test").unwrap();
        });
    }
    (
        expect,
        agent.run(TaskRequest::new("containment", input)).await,
    )
}

fn crate_restricted(ws: &std::path::Path) -> qi_host::SubAgentSpecification {
    let mut s = restricted_spec(ws);
    // ~94 of these run at once; at the default 256 handles each they would reserve more host
    // descriptors than a 20,000-descriptor host has for agents (see `sandbox::descriptors`).
    s.resource_limits.max_open_handles = 64;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_a_dozen_misbehaving() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("a.txt"), "one two\nthree\n").unwrap();
    let escape_ws = dir.path().join("escape-ws");
    std::fs::create_dir(&escape_ws).unwrap();
    std::fs::write(dir.path().join("outside.txt"), "canary").unwrap();
    std::os::unix::fs::symlink("../outside.txt", escape_ws.join("link-out")).unwrap();

    // Warm up: compile everything and fill the pool's warm slots with well-behaved agents.
    let canary = TestServer::start().await;
    let warm: Vec<_> = (12..200)
        .map(|i| tokio::spawn(one(i, ws.clone(), canary.addr.port())))
        .collect();
    for w in warm {
        ok(&w.await.unwrap().1);
    }
    let before = rss_bytes();

    let all: Vec<_> = (0..200)
        .map(|i| tokio::spawn(one(i, ws.clone(), canary.addr.port())))
        .collect();
    let mut failures = 0;
    for (i, handle) in all.into_iter().enumerate() {
        let (expect, report) = handle.await.expect("the host survives every agent");
        match expect {
            Expect::Hello(n) => assert_eq!(ok(&report)["input"]["n"], n, "agent {i}"),
            Expect::Stats => assert_eq!(ok(&report)["total"]["words"], 3, "agent {i}"),
            Expect::Fails(check, what) => {
                let f = report
                    .failure
                    .as_ref()
                    .unwrap_or_else(|| panic!("agent {i} ({what}) succeeded"));
                assert!(check(f), "agent {i} should fail with {what}, got {f}");
                failures += 1;
            }
            Expect::EscapesRefused => {
                let out = ok(&report);
                let attempts = out["attempts"].as_array().unwrap();
                // Four reads out of the mount and a write into a read-only one; listing `/`
                // shows only the mount, so it may succeed.
                assert_eq!(attempts.len(), 6, "agent {i}: {out}");
                for a in attempts.iter().filter(|a| a["op"] != "list") {
                    assert_eq!(a["ok"], false, "agent {i} escaped: {a}");
                }
            }
            Expect::NetRefused => assert_eq!(ok(&report)["connected"], false, "agent {i}"),
            Expect::Terminated => {
                assert!(
                    matches!(report.failure, Some(AgentFailure::Terminated { .. })),
                    "agent {i}: {:?}",
                    report.failure
                );
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 10);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("outside.txt")).unwrap(),
        "canary",
        "the file outside every mount changed"
    );
    assert!(
        !escape_ws.join("escape-write.txt").exists(),
        "fs-escape wrote into its read-only mount"
    );
    assert_eq!(
        canary.connections_so_far().await,
        0,
        "the sandboxed net-probe reached the listening canary port"
    );
    assert!(
        host().list().is_empty(),
        "agents left behind: {:?}",
        host().list()
    );

    let after = rss_bytes();
    let grown = after.saturating_sub(before);
    eprintln!("RSS before {} MiB, after {} MiB", before >> 20, after >> 20);
    // Two memory hogs reached 48 MiB each and a huge output of 16 MiB crossed into the host;
    // none of that may stay resident.
    assert!(
        grown < 64 << 20,
        "resident memory grew by {} MiB",
        grown >> 20
    );
}
