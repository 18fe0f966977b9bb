//! Lifecycle: statuses, terminate (spinning, blocked in a host call, sleeping), registry.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{AgentFailure, AgentStatus, Error, LimitKind, TaskRequest};
use serde_json::json;

/// Starts the agent, waits until it has signalled `key` (so it is running the part the test is
/// about: spinning, blocked in a host call, sleeping), terminates it and checks the report.
async fn terminate_once_signalled(
    path: &str,
    mut spec: qi_host::SubAgentSpecification,
    key: &str,
    input: serde_json::Value,
) {
    spec.security_constraints
        .allowed_tools
        .extend(["test.signal".into(), "test.block".into()]);
    let agent = host().spawn(&load(path), spec).await.expect("spawns");
    let id = agent.id().to_string();
    assert_eq!(agent.status(), AgentStatus::Ready);
    let running = tokio::spawn(agent.run(TaskRequest::new("run until stopped", input)));
    next_signal(key).await;
    assert_eq!(host().status(&id), Some(AgentStatus::Executing));
    host().terminate(&id, "test asked").unwrap();
    // The agent would otherwise run for an hour (or forever): only the terminate ends it.
    let report = hang_guard("the terminated agent's end", running)
        .await
        .unwrap();
    assert_eq!(report.status, AgentStatus::Terminated);
    assert_eq!(
        report.failure,
        Some(AgentFailure::Terminated {
            reason: "test asked".into()
        })
    );
    // The agent has left the registry.
    assert_eq!(host().status(&id), None);
}

#[tokio::test]
async fn terminate_stops_a_spinning_agent() {
    let mut s = spec();
    s.fuel = qi_host::spec::IsolationCeilings::of(qi_host::IsolationLevel::Sandbox).fuel;
    let key = unique_key("terminate-spinning");
    terminate_once_signalled(SPIN_FOREVER_COMPONENT, s, &key, json!({"signal": key})).await;
}

#[tokio::test]
async fn terminate_stops_an_agent_blocked_in_a_host_call() {
    let key = unique_key("terminate-blocked");
    // `test.block` signals once the agent is inside it, then never returns.
    terminate_once_signalled(
        TOOL_USER_COMPONENT,
        spec(),
        &key,
        json!({"calls": [call("test.block", json!({"key": key}))]}),
    )
    .await;
}

#[tokio::test]
async fn terminate_stops_a_sleeping_agent() {
    let key = unique_key("terminate-sleeping");
    terminate_once_signalled(
        SLEEPER_COMPONENT,
        spec(),
        &key,
        json!({"ms": 3_600_000, "signal": key}),
    )
    .await;
}

#[tokio::test]
async fn terminate_unknown_agent_is_an_error() {
    assert!(matches!(
        host().terminate("agent-does-not-exist", "x"),
        Err(Error::UnknownAgent(_))
    ));
}

#[tokio::test]
async fn statuses_go_ready_executing_completed() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.signal".into(), "test.rendezvous".into()];
    let agent = host().spawn(&load(TOOL_USER_COMPONENT), s).await.unwrap();
    let id = agent.id().to_string();
    assert_eq!(host().status(&id), Some(AgentStatus::Ready));
    assert!(
        host()
            .list()
            .iter()
            .any(|(i, s)| i == &id && *s == AgentStatus::Ready)
    );
    // The agent signals, then waits at a rendezvous that only the test completes: in between
    // it is certainly executing.
    let key = unique_key("statuses");
    let running = tokio::spawn(agent.run(TaskRequest::new(
        "signal, then wait for the test",
        json!({"calls": [
            call("test.signal", json!({"key": key})),
            call("test.rendezvous", json!({"key": key, "n": 2})),
        ]}),
    )));
    next_signal(&key).await;
    assert_eq!(host().status(&id), Some(AgentStatus::Executing));
    assert!(
        host()
            .list()
            .iter()
            .any(|(i, s)| i == &id && *s == AgentStatus::Executing)
    );
    hang_guard("the rendezvous with the agent", rendezvous(&key, 2).wait()).await;
    let report = hang_guard("the agent's end", running).await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
    ok(&report);
    assert_eq!(host().status(&id), None);
}

#[tokio::test]
async fn sub_agents_cannot_spawn_sub_agents() {
    let parent = host().spawn(&load(HELLO_COMPONENT), spec()).await.unwrap();
    let mut s = spec();
    s.parent_agent_id = Some(parent.id().to_string());
    let err = host().spawn(&load(HELLO_COMPONENT), s).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("sub-agents cannot spawn sub-agents"),
        "{err}"
    );
    // An operator-level parent is fine.
    let mut s = spec();
    s.parent_agent_id = Some("operator".into());
    host().spawn(&load(HELLO_COMPONENT), s).await.unwrap();
}

#[tokio::test]
async fn a_failed_agent_leaves_others_running() {
    // The bystander signals and then waits for the test; the panicker and the memory hog run
    // and fail meanwhile, so the bystander was provably running when they failed.
    let mut bystander = spec();
    bystander.security_constraints.allowed_tools =
        vec!["test.signal".into(), "test.rendezvous".into()];
    let key = unique_key("bystander");
    let running = tokio::spawn(run(
        TOOL_USER_COMPONENT,
        bystander,
        json!({"calls": [
            call("test.signal", json!({"key": key})),
            call("test.rendezvous", json!({"key": key, "n": 2})),
        ]}),
    ));
    next_signal(&key).await;

    let mut hog = spec();
    hog.resource_limits.max_memory_mb = 8;
    let (panicked, hogged) = tokio::join!(
        run(PANICKER_COMPONENT, spec(), json!(null)),
        run(MEMORY_HOG_COMPONENT, hog, json!(null)),
    );
    assert!(
        matches!(panicked.failure, Some(AgentFailure::Panicked { .. })),
        "{:?}",
        panicked.failure
    );
    assert_eq!(limit(&hogged).0, LimitKind::Memory);
    assert!(!running.is_finished(), "the bystander waits for the test");

    hang_guard(
        "the rendezvous with the bystander",
        rendezvous(&key, 2).wait(),
    )
    .await;
    let report = hang_guard("the bystander's end", running).await.unwrap();
    let out = ok(&report);
    assert_eq!(
        out["results"][1]["ok"]["agent"],
        report.agent_id.as_str(),
        "{out}"
    );
}

#[tokio::test]
async fn components_load_once_and_come_from_the_disk_cache_afterwards() {
    let first = load(HELLO_COMPONENT);
    let again = load(HELLO_COMPONENT);
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // A second host with the same cache directory deserializes instead of compiling.
    let other = new_host(4);
    let loaded = other.load(HELLO_COMPONENT).unwrap();
    assert!(loaded.from_cache);
    assert_eq!(loaded.sha256, first.sha256);
}
