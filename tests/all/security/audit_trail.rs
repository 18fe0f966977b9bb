//! The audit log records what README promises besides gate decisions: terminations, shares,
//! revocations and limit violations, each with the agent and the reason.

use super::*;
use qi_guest_artifacts::HOSTILE_COMPONENT;
use qi_host::AgentFailure;
use qi_host::audit::AuditEntry;
use qi_host::context::AgentCapabilities;

async fn entries(s: &Secured, agent: &str, operation: &str) -> Vec<AuditEntry> {
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(agent.into()),
            operation: Some(operation.into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// Runs the hostile guest's `host.share-list` with two agent ids; returns the agent's id.
async fn share_list(s: &Secured, op: &str) -> String {
    let component = s.host.load(HOSTILE_COMPONENT).unwrap();
    let agent = s
        .host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap();
    let id = agent.id().to_string();
    let report = agent
        .run(TaskRequest::new(
            "share",
            json!({"mode": "host.share-list", "count": 2, "op": op}),
        ))
        .await;
    assert!(report.failure.is_none(), "{report:?}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_and_revocations_are_audited_naming_the_agents() {
    let s = secured(None).await;
    for probe in ["agent-probe-0", "agent-probe-1"] {
        s.svc
            .register_agent(probe, AgentCapabilities::default())
            .await
            .unwrap();
    }
    let sharer = share_list(&s, "share").await;
    // One entry per grant made, naming its target.
    let shares = entries(&s, &sharer, "share").await;
    assert_eq!(shares.len(), 2, "{shares:?}");
    for (entry, target) in shares.iter().zip(["agent-probe-0", "agent-probe-1"]) {
        assert!(entry.resource.starts_with("context/"), "{shares:?}");
        assert_eq!(entry.decision, AuditDecision::Record);
        assert_eq!(entry.reason, format!("granted to `{target}`"));
        assert_eq!(entry.details["permissions"], json!(["read"]));
    }
    assert!(entries(&s, &sharer, "revoke").await.is_empty());

    let revoker = share_list(&s, "revoke").await;
    let revokes = entries(&s, &revoker, "revoke").await;
    assert_eq!(revokes.len(), 2, "{revokes:?}");
    for (entry, target) in revokes.iter().zip(["agent-probe-0", "agent-probe-1"]) {
        assert!(entry.resource.starts_with("context/"), "{revokes:?}");
        assert_eq!(entry.decision, AuditDecision::Record);
        assert_eq!(entry.reason, format!("grant of `{target}` revoked"));
    }
    assert!(entries(&s, &revoker, "share").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_a_running_agent_is_audited_with_the_reason() {
    let gate = Gate::default();
    let mut tools = ToolRegistry::with_builtins();
    tools.register(gate.clone());
    let s = secured_with_tools(None, tools).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let spec = SubAgentSpecification {
        security_constraints: qi_host::SecurityConstraints {
            allowed_tools: vec!["test.gate".into()],
            ..Default::default()
        },
        ..Default::default()
    };
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let task = TaskRequest::new(
        "p",
        steps_input(json!([{"tool": {"name": "test.gate", "input": {}}}])),
    );
    let stop = async {
        // Never released: only the termination ends the call.
        gate.entered.notified().await;
        s.host.terminate(&id, "stopped by the operator").unwrap();
    };
    let (report, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(agent.run(task), stop)
    })
    .await
    .expect("the agent reaches the gate and ends once terminated");
    assert!(
        matches!(report.failure, Some(AgentFailure::Terminated { .. })),
        "{report:?}"
    );
    let terminations = entries(&s, &id, "terminate").await;
    assert_eq!(terminations.len(), 1, "{terminations:?}");
    assert_eq!(terminations[0].resource, "lifecycle");
    assert_eq!(terminations[0].reason, "stopped by the operator");
}

/// Runs the worker calling `clock.now` twice under `maxToolCalls = max`; returns the agent's
/// `limit-violation` entries.
async fn two_tool_calls_under(max: u32) -> Vec<AuditEntry> {
    let s = secured(None).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let mut spec = SubAgentSpecification::default();
    spec.security_constraints.allowed_tools = vec!["clock.now".into()];
    spec.resource_limits.max_tool_calls = max;
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let call = json!({"tool": {"name": "clock.now", "input": {}}});
    agent
        .run(TaskRequest::new("p", steps_input(json!([call, call]))))
        .await;
    entries(&s, &id, "limit-violation").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_violation_is_audited_and_a_run_just_inside_the_limit_is_not() {
    assert_eq!(two_tool_calls_under(2).await, []);
    let violations = two_tool_calls_under(1).await;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].resource, "limits");
    assert!(
        violations[0].reason.contains("(1)"),
        "names the limit value: {violations:?}"
    );
    assert_eq!(violations[0].details["limitValue"], 1);
}
