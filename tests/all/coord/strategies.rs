//! Every strategy × every failure handling mode on one diamond of five subtasks.

use super::*;

/// The diamond used by the strategy tests:
///
/// ```text
///   a ──► c ──┐
///             ├──► e
///   b ──► d ──┘
/// ```
///
/// `b_steps` replaces b's steps (to make it wait or fail).
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

/// b's steps on the successful diamond. DAG strategies: b finishes only after c started, so
/// "c starts before b finishes" is a rendezvous, not a race. Waves: b finishes only after a
/// completed, so c (second wave) could start before b finishes if waves were not kept.
/// Sequential: b needs nothing (one at a time orders everything).
fn b_steps(strategy: &str) -> String {
    match strategy {
        "hybrid" | "adaptive" => {
            format!("[{}]", after(r#"kind = "subtask-started", subtask = "c""#))
        }
        "parallel" => format!(
            "[{}, {{ work = 5_000_000 }}]",
            after(r#"kind = "subtask-completed", subtask = "a""#)
        ),
        _ => "[{ work = 1000 }]".into(),
    }
}

/// b fails once a has completed (so a's state is the same in every mode and strategy).
fn failing_b() -> String {
    format!(
        r#"[{}, {{ fail = "b breaks" }}]"#,
        after(r#"kind = "subtask-completed", subtask = "a""#)
    )
}

/// Order checks every strategy must pass on a successful diamond.
fn check_order(strategy: &str, r: &RunReport, ev: &[Value]) {
    for id in ["a", "b", "c", "d", "e"] {
        assert_eq!(state(r, id), SubtaskState::Completed, "{id}: {r:#?}");
    }
    // Dependencies hold in every strategy.
    assert!(first(ev, "subtask-completed", "a") < first(ev, "subtask-started", "c"));
    assert!(first(ev, "subtask-completed", "b") < first(ev, "subtask-started", "d"));
    assert!(first(ev, "subtask-completed", "c") < first(ev, "subtask-started", "e"));
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
            // Waves: a and b ran together, and c waited for the whole first wave although a
            // completed before b did.
            assert!(first(ev, "subtask-started", "b") < first(ev, "subtask-completed", "a"));
            assert!(first(ev, "subtask-completed", "a") < first(ev, "subtask-completed", "b"));
            assert!(!c_before_b_done, "parallel runs in waves: {ev:#?}");
            assert!(max_running(ev) >= 2);
        }
        "hybrid" | "adaptive" => {
            // DAG scheduling: b could only finish after c started.
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
    let (r, ev) = h.run(&diamond(strategy, failure, &b_steps(strategy))).await;
    assert!(r.success, "{r:#?}");
    check_order(strategy, &r, &ev);
    assert_eq!(r.metrics.successful_agents, 5);
    assert_eq!(r.metrics.total_agents, 5);
    assert!(r.metrics.total_resource_usage.fuel_consumed > 0);
    assert!(r.metrics.coordination_efficiency > 0.0 && r.metrics.coordination_efficiency <= 1.0);

    // Failure of b, by the failure handling mode.
    let (r, ev) = h.run(&diamond(strategy, failure, &failing_b())).await;
    assert!(!r.success);
    assert_eq!(state(&r, "a"), SubtaskState::Completed);
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
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                strategy_with($strategy, $failure).await;
            }
        )*
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
