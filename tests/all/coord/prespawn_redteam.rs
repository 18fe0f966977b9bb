//! Red team of prespawn: the next agent of a serial segment instantiated and described while
//! the output before it commits.

use super::*;

/// A harness on `svc` whose host allows `max_live` agents at once.
fn harness_on(svc: ContextService, max_live: u32) -> Harness {
    let h = Harness::with_context(svc.clone());
    let mut tools = ToolRegistry::new();
    tools.register(AwaitEvent {
        bus: svc.bus().clone(),
    });
    let (gates, gates_rx) = watch::channel(BTreeSet::new());
    tools.register(Gate { gates: gates_rx });
    drop(h);
    let host = AgentHost::with_tools(
        HostConfig {
            max_live_agents: max_live,
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

/// `a -> b -> c`, each passing its `subtask` output to the next.
fn chain(strategy: &str, failure: &str, b_steps: &str) -> String {
    header(strategy, failure, "")
        + &one("a", None, "[]", r#"outputs = ["subtask"]"#)
        + &format!(
            r#"
[[subtasks]]
id = "b"
dependsOn = ["a"]
outputs = ["subtask"]
inputs = [{{ name = "steps", value = {b_steps} }}, {{ name = "prev", from = ["a.subtask"] }}]

[[subtasks]]
id = "c"
dependsOn = ["b"]
inputs = [{{ name = "steps", value = [] }}, {{ name = "prev", from = ["b.subtask"] }}]
"#
        )
}

fn live(h: &Harness) -> Vec<(String, qi_host::AgentStatus)> {
    h.host.list()
}

/// Holds if green. On a host that allows one live agent, a chain (and two independent
/// subtasks that only the memory budget serialises) must still run: the next agent may be
/// prespawned only once the one before it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_on_a_host_that_allows_one_live_agent() {
    for strategy in ["sequential", "hybrid", "adaptive"] {
        let h = harness_on(crate::common::in_memory_context().await, 1);
        let (r, ev) = h.run(&chain(strategy, "fail-fast", "[]")).await;
        assert!(r.success, "{strategy}: {r:#?}");
        for id in ["a", "b", "c"] {
            assert_eq!(result(&r, id).attempts.len(), 1, "{strategy} {id}: {r:#?}");
        }
        assert!(first(&ev, "subtask-completed", "a") < first(&ev, "subtask-started", "b"));
        assert!(live(&h).is_empty(), "{:?}", live(&h));
    }
    // Two independent 32 MiB subtasks under a 32 MiB budget: y waits for x's allocation.
    let h = harness_on(crate::common::in_memory_context().await, 1);
    let toml = header("hybrid", "fail-fast", "")
        + "\n[resources]\nmaxTotalMemoryMB = 32\n"
        + &one("x", None, "[]", "")
        + &one("y", None, "[]", "");
    let (r, _) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    assert_eq!(r.metrics.resources.peak_memory_mb, 32);
}

/// Holds if green. Events keep cause before effect and each dependent reads the durable
/// output of its prerequisite; a retried middle link is started fresh (attempt 2) and its
/// successor is prespawned for attempt 1; nothing is left alive after the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_inputs_and_attempts_through_a_prespawned_chain() {
    for strategy in ["sequential", "hybrid", "adaptive", "parallel"] {
        let h = harness().await;
        let (r, ev) = h
            .run(&chain(
                strategy,
                "retry-cascade",
                "[{ fail_before_attempt = 2 }]",
            ))
            .await;
        assert!(r.success, "{strategy}: {r:#?}");
        for (prev, next) in [("a", "b"), ("b", "c")] {
            let done = first(&ev, "subtask-completed", prev);
            let started = first(&ev, "subtask-started", next);
            assert!(done < started, "{strategy}: {prev} -> {next}: {ev:#?}");
            let out = result(&r, next).output.as_ref().unwrap();
            assert_eq!(out["received"]["prev"], json!([prev]), "{strategy}: {out}");
        }
        assert_eq!(result(&r, "b").attempts.len(), 2);
        assert_eq!(result(&r, "b").output.as_ref().unwrap()["attempt"], 2);
        assert_eq!(result(&r, "c").output.as_ref().unwrap()["attempt"], 1);
        assert!(live(&h).is_empty(), "{strategy}: {:?}", live(&h));
    }
}

/// A `hostile` agent kind whose describe() spins once `spin` exists in `dir`.
fn spinner(dir: &Path) -> String {
    format!(
        r#"
[agents.spinner]
component = "guest:hostile"
spec = {{ isolationLevel = "restricted", fuel = 200_000_000_000, resourceLimits = {{ maxMemoryMB = 32, maxExecutionTimeMs = 60000 }}, securityConstraints = {{ fileSystemAccess = "restricted" }}, directories = [{{ hostPath = "{}", guestPath = "/describe", writable = false }}] }}
"#,
        dir.display()
    )
}

/// Holds if green. The prerequisite's output is over the store's limit: every commit fails
/// (retry-cascade: 4 attempts), each while the dependent's agent is prespawned with a
/// describe() that never returns. The dependent never starts, and no agent is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_drops_the_prespawned_agent() {
    let svc = crate::common::context_service_with(
        qi_host::StoreConfig::in_memory(),
        qi_host::context::ContextConfig {
            max_document_bytes: 4096,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let h = Harness::with_context(svc);
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(5000);
    let toml = header("hybrid", "retry-cascade", "")
        + &spinner(dir.path())
        + &format!(
            r#"
[[subtasks]]
id = "t1"
inputs = [{{ name = "steps", value = [] }}, {{ name = "emit", value = {{ big = "{big}" }} }}]
outputs = ["big"]
requirements = {{ capabilities = ["work"] }}
"#
        )
        + &one("t2", Some("spinner"), "[]", r#"dependsOn = ["t1"]"#);
    let prepared = h.prepare(&toml).await.unwrap();
    std::fs::write(dir.path().join("spin"), "").unwrap();
    let (r, ev) = h.run_prepared(&prepared, RunOptions::default()).await;
    assert!(!r.success);
    assert_eq!(result(&r, "t1").attempts.len(), 4, "{r:#?}");
    assert!(result(&r, "t2").attempts.is_empty(), "{r:#?}");
    assert!(at(&ev, "subtask-started", "t2").is_empty());
    let left = live(&h);
    assert!(
        left.is_empty(),
        "prespawned agents still alive when the run returned: {left:?}"
    );
    assert!(live(&h).is_empty(), "{:?}", live(&h));
}

/// Holds if green. The dependent's prespawned agent never finishes describe(): its attempt
/// is stopped at the subtask's time limit, as an agent spawned at start would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prespawned_agent_that_never_starts_is_stopped_at_the_subtask_time_limit() {
    let h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = header("hybrid", "graceful-degradation", "")
        + &spinner(dir.path())
        + &one(
            "a",
            None,
            "[]",
            r#"requirements = { capabilities = ["work"] }"#,
        )
        + &one(
            "b",
            Some("spinner"),
            "[]",
            "timeLimitMs = 300\ndependsOn = [\"a\"]",
        );
    let prepared = h.prepare(&toml).await.unwrap();
    std::fs::write(dir.path().join("spin"), "").unwrap();
    let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
    let t = result(&r, "b");
    assert_eq!(t.state, SubtaskState::Failed, "{t:#?}");
    for a in &t.attempts {
        assert!(
            a.outcome.contains("while the agent was starting") || a.outcome.contains("starting"),
            "{t:#?}"
        );
    }
    assert!(live(&h).is_empty(), "{:?}", live(&h));
}

/// Holds if green. The run is cancelled (task time limit) while the dependent's prespawned
/// agent spins in describe(): it is cancelled, and no agent outlives the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cancelled_while_a_prespawned_agent_starts_leaves_nothing() {
    let h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = header("hybrid", "graceful-degradation", "")
        .replace("id = \"t\"", "id = \"t\"\ntimeLimitMs = 500")
        + &spinner(dir.path())
        + &one(
            "a",
            None,
            "[]",
            r#"requirements = { capabilities = ["work"] }"#,
        )
        + &one("b", Some("spinner"), "[]", "dependsOn = [\"a\"]");
    let prepared = h.prepare(&toml).await.unwrap();
    std::fs::write(dir.path().join("spin"), "").unwrap();
    let (r, _) = h.run_prepared(&prepared, RunOptions::default()).await;
    assert!(
        r.error.as_deref().unwrap_or("").contains("timeLimitMs"),
        "{r:#?}"
    );
    assert_eq!(state(&r, "a"), SubtaskState::Completed);
    assert_eq!(state(&r, "b"), SubtaskState::Cancelled, "{r:#?}");
    let left = live(&h);
    assert!(left.is_empty(), "alive when the run returned: {left:?}");
}

/// Holds if green. The last subtask of a run prespawns nothing, and a run of one subtask
/// ends with no agent alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_subtask_prespawns_nothing() {
    let h = harness().await;
    let (r, _) = h
        .run(&(header("sequential", "fail-fast", "") + &one("only", None, "[]", "")))
        .await;
    assert!(r.success, "{r:#?}");
    assert!(live(&h).is_empty(), "{:?}", live(&h));
}
