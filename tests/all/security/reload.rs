//! Access policies replaced, and trust levels changed, while agents run: the next call of a
//! running agent, and of agents spawned later, is decided by the new state.

use super::*;

/// Tool calls allowed, nothing else: a context read is refused by default.
const TOOLS_ONLY: &str = r#"
[[policies]]
id = "tools-only"
[[policies.rules]]
effect = "allow"
resources = ["tool/*"]
"#;

/// Tool calls and context reads allowed.
const TOOLS_AND_READS: &str = r#"
[[policies]]
id = "tools-and-reads"
[[policies.rules]]
effect = "allow"
resources = ["tool/*", "context/*"]
"#;

/// Tool calls and context reads allowed at medium trust or above.
const TRUSTED: &str = r#"
[[policies]]
id = "trusted"
[[policies.rules]]
effect = "allow"
resources = ["tool/*", "context/*"]
condition = 'principal.trust >= 2'
"#;

fn policy_set(text: &str) -> PolicySet {
    let file: toml::Value = toml::from_str(text).expect("policy toml");
    PolicySet::new(file["policies"].clone().try_into().expect("policies parse"))
        .expect("policies valid")
}

/// One agent reads `doc`, waits in the gate while the policies are replaced by `after`, and
/// reads `doc` again; returns whether each read was allowed and the reasons audited for them.
async fn read_across_a_reload(before: &str, after: &str) -> ((bool, bool), Vec<String>) {
    let after = policy_set(after);
    read_across_a_change(Some(before), (TrustLevel::Low, None), async move |s, _| {
        s.access.set_policies(Some(after))
    })
    .await
}

