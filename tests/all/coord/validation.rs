//! Manifest validation: every error names the field (and line) and says what is wrong.

use super::*;
use qi_host::ErrorCategory;

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
async fn an_input_nobody_produces_is_refused_at_its_line() {
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
async fn a_spec_over_its_isolation_ceiling_is_refused() {
    let toml = base().replace(
        "spec = { fuel = 2_000_000_000, resourceLimits",
        "spec = { directories = [{ hostPath = \".\", guestPath = \"/w\" }], fuel = 2_000_000_000, resourceLimits",
    ) + &one("a", None, "[]", "");
    let e = invalid(&toml).await.to_string();
    assert!(e.contains("agents.worker.spec.directories"), "{e}");
    assert!(e.contains("sandbox"), "{e}");
}

#[tokio::test]
async fn participants_that_wait_for_each_other_are_refused() {
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
async fn an_unknown_participant_or_condition_is_refused() {
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
    let mut examples = vec![
        "code-review",
        "failure-handling",
        "producer-consumer",
        "ai-review",
    ];
    // Its Python reviewers exist only when componentize-py built them (always in CI).
    if qi_guest_artifacts::PYTHON_GUESTS_SKIPPED.is_none() {
        examples.push("mixed-review");
    }
    for ex in examples {
        let path = root.join("examples").join(ex).join("task.toml");
        coord::prepare(&h.host, &path, Some(&guest_dir()))
            .await
            .unwrap_or_else(|e| panic!("{ex}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_at_the_subtask_bound_validates_and_plans() {
    // 10,000 subtasks, each after the previous one, with a point near the end: the checks use
    // bit sets and indexes, not a set of names per subtask.
    let h = harness().await;
    let n = qi_host::coord::manifest::MAX_SUBTASKS;
    let mut toml = header(
        "hybrid",
        "graceful-degradation",
        &format!(
            "[[strategy.synchronizationPoints]]\nid = \"end\"\ntype = \"barrier\"\nparticipants = [\"s{}\", \"side\"]\n",
            n - 2
        ),
    );
    for i in 0..n - 1 {
        let dep = if i == 0 {
            String::new()
        } else {
            format!("dependsOn = [\"s{}\"]", i - 1)
        };
        toml += &format!("\n[[subtasks]]\nid = \"s{i}\"\n{dep}\n");
    }
    toml += "\n[[subtasks]]\nid = \"side\"\n";
    let plan = h.prepare(&toml).await.expect("valid").plan;
    assert_eq!(plan.subtasks.len(), n);
    assert_eq!(plan.subtasks.iter().map(|p| p.level).max(), Some(n - 2));
}
