//! Lifecycle: statuses, terminate (spinning, blocked in a host call, sleeping), registry.

use crate::common::*;
use qi_guest_artifacts::*;
use qi_host::{AgentFailure, AgentStatus, Error, TaskRequest};
use serde_json::json;
use std::time::{Duration, Instant};

async fn wait_for_status(id: &str, want: AgentStatus) {
    let start = Instant::now();
    while host().status(id) != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent {id} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn terminate_while_running(
    path: &str,
    spec: qi_host::SubAgentSpecification,
    input: serde_json::Value,
) {
    let agent = host().spawn(&load(path), spec).await.expect("spawns");
    let id = agent.id().to_string();
    assert_eq!(agent.status(), AgentStatus::Ready);
    let running = tokio::spawn(agent.run(TaskRequest::new("run until stopped", input)));
    wait_for_status(&id, AgentStatus::Executing).await;
    // Let it get properly stuck.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = Instant::now();
    host().terminate(&id, "test asked").unwrap();
    let report = running.await.unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "terminate took {:?}",
        asked.elapsed()
    );
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
    terminate_while_running(SPIN_FOREVER_COMPONENT, s, json!(null)).await;
}

#[tokio::test]
async fn terminate_stops_an_agent_blocked_in_a_host_call() {
    let mut s = spec();
    s.security_constraints.allowed_tools = vec!["test.block".into()];
    terminate_while_running(
        TOOL_USER_COMPONENT,
        s,
        json!({"calls": [{"tool": "test.block", "input": {}}]}),
    )
    .await;
}

#[tokio::test]
async fn terminate_stops_a_sleeping_agent() {
    terminate_while_running(SLEEPER_COMPONENT, spec(), json!({"ms": 60_000})).await;
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
    let agent = host()
        .spawn(&load(SLEEPER_COMPONENT), spec())
        .await
        .unwrap();
    let id = agent.id().to_string();
    assert_eq!(host().status(&id), Some(AgentStatus::Ready));
    assert!(
        host()
            .list()
            .iter()
            .any(|(i, s)| i == &id && *s == AgentStatus::Ready)
    );
    let running = tokio::spawn(agent.run(TaskRequest::new("nap", json!({"ms": 100}))));
    wait_for_status(&id, AgentStatus::Executing).await;
    let report = running.await.unwrap();
    assert_eq!(report.status, AgentStatus::Completed);
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
    let mut hog = spec();
    hog.resource_limits.max_memory_mb = 8;
    let (a, b, c) = tokio::join!(
        run(PANICKER_COMPONENT, spec(), json!(null)),
        run(MEMORY_HOG_COMPONENT, hog, json!(null)),
        run(HELLO_COMPONENT, spec(), json!({"still": "here"})),
    );
    assert!(a.failure.is_some());
    assert!(b.failure.is_some());
    assert_eq!(ok(&c)["input"]["still"], "here");
}

#[tokio::test]
async fn components_load_once_and_come_from_the_disk_cache_afterwards() {
    let first = load(HELLO_COMPONENT);
    let again = load(HELLO_COMPONENT);
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // A second host with the same cache directory deserializes instead of compiling.
    let other = qi_host::AgentHost::new(qi_host::HostConfig {
        max_live_agents: 4,
        cache_dir: Some(cache_dir()),
        ..Default::default()
    })
    .unwrap();
    let loaded = other.load(HELLO_COMPONENT).unwrap();
    assert!(loaded.from_cache);
    assert_eq!(loaded.sha256, first.sha256);
}
