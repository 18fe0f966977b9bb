//! Coordinated runs on real guests: every strategy × every failure handling mode, the
//! retry-cascade steps, timeouts and stalls, the resource budget, every sync point type with
//! its conditions and timeout policies (including participants that die), resume, and manifest
//! validation.
//!
//! Order is never staged with sleeps: a worker step that must wait for something calls the
//! `test.await` tool (returns once the run has recorded a matching event) or `test.gate`
//! (returns once the test opens the named gate), so every ordering a test asserts follows from
//! events, whatever the machine's load. Real timers appear only where a test is about a
//! timeout, and then nothing else races with them.

mod adaptive;
mod channels;
mod channels_redteam;
mod deadlock;
mod failures;
mod fresh_instance;
mod prespawn_redteam;
mod runs;
mod strategies;
mod sync_points;
mod validation;

use crate::common::cache_dir;
use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::context::ContextService;
use qi_host::coord::{self, RunOptions, RunReport, SubtaskState};
use qi_host::events::{EventBus, EventFilter, SubscribeFrom};
use qi_host::{AgentHost, HostConfig, Tool, ToolContext, ToolFailure, ToolFuture, ToolRegistry};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a test (or a worker step waiting for an event) may hang before it fails: a guard
/// against a deadlock, never part of what is asserted.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// A host with its own in-memory context store (each test sees only its own events), with the
/// `test.await` and `test.gate` tools.
pub struct Harness {
    pub host: Arc<AgentHost>,
    pub svc: ContextService,
    gates: watch::Sender<BTreeSet<String>>,
}

pub async fn harness() -> Harness {
    Harness::with_context(crate::common::in_memory_context().await)
}

/// `test.await {"run", "match": {field: value, ...}, "count": n}`: returns once the run has
/// recorded `count` (default 1) events whose data has every field of `match`.
struct AwaitEvent {
    bus: EventBus,
}

impl Tool for AwaitEvent {
    fn name(&self) -> &str {
        "test.await"
    }
    fn description(&self) -> &str {
        "Waits until the run recorded `count` events matching `match`"
    }
    fn call(&self, _ctx: ToolContext, input: Value) -> ToolFuture {
        let bus = self.bus.clone();
        Box::pin(async move {
            let run = input["run"].as_str().unwrap_or_default().to_string();
            let want = input["match"].as_object().cloned().unwrap_or_default();
            let count = input["count"].as_u64().unwrap_or(1);
            let filter = EventFilter::parse_cli(&format!("context=run/{run}"))
                .map_err(|e| ToolFailure::Failed(e.to_string()))?;
            let mut sub = bus
                .subscribe(filter, SubscribeFrom::AfterSeq(0))
                .map_err(|e| ToolFailure::Failed(e.to_string()))?;
            let wait = async {
                let mut seen = 0;
                while seen < count {
                    let event = sub.next().await?;
                    if want.iter().all(|(k, v)| event.data.get(k) == Some(v)) {
                        seen += 1;
                    }
                }
                Ok::<_, qi_host::EventError>(json!(seen))
            };
            match tokio::time::timeout(HANG_GUARD, wait).await {
                Ok(r) => r.map_err(|e| ToolFailure::Failed(e.to_string())),
                Err(_) => Err(ToolFailure::Failed(format!(
                    "hang guard: no {count} events matching {want:?} in run `{run}`"
                ))),
            }
        })
    }
}

/// `test.gate {"name"}`: returns once the test opened the gate (see [`Harness::open`]).
struct Gate {
    gates: watch::Receiver<BTreeSet<String>>,
}

