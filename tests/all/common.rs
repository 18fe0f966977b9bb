//! Shared host, component loading and spec helpers.

use qi_host::{
    AgentFailure, AgentHost, AgentReport, HostConfig, LimitKind, LoadedComponent,
    SubAgentSpecification, TaskRequest, Tool, ToolContext, ToolFuture, ToolRegistry,
};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// One compiled-component cache for every test, the CLI tests included.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// A tool that never answers: for tests of termination and deadlines while an agent waits in a
/// host call.
struct BlockForever;

impl Tool for BlockForever {
    fn name(&self) -> &str {
        "test.block"
    }
    fn description(&self) -> &str {
        "Never returns"
    }
    fn call(&self, _ctx: ToolContext, _input: Value) -> ToolFuture {
        Box::pin(async {
            std::future::pending::<()>().await;
            unreachable!()
        })
    }
}

/// Answers after the given number of milliseconds.
struct Delay;

impl Tool for Delay {
    fn name(&self) -> &str {
        "test.delay"
    }
    fn description(&self) -> &str {
        "Sleeps {\"ms\": N} then returns the agent id"
    }
    fn call(&self, ctx: ToolContext, input: Value) -> ToolFuture {
        Box::pin(async move {
            let ms = input.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            Ok(serde_json::json!({"agent": ctx.agent_id}))
        })
    }
}

pub fn host() -> &'static AgentHost {
    static HOST: OnceLock<AgentHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut tools = ToolRegistry::with_builtins();
        tools.register(BlockForever);
        tools.register(Delay);
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

pub fn load(path: &str) -> Arc<LoadedComponent> {
    host().load(path).expect("bundled guest loads")
}

/// A roomy spec for well-behaved guests.
pub fn spec() -> SubAgentSpecification {
    let mut s = SubAgentSpecification {
        fuel: 5_000_000_000,
        ..Default::default()
    };
    s.resource_limits.max_memory_mb = 64;
    s.resource_limits.max_execution_time_ms = 30_000;
    s
}

pub async fn run(path: &str, spec: SubAgentSpecification, input: Value) -> AgentReport {
    host()
        .run(
            &load(path),
            spec,
            TaskRequest {
                // A fixed task id: the guest sees it, and fuel use must not depend on the
                // host-assigned agent id.
                id: Some("test-task".into()),
                ..TaskRequest::new("test task", input)
            },
        )
        .await
        .expect("agent spawns")
}

#[track_caller]
pub fn ok(report: &AgentReport) -> &Value {
    match (&report.output, &report.failure) {
        (Some(v), None) => v,
        _ => panic!(
            "expected success, got {:?}\nstderr: {}",
            report.failure, report.stderr
        ),
    }
}

#[track_caller]
pub fn limit(report: &AgentReport) -> (LimitKind, String) {
    match &report.failure {
        Some(f @ AgentFailure::LimitExceeded { limit, .. }) => (*limit, f.to_string()),
        other => panic!(
            "expected a limit failure, got {other:?} (output {:?})",
            report.output
        ),
    }
}

/// A context service (with its event bus) over a new in-memory store.
pub async fn in_memory_context() -> qi_host::context::ContextService {
    let store =
        qi_host::Store::open(qi_host::StoreConfig::in_memory()).expect("in-memory store opens");
    let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
        .await
        .expect("event bus starts");
    qi_host::context::ContextService::open(
        store,
        bus,
        Arc::new(qi_host::context::SystemClock),
        qi_host::context::ContextConfig::default(),
    )
    .await
    .expect("context service opens")
}
