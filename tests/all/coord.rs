//! Coordinated runs on real guests: every strategy × every failure handling mode, the
//! retry-cascade steps, timeouts and stalls, the resource budget, every sync point type with
//! its conditions and timeout policies (including participants that die), resume, and manifest
//! validation.

use qi_guest_artifacts::WORKER_COMPONENT;
use qi_host::context::{ContextService, OPERATOR};
use qi_host::coord::{self, RunOptions, RunReport, SubtaskState};
use qi_host::events::EventFilter;
use qi_host::{AgentHost, ErrorCategory};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A host with its own in-memory context store (each test sees only its own events).
pub struct Harness {
    pub host: Arc<AgentHost>,
    pub svc: ContextService,
}

pub async fn harness() -> Harness {
    let svc = crate::common::in_memory_context().await;
    let host = crate::common::new_host(128).with_context(svc.clone());
    Harness {
        host: Arc::new(host),
        svc,
    }
}

pub fn guest_dir() -> PathBuf {
    Path::new(WORKER_COMPONENT)
        .parent()
        .expect("guest directory")
        .to_path_buf()
}

/// Two worker agent kinds (`worker`, preferred by default, and `backup`, whose config has
/// `flaky = false`) and a `flaky` one whose config makes `fail_if_config = "flaky"` fail.
pub const AGENTS: &str = r#"
[agents.worker]
component = "guest:worker"
spec = { fuel = 2_000_000_000, resourceLimits = { maxMemoryMB = 32, maxExecutionTimeMs = 20000 } }

[agents.backup]
component = "guest:worker"
config = { flaky = false }
spec = { capabilities = ["work"], fuel = 2_000_000_000, resourceLimits = { maxMemoryMB = 32, maxExecutionTimeMs = 20000 } }
"#;

impl Harness {
    /// Validates, plans and runs `toml`; returns the report and the run's recorded events.
    pub async fn run(&self, toml: &str) -> (RunReport, Vec<Value>) {
        self.run_with(toml, RunOptions::default()).await
    }

    pub async fn run_with(&self, toml: &str, options: RunOptions) -> (RunReport, Vec<Value>) {
        let prepared = self.prepare(toml).await.expect("manifest is valid");
        let report = prepared
            .run(self.host.clone(), options)
            .await
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
{AGENTS}
"#
    )
}

/// The diamond used by the strategy tests:
///
/// ```text
///   a (fast) ──► c ──┐
///                    ├──► e
///   b (slow) ──► d ──┘
/// ```
///
/// `b_steps` replaces b's steps (to make it fail).
pub fn diamond(strategy: &str, failure: &str, b_steps: &str) -> String {
    format!(
        r#"{}
[[subtasks]]
id = "a"
inputs = [{{ name = "steps", value = [{{ work = 1000 }}] }}, {{ name = "emit", value = {{ out = "A" }} }}]
outputs = ["out"]

[[subtasks]]
id = "b"
agent = "worker"
inputs = [{{ name = "steps", value = {b_steps} }}, {{ name = "emit", value = {{ out = "B" }} }}]
outputs = ["out"]

[[subtasks]]
id = "c"
inputs = [{{ name = "x", from = "a.out" }}, {{ name = "emit", value = {{ out = "C" }} }}]
outputs = ["out"]

[[subtasks]]
id = "d"
inputs = [{{ name = "x", from = "b.out" }}, {{ name = "emit", value = {{ out = "D" }} }}]
outputs = ["out"]

[[subtasks]]
id = "e"
inputs = [{{ name = "xs", from = ["c.out", "d.out"] }}, {{ name = "emit", value = {{ out = "E" }} }}]
outputs = ["out"]
"#,
        header(strategy, failure, "")
    )
}

const SLOW_B: &str = r#"[{ sleep_ms = 300 }]"#;
const FAILING_B: &str = r#"[{ sleep_ms = 100 }, { fail = "b breaks" }]"#;

/// Order checks every strategy must pass on a successful diamond.
fn check_order(strategy: &str, r: &RunReport, ev: &[Value]) {
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(state(r, id), SubtaskState::Completed, "{id}: {r:#?}");
    }
    // Dependencies hold in every strategy.
    assert!(first(ev, "subtask-completed", "a") < first(ev, "subtask-started", "c"));
    assert!(first(ev, "subtask-completed", "b") < first(ev, "subtask-started", "d"));
    assert!(first(ev, "subtask-completed", "d") < first(ev, "subtask-started", "e"));
    // Outputs flowed through the context: e received c's and d's outputs in order.
    assert_eq!(
        result(r, "e").output.as_ref().unwrap()["received"]["xs"],
        json!(["C", "D"])
    );
    let c_before_b_done = first(ev, "subtask-started", "c") < first(ev, "subtask-completed", "b");
    match strategy {
        "sequential" => {
            assert_eq!(max_running(ev), 1, "one at a time: {ev:#?}");
            // Topological order with manifest order among ready ones.
            let starts: Vec<&str> = ev
                .iter()
                .filter(|e| e["kind"] == "subtask-started")
                .map(|e| e["subtask"].as_str().unwrap())
                .collect();
            assert_eq!(starts, ["a", "b", "c", "d", "e"]);
        }
        "parallel" => {
            // Waves: c waits for the whole first wave, although a finished long before b.
            assert!(!c_before_b_done, "parallel runs in waves: {ev:#?}");
            assert!(max_running(ev) >= 2);
        }
        "hybrid" | "adaptive" => {
            // DAG scheduling: c starts as soon as a is done, while b still sleeps.
            assert!(
                c_before_b_done,
                "{strategy} starts c before b finishes: {ev:#?}"
            );
            assert!(max_running(ev) >= 2);
        }
        other => panic!("unknown strategy {other}"),
    }
}

