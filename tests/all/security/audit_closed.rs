//! Every refusal audited, fail-closed: a gated call whose audit entry cannot be recorded is
//! refused; allow-list refusals and fuel exhaustion are audited; a monitored agent's decisions
//! are recorded even without policies, an unmonitored agent's allowed calls are not.

use super::*;
use qi_host::audit::AuditEntry;

const ALLOW_CLOCK: &str = r#"
[[policies]]
id = "clock"
priority = 1
[[policies.rules]]
effect = "allow"
resources = ["tool/clock.now"]
actions = ["call"]
"#;

async fn of(s: &Secured, agent: &str) -> Vec<AuditEntry> {
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(agent.into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// Runs the worker calling `clock.now` once under `spec`; returns the agent id and the probe.
async fn clock_now(s: &Secured, spec: SubAgentSpecification) -> (String, Value) {
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let report = agent
        .run(TaskRequest::new(
            "p",
            steps_input(json!([{"tool": {"name": "clock.now", "input": {}}}])),
        ))
        .await;
    let out = report
        .output
        .unwrap_or_else(|| panic!("{:?}", report.failure));
    (id, out["probes"][0].clone())
}

fn clock_allowed() -> SubAgentSpecification {
    let mut spec = SubAgentSpecification::default();
    spec.security_constraints.allowed_tools = vec!["clock.now".into()];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_call_is_refused_when_the_audit_log_cannot_record_it() {
    let s = secured(Some(ALLOW_CLOCK)).await;
    // While the log works, the call is allowed and audited.
    let (id, probe) = clock_now(&s, clock_allowed()).await;
    assert_eq!(probe["ok"], true, "{probe}");
    let allowed = of(&s, &id).await;
    assert!(
        allowed
            .iter()
            .any(|e| e.resource == "tool/clock.now" && e.decision == AuditDecision::Allow),
        "{allowed:?}"
    );
    // Spawned (and its spawn recorded) while the log works.
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s.host.spawn(&component, clock_allowed()).await.unwrap();

    // The store refuses audit writes; the next batch fails and the log stops accepting.
    s.fail_the_audit_log().await;

    let report = agent
        .run(TaskRequest::new(
            "p",
            steps_input(json!([{"tool": {"name": "clock.now", "input": {}}}])),
        ))
        .await;
    let out = report
        .output
        .unwrap_or_else(|| panic!("{:?}", report.failure));
    let probe = &out["probes"][0];
    assert_eq!(probe["ok"], false, "{probe}");
    let error = probe["error"].as_str().unwrap();
    assert!(
        error.contains("the audit log cannot record this call")
            && error.contains("audit disk full"),
        "{error}"
    );
    // Nor is a new agent started unrecorded.
    let refused = s.host.spawn(&component, clock_allowed()).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the audit log cannot record this spawn"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_allow_list_refusal_is_audited_without_policies() {
    let s = secured(None).await;
    // Allowed by the list, unmonitored, no policies: nothing to record.
    let (id, probe) = clock_now(&s, clock_allowed()).await;
    assert_eq!(probe["ok"], true, "{probe}");
    assert!(
        of(&s, &id)
            .await
            .iter()
            .all(|e| e.decision == AuditDecision::Record),
        "only lifecycle facts"
    );
    // Not in the list: refused and audited.
    let (id, probe) = clock_now(&s, SubAgentSpecification::default()).await;
    assert_eq!(probe["ok"], false, "{probe}");
    let denied: Vec<AuditEntry> = of(&s, &id)
        .await
        .into_iter()
        .filter(|e| e.decision == AuditDecision::Deny)
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        (denied[0].resource.as_str(), denied[0].operation.as_str()),
        ("tool/clock.now", "call")
    );
    assert!(
        denied[0]
            .reason
            .contains("not in securityConstraints.allowedTools"),
        "{denied:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitored_agent_s_allowed_calls_are_recorded_without_policies() {
    let s = secured(None).await;
    let mut spec = clock_allowed();
    spec.security_constraints.resource_monitoring = true;
    let (id, probe) = clock_now(&s, spec).await;
    assert_eq!(probe["ok"], true, "{probe}");
    let allowed: Vec<AuditEntry> = of(&s, &id)
        .await
        .into_iter()
        .filter(|e| e.decision == AuditDecision::Allow)
        .collect();
    assert_eq!(allowed.len(), 1, "{allowed:?}");
    assert_eq!(allowed[0].resource, "tool/clock.now");
    assert_eq!(allowed[0].reason, "no policies loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_fuel_is_audited_as_a_limit_violation() {
    let s = secured(None).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let spec = SubAgentSpecification {
        fuel: 50_000_000,
        ..Default::default()
    };
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let report = agent
        .run(TaskRequest::new("p", steps_input(json!([{"spin": true}]))))
        .await;
    assert!(
        matches!(
            report.failure,
            Some(qi_host::AgentFailure::LimitExceeded {
                limit: qi_host::LimitKind::Fuel,
                ..
            })
        ),
        "{report:?}"
    );
    let violations: Vec<AuditEntry> = of(&s, &id)
        .await
        .into_iter()
        .filter(|e| e.operation == "limit-violation")
        .collect();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].details["limit"], "fuel");
    assert_eq!(violations[0].details["limitValue"], 50_000_000);
}

/// Runs the worker calling `clock.now` three times under `maxToolCalls = max`; returns the
/// agent's `deny` entries on `limits/tool-calls`.
async fn budget_refusals_under(max: u32) -> Vec<AuditEntry> {
    let s = secured(None).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let mut spec = clock_allowed();
    spec.resource_limits.max_tool_calls = max;
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    let call = json!({"tool": {"name": "clock.now", "input": {}}});
    agent
        .run(TaskRequest::new(
            "p",
            steps_input(json!([call, call, call])),
        ))
        .await;
    of(&s, &id)
        .await
        .into_iter()
        .filter(|e| e.resource == "limits/tool-calls" && e.decision == AuditDecision::Deny)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_budget_attempt_is_audited() {
    assert_eq!(budget_refusals_under(3).await, []);
    let refused = budget_refusals_under(1).await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    for r in &refused {
        assert!(r.reason.contains("may make 1 tool calls"), "{refused:?}");
    }
}