impl Tool for Gate {
    fn name(&self) -> &str {
        "test.gate"
    }
    fn description(&self) -> &str {
        "Waits until the test opens the named gate"
    }
    fn call(&self, _ctx: ToolContext, input: Value) -> ToolFuture {
        let mut gates = self.gates.clone();
        Box::pin(async move {
            let name = input["name"].as_str().unwrap_or_default().to_string();
            let open = gates.wait_for(|g| g.contains(&name));
            match tokio::time::timeout(HANG_GUARD, open).await {
                Ok(Ok(_)) => Ok(Value::Null),
                Ok(Err(_)) => Err(ToolFailure::Failed("the test ended".into())),
                Err(_) => Err(ToolFailure::Failed(format!(
                    "hang guard: gate `{name}` never opened"
                ))),
            }
        })
    }
}

impl Harness {
    /// A harness on `svc` (a file-backed store for durability tests).
    pub fn with_context(svc: ContextService) -> Harness {
        let (gates, gates_rx) = watch::channel(BTreeSet::new());
        let mut tools = ToolRegistry::new();
        tools.register(AwaitEvent {
            bus: svc.bus().clone(),
        });
        tools.register(Gate { gates: gates_rx });
        let host = AgentHost::with_tools(
            HostConfig {
                max_live_agents: 128,
                cache_dir: Some(cache_dir()),
                ..HostConfig::default()
            },
            tools,
        )
        .expect("host starts")
        .with_context(svc.clone());
        Harness {
            host: Arc::new(host),
            svc,
            gates,
        }
    }

    /// Opens the gate `name`: every `test.gate` call for it returns, now and later.
    pub fn open(&self, name: &str) {
        self.gates.send_modify(|g| {
            g.insert(name.to_string());
        });
    }

    /// Validates, plans and runs `toml`; returns the report and the run's recorded events.
    pub async fn run(&self, toml: &str) -> (RunReport, Vec<Value>) {
        self.run_with(toml, RunOptions::default()).await
    }

    pub async fn run_with(&self, toml: &str, options: RunOptions) -> (RunReport, Vec<Value>) {
        let prepared = self.prepare(toml).await.expect("manifest is valid");
        self.run_prepared(&prepared, options).await
    }

    /// Runs a prepared task; returns the report and the run's recorded events.
    pub async fn run_prepared(
        &self,
        prepared: &coord::Prepared,
        options: RunOptions,
    ) -> (RunReport, Vec<Value>) {
        let report = tokio::time::timeout(HANG_GUARD, prepared.run(self.host.clone(), options))
            .await
            .unwrap_or_else(|_| panic!("hang guard: the run did not end within {HANG_GUARD:?}"))
            .expect("run starts");
        let events = self.events(&report.coordination_id).await;
        (report, events)
    }

    pub async fn prepare(&self, toml: &str) -> Result<coord::Prepared, qi_host::Error> {
        let path = Path::new("test.toml");
        let manifest = coord::Manifest::parse(toml, path)?;
        coord::prepare_parsed(&self.host, manifest, toml, path, Some(&guest_dir())).await
    }

    /// The run's events, in commit order (their `data`).
    pub async fn events(&self, run: &str) -> Vec<Value> {
        let filter = EventFilter::parse_cli(&format!("context=run/{run}")).expect("filter");
        self.svc
            .bus()
            .history(&filter, None, 100_000)
            .await
            .expect("history")
            .into_iter()
            .map(|e| e.data)
            .collect()
    }
}

pub fn guest_dir() -> PathBuf {
    Path::new(WORKER_COMPONENT)
        .parent()
        .expect("guest directory")
        .to_path_buf()
}

/// The tools every worker kind below may call.
const TEST_TOOLS: &str = r#"securityConstraints = { allowedTools = ["test.await", "test.gate"] }"#;

/// Two worker agent kinds, both allowed the test tools: `worker` and `backup` (config
/// `flaky = false`). A subtask that names no agent prefers `backup`: both have the
/// capabilities their component declares, and equals are ordered by name.
pub fn agents() -> String {
    format!(
        r#"
[agents.worker]
component = "guest:worker"
spec = {{ fuel = 2_000_000_000, resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 20000 }}, {TEST_TOOLS} }}

[agents.backup]
component = "guest:worker"
config = {{ flaky = false }}
spec = {{ capabilities = ["work"], fuel = 2_000_000_000, resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 20000 }}, {TEST_TOOLS} }}
"#
    )
}