async fn strategy_with(strategy: &str, failure: &str) {
    let h = harness().await;
    // Success: order and results.
    let (r, ev) = h.run(&diamond(strategy, failure, SLOW_B)).await;
    assert!(r.success, "{r:#?}");
    check_order(strategy, &r, &ev);
    assert_eq!(r.metrics.successful_agents, 5);
    assert_eq!(r.metrics.total_agents, 5);
    assert!(r.metrics.total_resource_usage.fuel_consumed > 0);
    assert!(r.metrics.coordination_efficiency > 0.0 && r.metrics.coordination_efficiency <= 1.0);

    // Failure of b, by the failure handling mode.
    let (r, ev) = h.run(&diamond(strategy, failure, FAILING_B)).await;
    assert!(!r.success);
    match failure {
        "fail-fast" => {
            assert_eq!(state(&r, "b"), SubtaskState::Failed);
            for id in ["d", "e"] {
                assert_eq!(state(&r, id), SubtaskState::Cancelled, "{id}: {r:#?}");
            }
            assert!(r.error.as_deref().unwrap().contains("b breaks"), "{r:#?}");
            assert!(ev.iter().any(|e| e["kind"] == "run-cancelled"));
            // Nothing started after the failure.
            let failed = first(&ev, "subtask-failed", "b");
            assert!(
                ev[failed..].iter().all(|e| e["kind"] != "subtask-started"),
                "{ev:#?}"
            );
        }
        "graceful-degradation" => {
            assert_eq!(state(&r, "b"), SubtaskState::Failed);
            assert_eq!(state(&r, "d"), SubtaskState::Skipped);
            assert_eq!(state(&r, "e"), SubtaskState::Skipped);
            assert_eq!(state(&r, "a"), SubtaskState::Completed);
            assert_eq!(state(&r, "c"), SubtaskState::Completed);
            assert!(r.partial);
            assert_eq!(r.missing, ["b.out", "d.out", "e.out"]);
            assert_eq!(result(&r, "b").attempts.len(), 1, "no retry");
        }
        "retry-cascade" => {
            // Retried once on `worker`, reassigned to `backup` and retried there, then failed
            // with its dependents.
            let b = result(&r, "b");
            let agents: Vec<&str> = b.attempts.iter().map(|a| a.agent.as_str()).collect();
            assert_eq!(agents, ["worker", "worker", "backup", "backup"], "{b:#?}");
            assert!(b.attempts[0].then.as_deref().unwrap().starts_with("retry"));
            assert_eq!(b.attempts[1].then.as_deref(), Some("reassign to `backup`"));
            assert_eq!(b.state, SubtaskState::Failed);
            assert_eq!(state(&r, "d"), SubtaskState::Failed);
            assert_eq!(state(&r, "e"), SubtaskState::Failed);
            assert_eq!(state(&r, "c"), SubtaskState::Completed);
            assert_eq!(at(&ev, "subtask-retry", "b").len(), 2);
            assert_eq!(at(&ev, "subtask-reassigned", "b").len(), 1);
            assert_eq!(b.attempts[3].then, None, "nothing left to try");
        }
        other => panic!("unknown failure handling {other}"),
    }
}

macro_rules! matrix {
    ($($name:ident: $strategy:literal, $failure:literal;)*) => {
        mod strategies {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::strategy_with($strategy, $failure).await;
                }
            )*
        }
    };
}

matrix! {
    sequential_fail_fast: "sequential", "fail-fast";
    sequential_graceful_degradation: "sequential", "graceful-degradation";
    sequential_retry_cascade: "sequential", "retry-cascade";
    parallel_fail_fast: "parallel", "fail-fast";
    parallel_graceful_degradation: "parallel", "graceful-degradation";
    parallel_retry_cascade: "parallel", "retry-cascade";
    hybrid_fail_fast: "hybrid", "fail-fast";
    hybrid_graceful_degradation: "hybrid", "graceful-degradation";
    hybrid_retry_cascade: "hybrid", "retry-cascade";
    adaptive_fail_fast: "adaptive", "fail-fast";
    adaptive_graceful_degradation: "adaptive", "graceful-degradation";
    adaptive_retry_cascade: "adaptive", "retry-cascade";
}

