//! The adaptive strategy: a concurrency window that halves on failure and grows on success,
//! agent choice by observed failures, and one agent kind along a chain.

use super::*;

/// Indexes of events of `kind` for subtasks whose id starts with `prefix`.
fn of(ev: &[Value], kind: &str, prefix: &str) -> Vec<usize> {
    ev.iter()
        .enumerate()
        .filter(|(_, e)| {
            e["kind"] == kind && e["subtask"].as_str().is_some_and(|s| s.starts_with(prefix))
        })
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_halves_on_each_failure_and_grows_on_each_success() {
    let h = harness().await;
    // f1 and f2 fail: the window goes 4 → 2 → 1. w1..w4 start once both are over (optional
    // inputs). w1 runs alone; its success widens the window to 2, and w2..w4 each finish only
    // once five subtasks have started, which needs two of them running together.
    let meet = format!("[{}]", after_n(r#"kind = "subtask-started""#, 5));
    let mut toml = header("adaptive", "graceful-degradation", "")
        + &one(
            "f1",
            None,
            r#"[{ fail = "f1 breaks" }]"#,
            "outputs = [\"subtask\"]",
        )
        + &one(
            "f2",
            None,
            r#"[{ fail = "f2 breaks" }]"#,
            "outputs = [\"subtask\"]",
        );
    let optional =
        "inputs = [{ name = \"x\", from = [\"f1.subtask\", \"f2.subtask\"], required = false }]";
    toml += &format!("\n[[subtasks]]\nid = \"w1\"\n{optional}\n");
    for w in ["w2", "w3", "w4"] {
        toml += &format!(
            "\n[[subtasks]]\nid = \"{w}\"\ninputs = [{{ name = \"steps\", value = {meet} }}, {{ name = \"x\", from = [\"f1.subtask\", \"f2.subtask\"], required = false }}]\n"
        );
    }
    let (r, ev) = h.run(&toml).await;
    for w in ["w1", "w2", "w3", "w4"] {
        assert_eq!(state(&r, w), SubtaskState::Completed, "{w}: {r:#?}");
    }
    let starts = of(&ev, "subtask-started", "w");
    let completions = of(&ev, "subtask-completed", "w");
    // After two failures, one at a time: the second w started after the first completed.
    assert!(completions[0] < starts[1], "window of 1: {ev:#?}");
    // After one success, two at a time: the third w started before the second completed.
    assert!(starts[2] < completions[1], "window of 2: {ev:#?}");
}

/// `backup` (preferred: the more specialized) fails on purpose here, `worker` does not.
fn flaky_backup(strategy: &str) -> String {
    header(strategy, "retry-cascade", "")
        .replace("config = { flaky = false }", "config = { flaky = true }")
        + &one("s1", None, r#"[{ fail_if_config = "flaky" }]"#, "")
        + &one("s2", None, "[]", "dependsOn = [\"s1\"]")
        + &one("s3", None, "[]", "dependsOn = [\"s1\"]")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_sends_later_subtasks_to_the_agent_that_failed_least() {
    let h = harness().await;
    let (r, _) = h.run(&flaky_backup("adaptive")).await;
    assert!(r.success, "{r:#?}");
    let s1: Vec<&str> = result(&r, "s1")
        .attempts
        .iter()
        .map(|a| a.agent.as_str())
        .collect();
    assert_eq!(s1, ["backup", "backup", "worker"]);
    for id in ["s2", "s3"] {
        assert_eq!(result(&r, id).attempts[0].agent, "worker", "{id}: {r:#?}");
    }
    // Hybrid keeps the preferred agent.
    let (r, _) = h.run(&flaky_backup("hybrid")).await;
    assert_eq!(result(&r, "s2").attempts[0].agent, "backup", "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_keeps_the_agent_kind_of_its_previous_link() {
    let h = harness().await;
    // c1 runs on `worker` and fails once there before succeeding, so by failures `backup`
    // would be the better choice: only the chain rule keeps `worker`.
    let chain = |strategy: &str| {
        header(strategy, "retry-cascade", "")
            + &one("c1", Some("worker"), "[{ fail_before_attempt = 2 }]", "")
            + &one("c2", None, "[]", "dependsOn = [\"c1\"]")
            + &one("c3", None, "[]", "dependsOn = [\"c2\"]")
    };
    let (r, _) = h.run(&chain("adaptive")).await;
    assert!(r.success, "{r:#?}");
    for id in ["c2", "c3"] {
        assert_eq!(result(&r, id).attempts[0].agent, "worker", "{id}: {r:#?}");
    }
    assert_eq!(result(&r, "c1").attempts.len(), 2);
    // Hybrid takes the preferred agent for every unpinned link.
    let (r, _) = h.run(&chain("hybrid")).await;
    assert_eq!(result(&r, "c2").attempts[0].agent, "backup", "{r:#?}");
}