/// A worker step that returns once the run recorded an event with these `fields` (a TOML
/// inline table body, e.g. `kind = "subtask-completed", subtask = "a"`).
pub fn after(fields: &str) -> String {
    after_n(fields, 1)
}

/// A worker step that returns once the run recorded `count` events with these `fields`.
pub fn after_n(fields: &str, count: u32) -> String {
    format!(
        r#"{{ call = {{ name = "test.await", input = {{ run = "{{run}}", match = {{ {fields} }}, count = {count} }} }} }}"#
    )
}

/// A worker step that returns once the test opened gate `name`.
pub fn gate(name: &str) -> String {
    format!(r#"{{ call = {{ name = "test.gate", input = {{ name = "{name}" }} }} }}"#)
}

/// Indexes of events of `kind` for `subtask`.
pub fn at(events: &[Value], kind: &str, subtask: &str) -> Vec<usize> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == kind && e["subtask"] == subtask)
        .map(|(i, _)| i)
        .collect()
}

#[track_caller]
pub fn first(events: &[Value], kind: &str, subtask: &str) -> usize {
    *at(events, kind, subtask)
        .first()
        .unwrap_or_else(|| panic!("no `{kind}` event for `{subtask}` in {events:#?}"))
}

/// Most subtasks running at once, replayed from the events.
pub fn max_running(events: &[Value]) -> usize {
    let (mut now, mut max) = (0usize, 0usize);
    for e in events {
        match e["kind"].as_str() {
            Some("subtask-started") => {
                now += 1;
                max = max.max(now);
            }
            Some("subtask-completed" | "attempt-failed") => now = now.saturating_sub(1),
            _ => {}
        }
    }
    max
}

pub fn result<'a>(r: &'a RunReport, id: &str) -> &'a qi_host::coord::SubtaskResult {
    r.results
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no subtask {id}"))
}

#[track_caller]
pub fn state(r: &RunReport, id: &str) -> SubtaskState {
    result(r, id).state
}

/// A task header and a strategy block.
pub fn header(strategy: &str, failure: &str, extra: &str) -> String {
    format!(
        r#"
[task]
id = "t"

[strategy]
type = "{strategy}"
maxConcurrentAgents = 4
failureHandling = "{failure}"
retry = {{ maxAttempts = 2, backoffMs = 20, maxReassignments = 1, deadlineExtensionFactor = 2.0 }}
{extra}
{agents}
"#,
        agents = agents()
    )
}

/// One subtask running `steps` (a TOML array of worker steps), on `agent` if given.
pub fn one(id: &str, agent: Option<&str>, steps: &str, extra: &str) -> String {
    let agent = agent
        .map(|a| format!("agent = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[[subtasks]]\nid = \"{id}\"\n{agent}inputs = [{{ name = \"steps\", value = {steps} }}]\n{extra}\n"
    )
}

/// Three workers meeting at one point; `steps` per participant.
pub fn point_run(point: &str, steps: [&str; 3]) -> String {
    let mut toml = header("hybrid", "graceful-degradation", point);
    for (id, s) in ["p1", "p2", "p3"].iter().zip(steps) {
        toml += &one(id, None, s, "");
    }
    toml
}

pub fn point(kind: &str, condition: &str, timeout: &str, on_timeout: &str, extra: &str) -> String {
    format!(
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"{kind}\"\nparticipants = [\"p1\", \"p2\", \"p3\"]\ncondition = {condition}\n{timeout}\nonTimeout = \"{on_timeout}\"\n{extra}\n"
    )
}

/// The outcome a participant received (first sync entry of its output).
#[track_caller]
pub fn outcome(r: &RunReport, id: &str) -> Value {
    let out = result(r, id)
        .output
        .as_ref()
        .unwrap_or_else(|| panic!("{id} has no output: {r:#?}"));
    out["sync"][0].clone()
}