fn one(id: &str, agent: Option<&str>, steps: &str, extra: &str) -> String {
    let agent = agent
        .map(|a| format!("agent = \"{a}\"\n"))
        .unwrap_or_default();
    format!(
        "\n[[subtasks]]\nid = \"{id}\"\n{agent}inputs = [{{ name = \"steps\", value = {steps} }}]\n{extra}\n"
    )
}

mod retry_cascade {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transient_failure_is_retried_with_backoff_and_succeeds() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + &one("t1", None, r#"[{ fail_before_attempt = 2 }]"#, "");
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        assert_eq!(t.attempts.len(), 2);
        assert_eq!(t.attempts[0].then.as_deref(), Some("retry in 20 ms"));
        assert!(t.attempts[1].started_ms >= t.attempts[0].started_ms + 20);
        assert_eq!(t.output.as_ref().unwrap()["attempt"], 2);
        assert_eq!(at(&ev, "subtask-retry", "t1").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_limit_violation_is_not_retried_but_reassigned() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + r#"
[agents.tiny]
component = "guest:worker"
spec = { capabilities = ["work"], fuel = 100_000 }
"# + &one(
            "t1",
            Some("tiny"),
            r#"[{ work = 10_000_000 }]"#,
            r#"requirements = { capabilities = ["work"] }"#,
        );
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        let agents: Vec<&str> = t.attempts.iter().map(|a| a.agent.as_str()).collect();
        assert_eq!(agents[0], "tiny");
        assert!(t.attempts[0].outcome.contains("fuel"), "{t:#?}");
        assert_eq!(t.attempts.len(), 2, "no retry on `tiny`: {t:#?}");
        assert!(
            t.attempts[0]
                .then
                .as_deref()
                .unwrap()
                .starts_with("reassign")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalid_input_is_neither_retried_nor_reassigned() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + &one("t1", None, r#"[{ invalid = "bad shape" }]"#, "");
        let (r, _) = h.run(&toml).await;
        let t = result(&r, "t1");
        assert_eq!(t.state, SubtaskState::Failed);
        assert_eq!(t.attempts.len(), 1, "{t:#?}");
        assert!(t.error.as_deref().unwrap().contains("bad shape"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_specific_failure_moves_to_another_agent() {
        let h = harness().await;
        let toml = header("hybrid", "retry-cascade", "")
            + r#"
[agents.flaky]
component = "guest:worker"
config = { flaky = true }
spec = { capabilities = ["work"] }
"# + &one(
            "t1",
            Some("flaky"),
            r#"[{ fail_if_config = "flaky" }]"#,
            r#"requirements = { capabilities = ["work"] }"#,
        );
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "t1");
        let agents: Vec<&str> = t.attempts.iter().map(|a| a.agent.as_str()).collect();
        // Two attempts on `flaky` (one retry), then the next capable agent, where it succeeds.
        assert_eq!(agents.len(), 3, "{t:#?}");
        assert_eq!(&agents[..2], ["flaky", "flaky"]);
        assert_ne!(agents[2], "flaky");
        assert_eq!(at(&ev, "subtask-reassigned", "t1").len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_subtask_gets_its_deadline_extended_once() {
        let h = harness().await;
        // One agent kind, no retry, no reassignment: the extension is the only step left.
        let toml = r#"
[task]
id = "t"
[strategy]
type = "hybrid"
failureHandling = "retry-cascade"
retry = { maxAttempts = 1, maxReassignments = 0, deadlineExtensionFactor = 3.0, maxExtensions = 1 }
[agents.worker]
component = "guest:worker"
"#
        .to_string()
            + &one("slow", None, r#"[{ sleep_ms = 250 }]"#, "timeLimitMs = 150");
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let t = result(&r, "slow");
        assert_eq!(t.attempts.len(), 2);
        assert!(t.attempts[0].outcome.contains("timed out"), "{t:#?}");
        assert!(t.attempts[0].then.as_deref().unwrap().starts_with("extend"));
        assert_eq!(at(&ev, "deadline-extended", "slow").len(), 1);

        // Past the extension (150 ms × 3 = 450 ms < 600 ms): fails for good.
        let toml = toml.replace("sleep_ms = 250", "sleep_ms = 600");
        let (r, _) = h.run(&toml).await;
        let t = result(&r, "slow");
        assert_eq!(t.state, SubtaskState::Failed);
        assert_eq!(t.attempts.len(), 2);
    }
}

mod timeouts {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_that_stops_making_progress_is_terminated() {
        let h = harness().await;
        let toml = header("hybrid", "graceful-degradation", "stallWindowMs = 300")
            + &one("stuck", None, r#"[{ hang = true }]"#, "")
            + &one(
                "busy",
                None,
                r#"[{ sleep_ms = 50 }, { work = 20_000_000 }]"#,
                "",
            );
        let (r, _) = h.run(&toml).await;
        let stuck = result(&r, "stuck");
        assert_eq!(stuck.state, SubtaskState::Failed);
        assert!(
            stuck
                .error
                .as_deref()
                .unwrap()
                .contains("no progress for 300 ms"),
            "{stuck:#?}"
        );
        // Busy computing (fuel moving) is progress, however long.
        assert_eq!(state(&r, "busy"), SubtaskState::Completed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_task_time_limit_cancels_the_run() {
        let h = harness().await;
        let toml = header("sequential", "graceful-degradation", "")
            .replace("id = \"t\"", "id = \"t\"\ntimeLimitMs = 300")
            + &one("long", None, r#"[{ sleep_ms = 5000 }]"#, "")
            + &one("after", None, r#"[]"#, "dependsOn = [\"long\"]");
        let (r, _) = h.run(&toml).await;
        assert!(!r.success);
        assert!(
            r.error.as_deref().unwrap().contains("timeLimitMs"),
            "{r:#?}"
        );
        assert_eq!(state(&r, "long"), SubtaskState::Cancelled);
        assert_eq!(state(&r, "after"), SubtaskState::Cancelled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_just_inside_its_time_limit_completes() {
        let h = harness().await;
        let toml = header("hybrid", "graceful-degradation", "")
            + &one(
                "quick",
                None,
                r#"[{ sleep_ms = 50 }]"#,
                "timeLimitMs = 2000",
            );
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
    }
}

mod resources {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_memory_budget_caps_concurrency() {
        let h = harness().await;
        // Four independent 32 MiB subtasks, 64 MiB budget: at most two alive at once.
        let mut toml = header("hybrid", "fail-fast", "") + "\n[resources]\nmaxTotalMemoryMB = 64\n";
        for i in 0..4 {
            toml += &one(&format!("s{i}"), None, r#"[{ sleep_ms = 100 }]"#, "");
        }
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        assert_eq!(max_running(&ev), 2, "{ev:#?}");
        assert_eq!(r.metrics.resources.peak_memory_mb, 64);
        assert_eq!(r.metrics.resources.granted, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_over_the_whole_budget_is_refused_at_planning() {
        let h = harness().await;
        let toml = header("hybrid", "fail-fast", "")
            + "\n[resources]\nmaxTotalMemoryMB = 31\n"
            + &one("s", None, "[]", "");
        let e = h.prepare(&toml).await.unwrap_err();
        assert!(e.to_string().contains("resources.maxTotalMemoryMB"), "{e}");
        assert!(e.to_string().contains("needs 32 MiB"), "{e}");
    }
}

/// Three workers meeting at one point; `steps` per participant.
fn point_run(point: &str, steps: [&str; 3]) -> String {
    let mut toml = header("hybrid", "graceful-degradation", point);
    for (id, s) in ["p1", "p2", "p3"].iter().zip(steps) {
        toml += &one(id, None, s, "");
    }
    toml
}

fn point(kind: &str, condition: &str, timeout: &str, on_timeout: &str, extra: &str) -> String {
    format!(
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"{kind}\"\nparticipants = [\"p1\", \"p2\", \"p3\"]\ncondition = {condition}\n{timeout}\nonTimeout = \"{on_timeout}\"\n{extra}\n"
    )
}

/// The outcome a participant received (first sync entry of its output).
#[track_caller]
fn outcome(r: &RunReport, id: &str) -> Value {
    let out = result(r, id)
        .output
        .as_ref()
        .unwrap_or_else(|| panic!("{id} has no output: {r:#?}"));
    out["sync"][0].clone()
}

mod sync_points {
    use super::*;

    const ARRIVE: &str = r#"[{ barrier = "pt" }]"#;
    /// Dies before arriving, after the others had time to arrive.
    const DIE: &str = r#"[{ sleep_ms = 200 }, { fail = "dies before arriving" }]"#;
    const LATE: &str = r#"[{ sleep_ms = 400 }, { barrier = "pt", tolerate = true }]"#;
    const TOLERANT: &str = r#"[{ barrier = "pt", tolerate = true }]"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barrier_all_complete_releases_everyone_together() {
        let h = harness().await;
        let toml = point_run(
            &point("barrier", "\"all-complete\"", "", "fail", ""),
            [
                ARRIVE,
                r#"[{ sleep_ms = 150 }, { barrier = "pt" }]"#,
                ARRIVE,
            ],
        );
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        for id in ["p1", "p2", "p3"] {
            let o = outcome(&r, id);
            assert_eq!(o["complete"], true);
            assert_eq!(o["arrived"].as_array().unwrap().len(), 3);
        }
        // Nobody completed before the last arrival.
        let last_arrival = ev
            .iter()
            .rposition(|e| e["kind"] == "sync-arrived")
            .unwrap();
        for id in ["p1", "p2", "p3"] {
            assert!(first(&ev, "subtask-completed", id) > last_arrival);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_participant_is_absent_and_proceed_releases_the_rest() {
        let h = harness().await;
        let toml = point_run(
            &point(
                "barrier",
                "\"all-complete\"",
                "timeoutMs = 60000",
                "proceed",
                "",
            ),
            [ARRIVE, ARRIVE, DIE],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], false);
        assert_eq!(
            o["timed_out"], false,
            "resolved at once, not by the timeout"
        );
        assert_eq!(o["absent"], json!(["p3"]));
        assert_eq!(state(&r, "p2"), SubtaskState::Completed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_participant_fails_the_point_under_wait_and_fail() {
        for policy in ["wait", "fail"] {
            let h = harness().await;
            let toml = point_run(
                &point(
                    "barrier",
                    "\"all-complete\"",
                    "timeoutMs = 60000",
                    policy,
                    "",
                ),
                [TOLERANT, TOLERANT, DIE],
            );
            let (r, _) = h.run(&toml).await;
            let o = outcome(&r, "p1");
            let err = o["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{policy}: {o}"));
            assert!(
                err.contains("can no longer be met") && err.contains("p3"),
                "{err}"
            );
            assert!(r.synchronization["pt"]["failed"].is_string());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_proceed_releases_early_arrivals_and_late_ones_see_the_outcome() {
        let h = harness().await;
        let toml = point_run(
            &point(
                "barrier",
                "\"all-complete\"",
                "timeoutMs = 100",
                "proceed",
                "",
            ),
            [ARRIVE, ARRIVE, LATE],
        );
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], false);
        assert_eq!(o["timed_out"], true);
        assert_eq!(o["absent"], json!(["p3"]));
        // The late participant gets the same resolution.
        assert_eq!(outcome(&r, "p3")["absent"], json!(["p3"]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_fail_fails_every_waiting_participant() {
        let h = harness().await;
        let toml = point_run(
            &point("barrier", "\"all-complete\"", "timeoutMs = 100", "fail", ""),
            [TOLERANT, TOLERANT, LATE],
        );
        let (r, _) = h.run(&toml).await;
        for id in ["p1", "p2", "p3"] {
            let e = outcome(&r, id)["error"].as_str().unwrap().to_string();
            assert!(e.contains("timed out after 100 ms"), "{id}: {e}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timeout_wait_keeps_waiting_for_a_slow_participant() {
        let h = harness().await;
        let toml = point_run(
            &point("barrier", "\"all-complete\"", "timeoutMs = 100", "wait", ""),
            [ARRIVE, ARRIVE, LATE],
        );
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], true);
        assert_eq!(o["timed_out"], true);
        assert!(ev.iter().any(|e| e["kind"] == "sync-timeout-waiting"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn majority_and_specific_agents_and_timeout_conditions() {
        let h = harness().await;
        // majority: two of three arrive, the third is late but not needed.
        let toml = point_run(
            &point("barrier", "\"majority-complete\"", "", "wait", ""),
            [ARRIVE, ARRIVE, LATE],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], true);
        assert_eq!(o["arrived"].as_array().unwrap().len(), 2);

        // specific-agents: only p1 and p3 matter; p3 comes late, so p1 waits for it.
        let toml = point_run(
            &point(
                "barrier",
                "{ type = \"specific-agents\", agents = [\"p1\", \"p3\"] }",
                "",
                "wait",
                "",
            ),
            [ARRIVE, ARRIVE, LATE],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], true);
        assert!(o["arrived"].as_array().unwrap().contains(&json!("p3")));

        // timeout: the window closes after 100 ms with whoever arrived.
        let toml = point_run(
            &point("barrier", "\"timeout\"", "timeoutMs = 100", "proceed", ""),
            [ARRIVE, ARRIVE, LATE],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["complete"], true, "the window closing is the condition");
        let mut arrived: Vec<String> = serde_json::from_value(o["arrived"].clone()).unwrap();
        arrived.sort();
        assert_eq!(arrived, ["p1", "p2"]);
        assert_eq!(o["absent"], json!(["p3"]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn decisions_tally_by_their_condition() {
        let vote = |c: &str| format!(r#"[{{ vote = {{ point = "pt", choice = "{c}" }} }}]"#);
        let cases = [
            (
                "\"majority-complete\"",
                ["yes", "yes", "no"],
                json!("yes"),
                "majority",
            ),
            (
                "\"all-complete\"",
                ["yes", "no", "yes"],
                Value::Null,
                "unanimous",
            ),
            (
                "\"all-complete\"",
                ["yes", "yes", "yes"],
                json!("yes"),
                "unanimous",
            ),
            (
                "{ type = \"specific-agents\", agents = [\"p2\", \"p3\"] }",
                ["yes", "no", "no"],
                json!("no"),
                "specific-agents",
            ),
        ];
        for (cond, votes, want, rule) in cases {
            let h = harness().await;
            let toml = point_run(
                &point("decision", cond, "", "wait", ""),
                [&vote(votes[0]), &vote(votes[1]), &vote(votes[2])],
            );
            let (r, _) = h.run(&toml).await;
            for id in ["p1", "p2", "p3"] {
                let o = outcome(&r, id);
                assert_eq!(o["result"]["decision"], want, "{cond} {votes:?}: {o}");
                assert_eq!(o["result"]["rule"], rule);
            }
        }
        // A voter that dies counts as absent; the majority of the others still decides.
        let h = harness().await;
        let toml = point_run(
            &point("decision", "\"majority-complete\"", "", "wait", ""),
            [&vote("ship"), &vote("ship"), DIE],
        );
        let (r, _) = h.run(&toml).await;
        assert_eq!(outcome(&r, "p1")["result"]["decision"], "ship");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn aggregation_reduces_contributions_and_feeds_an_aggregator_subtask() {
        let give = |v: &str| format!(r#"[{{ contribute = {{ point = "pt", value = {v} }} }}]"#);
        let h = harness().await;
        let mut toml = point_run(
            &point(
                "aggregation",
                "\"all-complete\"",
                "",
                "wait",
                "reducer = \"sum\"",
            ),
            [
                &give("{ n = 1, m = 10 }"),
                &give("{ n = 2 }"),
                &give("{ n = 3, m = 5 }"),
            ],
        );
        toml += r#"
[[subtasks]]
id = "agg"
inputs = [{ name = "total", from = "sync.pt" }]
"#;
        let (r, ev) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        assert_eq!(outcome(&r, "p2")["result"], json!({"n": 6, "m": 15}));
        assert_eq!(
            result(&r, "agg").output.as_ref().unwrap()["received"]["total"],
            json!({"n": 6, "m": 15})
        );
        let resolved = ev
            .iter()
            .position(|e| e["kind"] == "sync-resolved")
            .unwrap();
        assert!(first(&ev, "subtask-started", "agg") > resolved);

        // concat, with a contributor that dies (proceed).
        let h = harness().await;
        let toml = point_run(
            &point(
                "aggregation",
                "\"all-complete\"",
                "",
                "proceed",
                "reducer = \"concat\"",
            ),
            [&give("[1, 2]"), &give("3"), DIE],
        );
        let (r, _) = h.run(&toml).await;
        let o = outcome(&r, "p1");
        assert_eq!(o["result"], json!([1, 2, 3]));
        assert_eq!(o["complete"], false);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checkpoints_are_durable_and_restored_on_retry() {
        let h = harness().await;
        let steps = r#"[{ restore = "pt" }, { checkpoint = { point = "pt", state = { step = 7 } } }, { fail_before_attempt = 2 }]"#;
        let mut toml = header(
            "hybrid",
            "retry-cascade",
            "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"checkpoint\"\nparticipants = [\"p1\"]\n",
        );
        toml += &one("p1", None, steps, "");
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let out = result(&r, "p1").output.clone().unwrap();
        // Attempt 2 restored what attempt 1 stored.
        assert_eq!(out["attempt"], 2);
        assert_eq!(out["sync"][0], json!({"restored": {"step": 7}}));
        let doc = h
            .svc
            .get(
                OPERATOR,
                &format!("run/{}/checkpoint/pt/p1", r.coordination_id),
            )
            .await
            .unwrap()
            .doc;
        assert_eq!(doc["state"], json!({"step": 7}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_call_outside_a_run_or_of_the_wrong_type_is_refused() {
        let h = harness().await;
        let toml = point_run(
            &point("barrier", "\"all-complete\"", "", "wait", ""),
            [
                r#"[{ vote = { point = "pt", choice = "x" }, tolerate = true }, { barrier = "pt" }]"#,
                r#"[{ barrier = "nope", tolerate = true }, { barrier = "pt" }]"#,
                ARRIVE,
            ],
        );
        let (r, _) = h.run(&toml).await;
        assert!(r.success, "{r:#?}");
        let e1 = outcome(&r, "p1")["error"].as_str().unwrap().to_string();
        assert!(e1.contains("is a barrier point"), "{e1}");
        let e2 = outcome(&r, "p2")["error"].as_str().unwrap().to_string();
        assert!(e2.contains("nope"), "{e2}");
    }
}

mod resume {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resumed_run_keeps_completed_subtasks_and_reruns_the_rest() {
        let h = harness().await;
        let base = header("hybrid", "graceful-degradation", "")
            + &one("a", None, r#"[{ work = 1000 }]"#, "outputs = [\"subtask\"]")
            + &one(
                "b",
                Some("worker"),
                r#"[{ fail_if_config = "broken" }]"#,
                "dependsOn = [\"a\"]",
            );
        let broken = base.replace(
            "[agents.worker]\ncomponent = \"guest:worker\"",
            "[agents.worker]\ncomponent = \"guest:worker\"\nconfig = { broken = true }",
        );
        let (r1, _) = h.run(&broken).await;
        assert_eq!(state(&r1, "a"), SubtaskState::Completed);
        assert_eq!(state(&r1, "b"), SubtaskState::Failed);
        let (r2, ev) = h
            .run_with(
                &base,
                RunOptions {
                    run_id: Some(r1.coordination_id.clone()),
                    resume: true,
                    status: None,
                },
            )
            .await;
        assert!(r2.success, "{r2:#?}");
        assert!(result(&r2, "a").resumed);
        assert!(result(&r2, "a").attempts.is_empty(), "a is not run again");
        assert_eq!(result(&r2, "b").attempts.len(), 1);
        // Only b started in the resumed run's events (they share the run's context id).
        let starts: Vec<&Value> = ev
            .iter()
            .filter(|e| e["kind"] == "subtask-started")
            .collect();
        assert_eq!(starts.iter().filter(|e| e["subtask"] == "a").count(), 1);
        assert_eq!(starts.iter().filter(|e| e["subtask"] == "b").count(), 2);

        // Resuming an unknown run is a clear error.
        let prepared = h.prepare(&base).await.unwrap();
        let e = prepared
            .run(
                h.host.clone(),
                RunOptions {
                    run_id: Some("run-nope".into()),
                    resume: true,
                    status: None,
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no run `run-nope`"), "{e}");
    }
}

mod monitor {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_reports_live_progress() {
        let h = harness().await;
        let toml = header("sequential", "fail-fast", "")
            + &one("a", None, r#"[{ sleep_ms = 100 }]"#, "")
            + &one("b", None, r#"[{ sleep_ms = 100 }]"#, "");
        let prepared = h.prepare(&toml).await.unwrap();
        let (tx, mut rx) = tokio::sync::watch::channel(coord::ExecutionStatus {
            coordination_id: String::new(),
            status: "starting".into(),
            progress: 0.0,
            active_agents: 0,
            completed_tasks: 0,
            total_tasks: 2,
            subtasks: Vec::new(),
        });
        let seen = tokio::spawn(async move {
            let mut seen = Vec::new();
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                seen.push((s.progress, s.active_agents, s.status.clone()));
            }
            seen
        });
        let r = prepared
            .run(
                h.host.clone(),
                RunOptions {
                    status: Some(tx),
                    ..RunOptions::default()
                },
            )
            .await
            .unwrap();
        assert!(r.success);
        let seen = seen.await.unwrap();
        assert!(
            seen.iter().any(|(p, a, _)| *p == 0.5 && *a == 1),
            "{seen:?}"
        );
        assert_eq!(seen.last().unwrap().0, 1.0);
        assert_eq!(seen.last().unwrap().2, "completed");
    }
}

mod validation {
    use super::*;

    async fn invalid(toml: &str) -> qi_host::Error {
        let h = harness().await;
        let e = h
            .prepare(toml)
            .await
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{toml}"));
        assert_eq!(e.category(), ErrorCategory::Validation, "{e}");
        e
    }

    fn base() -> String {
        header("hybrid", "fail-fast", "")
    }

    #[tokio::test]
    async fn unknown_field_names_key_and_line() {
        let toml = base() + "\n[[subtasks]]\nid = \"a\"\ncolour = \"red\"\n";
        let e = invalid(&toml).await.to_string();
        let line = toml.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        assert!(e.contains("unknown field `colour`"), "{e}");
        assert!(e.contains(&format!("test.toml:{line}")), "{e}");
    }

    #[tokio::test]
    async fn missing_component_says_where_it_looked() {
        let toml = base().replace(
            "guest:worker\"\nspec = { fuel",
            "guest:no-such-guest\"\nspec = { fuel",
        ) + &one("a", None, "[]", "");
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("agents.worker.component"), "{e}");
        assert!(e.contains("guest_no_such_guest.wasm"), "{e}");
        assert!(e.contains("cargo build -p qi-guest-artifacts"), "{e}");
    }

    #[tokio::test]
    async fn dependency_cycle_is_named() {
        let toml = base()
            + &one("a", None, "[]", "dependsOn = [\"c\"]")
            + &one("b", None, "[]", "dependsOn = [\"a\"]")
            + &one("c", None, "[]", "dependsOn = [\"b\"]");
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("dependency cycle: a → b → c → a"), "{e}");
    }

    #[tokio::test]
    async fn cycle_through_a_sync_point_is_named() {
        let toml = header(
            "hybrid",
            "fail-fast",
            "[[strategy.synchronizationPoints]]\nid = \"v\"\ntype = \"decision\"\nparticipants = [\"a\"]\n",
        ) + &one("a", None, "[]", "dependsOn = [\"b\"]")
            + "\n[[subtasks]]\nid = \"b\"\ninputs = [{ name = \"v\", from = \"sync.v\" }]\n";
        let e = invalid(&toml).await.to_string();
        assert!(
            e.contains("dependency cycle") && e.contains("sync.v"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn input_nobody_produces() {
        let toml = base()
            + &one("a", None, "[]", "outputs = [\"x\"]")
            + "\n[[subtasks]]\nid = \"b\"\ninputs = [{ name = \"y\", from = \"a.y\" }]\n";
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("subtasks[1].inputs[0].from"), "{e}");
        assert!(e.contains("has no output `y` (its outputs: x)"), "{e}");
        let line = toml.lines().position(|l| l.contains("\"a.y\"")).unwrap() + 1;
        assert!(e.contains(&format!("test.toml:{line}")), "{e}");
    }

    #[tokio::test]
    async fn subtask_no_agent_can_run() {
        let toml = base()
            + &one(
                "a",
                None,
                "[]",
                "requirements = { capabilities = [\"translate\"] }",
            );
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("no agent is capable of subtask `a`"), "{e}");
        assert!(e.contains("`worker` lacks capability `translate`"), "{e}");
    }

    #[tokio::test]
    async fn security_level_excludes_a_monitored_agent() {
        let toml = base().replace(
            "spec = { fuel = 2_000_000_000, resourceLimits",
            "spec = { isolationLevel = \"monitored\", fuel = 2_000_000_000, resourceLimits",
        ) + &one(
            "a",
            Some("worker"),
            "[]",
            "requirements = { securityLevel = \"high\" }",
        );
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("subtasks[0].agent"), "{e}");
        assert!(e.contains("below security level high"), "{e}");
    }

    #[tokio::test]
    async fn spec_over_its_isolation_ceiling() {
        let toml = base().replace(
            "spec = { fuel = 2_000_000_000, resourceLimits",
            "spec = { directories = [{ hostPath = \".\", guestPath = \"/w\" }], fuel = 2_000_000_000, resourceLimits",
        ) + &one("a", None, "[]", "");
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("agents.worker.spec.directories"), "{e}");
        assert!(e.contains("sandbox"), "{e}");
    }

    #[tokio::test]
    async fn participants_that_wait_for_each_other() {
        let toml = header(
            "hybrid",
            "fail-fast",
            "[[strategy.synchronizationPoints]]\nid = \"b1\"\ntype = \"barrier\"\nparticipants = [\"a\", \"b\"]\n",
        ) + &one("a", None, "[]", "")
            + &one("b", None, "[]", "dependsOn = [\"a\"]");
        let e = invalid(&toml).await.to_string();
        assert!(
            e.contains("`b` waits for `a` to finish, but both meet at `b1`"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unknown_participant_and_bad_condition() {
        let toml = header(
            "hybrid",
            "fail-fast",
            "[[strategy.synchronizationPoints]]\nid = \"b1\"\ntype = \"barrier\"\nparticipants = [\"a\", \"ghost\"]\n",
        ) + &one("a", None, "[]", "");
        let e = invalid(&toml).await.to_string();
        assert!(
            e.contains("participants") && e.contains("no subtask `ghost`"),
            "{e}"
        );

        let toml = header(
            "hybrid",
            "fail-fast",
            "[[strategy.synchronizationPoints]]\nid = \"b1\"\ntype = \"barrier\"\nparticipants = [\"a\"]\ncondition = \"most\"\n",
        ) + &one("a", None, "[]", "");
        let e = invalid(&toml).await.to_string();
        assert!(e.contains("unknown condition `most`"), "{e}");
    }

    #[tokio::test]
    async fn the_bundled_examples_are_valid() {
        let h = harness().await;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for ex in ["code-review", "failure-handling"] {
            let path = root.join("examples").join(ex).join("task.toml");
            coord::prepare(&h.host, &path, Some(&guest_dir()))
                .await
                .unwrap_or_else(|e| panic!("{ex}: {e}"));
        }
    }
}

/// The bundled examples run to the end with the results their comments promise.
mod examples {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn code_review_writes_its_report_into_the_context() {
        let h = harness().await;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/code-review/task.toml");
        let prepared = coord::prepare(&h.host, &path, Some(&guest_dir()))
            .await
            .unwrap();
        let r = prepared
            .run(h.host.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(r.success, "{r:#?}");
        assert_eq!(r.metrics.synchronization_points_reached, 3);
        // The sum of the three shards' totals equals the reporter's file count.
        let totals = &r.synchronization["totals"]["result"];
        assert_eq!(totals["files"], 9);
        let report_ctx = format!("review/inventory/{}", r.coordination_id);
        let doc = h.svc.get(OPERATOR, &report_ctx).await.unwrap().doc;
        assert_eq!(doc["files"], 9);
        assert_eq!(doc["totals"]["todo"], totals["todo"]);
        let verdict = r.synchronization["verdict"]["result"]["decision"].clone();
        assert_eq!(doc["verdict"], verdict);
        assert!(
            doc["markdown"]
                .as_str()
                .unwrap()
                .contains("# Code review report")
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failure_handling_reassigns_the_starved_shard() {
        let h = harness().await;
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/failure-handling/task.toml");
        let prepared = coord::prepare(&h.host, &path, Some(&guest_dir()))
            .await
            .unwrap();
        let r = prepared
            .run(h.host.clone(), RunOptions::default())
            .await
            .unwrap();
        assert!(r.success, "{r:#?}");
        let api = result(&r, "analyze-api");
        assert_eq!(api.attempts[0].agent, "analyzer-tight");
        assert!(api.attempts[0].outcome.contains("fuel"), "{api:#?}");
        assert_eq!(api.attempts[1].agent, "analyzer");
        assert_eq!(r.metrics.failed_agents, 1);
    }
}