/// One agent of `trust` reads `doc` (shared with it for reading, requiring `min_trust` if
/// given), waits
/// in the gate while `change` runs, and reads `doc` again; returns whether each read was
/// allowed and the reasons audited for them.
async fn read_across_a_change(
    policies: Option<&str>,
    (trust, min_trust): (TrustLevel, Option<TrustLevel>),
    change: impl AsyncFnOnce(&Secured, &str),
) -> ((bool, bool), Vec<String>) {
    let gate = Gate::default();
    let mut tools = ToolRegistry::with_builtins();
    tools.register(gate.clone());
    let s = secured_with_tools(policies, tools).await;
    context(&s.svc, "doc").await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let spec = SubAgentSpecification {
        security_constraints: qi_host::SecurityConstraints {
            allowed_tools: vec!["test.gate".into()],
            ..Default::default()
        },
        trust_level: trust,
        ..Default::default()
    };
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    s.svc
        .share_with_min_trust(
            OPERATOR,
            "doc",
            std::slice::from_ref(&id),
            &[Permission::Read],
            None,
            min_trust,
        )
        .await
        .unwrap();
    let task = TaskRequest::new(
        "p",
        steps_input(json!([
            {"context_get": {"id": "doc"}},
            {"tool": {"name": "test.gate", "input": {}}},
            {"context_get": {"id": "doc"}},
        ])),
    );
    let reload = async {
        // The agent is inside its tool call: its first read is decided, its second is not.
        gate.entered.notified().await;
        change(&s, &id).await;
        gate.release.notify_one();
    };
    let (report, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(agent.run(task), reload)
    })
    .await
    .expect("the agent reaches the gate and finishes once released");
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    let probes = out["probes"].as_array().unwrap();
    assert_eq!(probes[1]["ok"], true, "the gate call: {}", probes[1]);
    s.audit.flush().await;
    let reads = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("context/doc".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    (
        (probes[0]["ok"] == true, probes[2]["ok"] == true),
        reads.iter().map(|e| e.reason.clone()).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_during_a_run_decides_the_running_agents_next_call() {
    // Widened while the agent runs: its next read is allowed, by the new policy.
    let (reads, reasons) = read_across_a_reload(TOOLS_ONLY, TOOLS_AND_READS).await;
    assert_eq!(reads, (false, true));
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("default deny"), "{reasons:?}");
    assert!(
        reasons[1].contains("policy `tools-and-reads`"),
        "{reasons:?}"
    );
    // Narrowed while the agent runs: its next read is refused.
    let (reads, reasons) = read_across_a_reload(TOOLS_AND_READS, TOOLS_ONLY).await;
    assert_eq!(reads, (true, false));
    assert!(reasons[1].contains("default deny"), "{reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_applies_to_agents_spawned_after_it() {
    let s = secured(Some(TRUSTED_READS)).await;
    context(&s.svc, "doc").await;
    // A new agent each time, the doc shared with it: only the policies decide.
    let run = async |s: &Secured| super::read_doc(s, true).await["ok"].clone();
    assert_eq!(run(&s).await, false);
    let open: Vec<AccessPolicy> = serde_json::from_value(json!([{
        "id": "open", "rules": [{"effect": "allow", "resources": ["context/*"]}]
    }]))
    .unwrap();
    s.access.set_policies(Some(PolicySet::new(open).unwrap()));
    assert_eq!(run(&s).await, true);
    s.access.set_policies(None);
    assert_eq!(run(&s).await, true, "no policies: the gate is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_change_during_a_run_decides_the_running_agents_next_call() {
    // A share that requires high trust; the agent starts at the default (low).
    let (reads, _) = read_across_a_change(
        None,
        (TrustLevel::Low, Some(TrustLevel::High)),
        async |s, id| {
            s.host
                .update_agent_trust_level(id, TrustLevel::High, "reviewed")
                .unwrap()
        },
    )
    .await;
    assert_eq!(
        reads,
        (false, true),
        "raised while it ran: its next read works"
    );
    // A policy condition on trust, and the level lowered while the agent runs.
    let policy = TRUSTED;
    let (reads, reasons) =
        read_across_a_change(Some(policy), (TrustLevel::Medium, None), async |s, id| {
            s.host
                .update_agent_trust_level(id, TrustLevel::Low, "demoted")
                .unwrap()
        })
        .await;
    assert_eq!(
        reads,
        (true, false),
        "lowered while it ran: its next read is refused"
    );
    assert!(reasons[0].contains("policy `trusted`"), "{reasons:?}");
    assert!(reasons[1].contains("default deny"), "{reasons:?}");
}

/// Labels set on `doc` while the agent runs (the gate remembers its decisions per agent, so
/// the relabel must reach the decision it remembered): narrowed, the next read is refused;
/// widened, it is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabel_during_a_run_decides_the_running_agents_next_call() {
    let unless_secret = r#"
[[policies]]
id = "unless-secret"
[[policies.rules]]
effect = "allow"
resources = ["tool/*", "context/*"]
condition = '!resource.labels.contains("secret")'
"#;
    let if_public = r#"
[[policies]]
id = "if-public"
[[policies.rules]]
effect = "allow"
resources = ["tool/*"]
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
condition = 'resource.labels.contains("public")'
"#;
    // (policy, label set while it ran, the two reads, the reasons they name)
    let cases = [
        (
            unless_secret,
            "secret",
            (true, false),
            ["policy `unless-secret`", "default deny"],
        ),
        (
            if_public,
            "public",
            (false, true),
            ["default deny", "policy `if-public`"],
        ),
    ];
    for (policy, label, expected, named) in cases {
        let (reads, reasons) = read_across_a_change(
            Some(policy),
            (TrustLevel::Low, None),
            async move |s: &Secured, _: &str| {
                s.svc
                    .set_labels(OPERATOR, "doc", &[label.to_string()])
                    .await
                    .unwrap();
            },
        )
        .await;
        assert_eq!(reads, expected, "labelled {label} while it ran");
        assert!(reasons.len() >= 2, "{label}: {reasons:?}");
        for (reason, needle) in reasons.iter().zip(named) {
            assert!(reason.contains(needle), "{label}: {reasons:?}");
        }
    }
}

/// A trust level changed and changed back while the agent runs: each read is decided at the
/// level in force when it is made, never by a decision remembered under another level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_round_trip_during_a_run_is_decided_at_each_level() {
    let policy = TRUSTED;
    // Lowered and raised again: the second read, at medium again, is allowed.
    let (reads, _) = read_across_a_change(
        Some(policy),
        (TrustLevel::Medium, None),
        async |s: &Secured, id: &str| {
            s.host
                .update_agent_trust_level(id, TrustLevel::Low, "demoted")
                .unwrap();
            s.host
                .update_agent_trust_level(id, TrustLevel::Medium, "restored")
                .unwrap();
        },
    )
    .await;
    assert_eq!(reads, (true, true));
}

/// One `worker` reads `x` (not there yet), creates it (so it owns it) and reads it again, under
/// `policy`; returns the decisions audited for the two reads.
async fn read_create_read(policy: &str) -> Vec<AuditDecision> {
    let s = secured(Some(policy)).await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s
        .host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap();
    let id = agent.id().to_string();
    let read = json!({"context_get": {"id": "x"}});
    let steps = json!([read, {"context_create": {"id": "x", "doc": {"a": 1}}}, read]);
    let report = agent.run(TaskRequest::new("p", steps_input(steps))).await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    assert_eq!(out["probes"][1]["ok"], true, "the create: {out}");
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("context/x".into()),
            operation: Some("get".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.decision)
        .collect()
}

/// A context coming into existence changes what policies see of it (its type and owner): a
/// read decided before the guest created it is not the answer after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_created_during_a_run_is_decided_with_its_new_owner() {
    let policy = |condition: &str| {
        format!(
            r#"
[[policies]]
id = "owners"
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["create"]
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["get"]
condition = '{condition}'
"#
        )
    };
    // Denied while it had no owner, allowed once the agent owns it.
    assert_eq!(
        read_create_read(&policy("resource.owner == principal.id")).await,
        [AuditDecision::Deny, AuditDecision::Allow]
    );
    // Allowed while it had no owner (the store then found nothing), refused once it has one.
    assert_eq!(
        read_create_read(&policy(r#"resource.owner == """#)).await,
        [AuditDecision::Allow, AuditDecision::Deny]
    );
}

/// A decision the gate remembers answers for its own request only: reading `doc` twice (the
/// second read answered from the memo) allows neither a subscription to `doc` (another kind,
/// same id), nor a write to it (another action), nor a read of `doc2` (another id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_decision_answers_for_no_other_kind_action_or_id() {
    let s = secured(Some(
        r#"
[[policies]]
id = "reads"
[[policies.rules]]
effect = "allow"
resources = ["context/doc"]
actions = ["get"]
"#,
    ))
    .await;
    context(&s.svc, "doc").await;
    context(&s.svc, "doc2").await;
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let agent = s
        .host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap();
    let agent_id = agent.id().to_string();
    for id in ["doc", "doc2"] {
        s.svc
            .share(
                OPERATOR,
                id,
                std::slice::from_ref(&agent_id),
                &[Permission::Read, Permission::Write],
                None,
            )
            .await
            .unwrap();
    }
    let read = json!({"context_get": {"id": "doc"}});
    let steps = json!([
        read,
        read,
        {"subscribe": "doc"},
        {"context_put": {"id": "doc", "doc": {"n": 2}}},
        {"context_get": {"id": "doc2"}},
        read,
    ]);
    let report = agent.run(TaskRequest::new("p", steps_input(steps))).await;
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    let ok: Vec<bool> = out["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ok"] == true)
        .collect();
    assert_eq!(ok, [true, true, false, false, false, true], "{out}");
    for refused in &out["probes"].as_array().unwrap()[2..5] {
        assert!(
            refused.to_string().contains("default deny"),
            "refused by the policies: {refused}"
        );
    }
    // The three reads, two of them answered from the memo, are audited alike.
    s.audit.flush().await;
    let reads = s
        .audit
        .query(&AuditQuery {
            agent: Some(agent_id),
            resource: Some("context/doc".into()),
            operation: Some("get".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(reads.len(), 3, "{reads:?}");
    for e in &reads {
        assert_eq!(
            (e.decision, e.reason.as_str(), &e.details),
            (AuditDecision::Allow, reads[0].reason.as_str(), &Value::Null)
        );
    }
    assert!(reads[0].reason.contains("policy `reads`"), "{reads:?}");
}
