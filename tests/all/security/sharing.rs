//! Sharing without escalation, through a real guest (`worker`'s `share` and `revoke` probes):
//! no share to oneself, a delegated share never outlives or outranks the sharer's own grant,
//! and only the owner (or the operator) changes grants it did not make. Every grant change and
//! every refusal is in the audit log.

use super::*;

/// A worker on `s`, spawned (so registered) but not run yet.
async fn worker(s: &Secured) -> qi_host::SubAgent {
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    s.host
        .spawn(&component, SubAgentSpecification::default())
        .await
        .unwrap()
}

/// Runs `agent` on `steps` and returns its probes.
async fn probes(agent: qi_host::SubAgent, steps: Value) -> Vec<Value> {
    let r = agent.run(TaskRequest::new("p", steps_input(steps))).await;
    let out = r.output.clone().unwrap_or_else(|| panic!("{r:?}"));
    out["probes"].as_array().unwrap().clone()
}

/// Asserts that `p` is an `access-denied` refusal whose message contains every one of `words`.
fn refused(p: &Value, words: &[&str]) {
    assert_eq!(p["ok"], false, "{p}");
    let e = p["error"].as_str().unwrap();
    assert!(e.starts_with("access-denied"), "{p}");
    for w in words {
        assert!(e.contains(w), "`{w}` missing: {p}");
    }
}

/// Audit entries on `context/<context>` by `agent` for `operation`, with `decision`.
async fn audited(
    s: &Secured,
    agent: &str,
    context: &str,
    operation: &str,
    decision: AuditDecision,
) -> Vec<qi_host::audit::AuditEntry> {
    s.audit.flush().await;
    s.audit
        .query(&AuditQuery {
            agent: Some(agent.to_string()),
            resource: Some(format!("context/{context}")),
            operation: Some(operation.to_string()),
            decision: Some(decision),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
}

/// The grant `agent` holds on `context`, if any.
fn grant(s: &Secured, context: &str, agent: &str) -> Option<qi_host::context::Share> {
    s.svc
        .grants(context)
        .into_iter()
        .find(|g| g.agent_id == agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cannot_share_a_context_with_itself() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    let (a, b) = (worker(&s).await, worker(&s).await);
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    s.svc
        .share(
            OPERATOR,
            "doc",
            std::slice::from_ref(&a_id),
            &[Permission::Read, Permission::Share],
            Some(s.svc.now_ms() + 3_600_000),
        )
        .await
        .unwrap();
    let p = probes(
        a,
        json!([
            {"share": {"id": "doc", "agents": [a_id], "permissions": ["read"]}},
            {"share": {"id": "doc", "agents": [a_id], "permissions": ["read"], "expires_in_ms": 60_000}},
            {"share": {"id": "doc", "agents": [a_id, b_id], "permissions": ["read"]}},
            // Just inside: another agent.
            {"share": {"id": "doc", "agents": [b_id], "permissions": ["read"]}},
        ]),
    )
    .await;
    for p in &p[..3] {
        refused(p, &["cannot share a context with itself", "ask the owner"]);
    }
    assert_eq!(p[3]["ok"], true, "{}", p[3]);
    assert_eq!(grant(&s, "doc", &b_id).unwrap().granted_by, a_id);
    // The refusals and the grant are audited, by the agent that asked.
    assert_eq!(
        audited(&s, &a_id, "doc", "share", AuditDecision::Deny)
            .await
            .len(),
        3
    );
    let made = audited(&s, &a_id, "doc", "share", AuditDecision::Record).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].details["target"], b_id.as_str());
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_share_is_capped_at_the_sharers_expiry_and_inherits_its_trust() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    let a = worker(&s).await;
    let a_id = a.id().to_string();
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(worker(&s).await);
    }
    let ids: Vec<String> = others.iter().map(|o| o.id().to_string()).collect();
    let limit = s.svc.now_ms() + 3_600_000;
    s.svc
        .share_with_min_trust(
            OPERATOR,
            "doc",
            std::slice::from_ref(&a_id),
            &[Permission::Read, Permission::Share],
            Some(limit),
            Some(TrustLevel::Medium),
        )
        .await
        .unwrap();
    // The sharer meets its own requirement.
    s.host
        .update_agent_trust_level(&a_id, TrustLevel::Medium, "test")
        .unwrap();
    // The stricter trust requirement of the two wins (the host API, acting as the sharer,
    // while it is registered).
    let r = s
        .svc
        .share_with_min_trust(
            &a_id,
            "doc",
            std::slice::from_ref(&ids[3]),
            &[Permission::Read],
            None,
            Some(TrustLevel::High),
        )
        .await
        .unwrap();
    assert_eq!(r.expires_at, Some(limit));
    let g = |i: usize| grant(&s, "doc", &ids[i]).unwrap();
    assert_eq!(g(3).min_trust, Some(TrustLevel::High), "the stricter wins");
    // Through the guest: no expiry asked, a later one, an earlier one.
    let before = s.svc.now_ms();
    let p = probes(
        a,
        json!([
            {"share": {"id": "doc", "agents": [ids[0]], "permissions": ["read"]}},
            {"share": {"id": "doc", "agents": [ids[1]], "permissions": ["read"], "expires_in_ms": 7_200_000}},
            {"share": {"id": "doc", "agents": [ids[2]], "permissions": ["read"], "expires_in_ms": 60_000}},
        ]),
    )
    .await;
    assert!(p.iter().all(|p| p["ok"] == true), "{p:?}");
    assert_eq!(
        g(0).expires_at,
        Some(limit),
        "no expiry: capped at the sharer's"
    );
    assert_eq!(g(1).expires_at, Some(limit), "a later one: capped");
    let early = g(2).expires_at.unwrap();
    assert!(
        early < limit && early >= before + 60_000,
        "an earlier one is kept"
    );
    for i in 0..3 {
        assert_eq!(g(i).min_trust, Some(TrustLevel::Medium), "inherited");
    }
    let made = audited(&s, &a_id, "doc", "share", AuditDecision::Record).await;
    let capped: Vec<bool> = made
        .iter()
        .map(|e| e.details["expiryCapped"] == true)
        .collect();
    assert_eq!(capped, [true, true, true, false], "{made:?}");
    assert!(made[1].reason.contains("expiry capped"), "{:?}", made[1]);

    // The inherited requirement is enforced: the receiver (trust low) cannot read.
    let reader = others.remove(0);
    let p = probes(reader, json!([{"context_get": {"id": "doc"}}])).await;
    refused(&p[0], &["requires trust level medium"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_expiry_exactly_at_the_sharers_is_kept_one_past_is_capped() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    let (a, b) = (worker(&s).await, worker(&s).await);
    let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
    let limit = s.svc.now_ms() + 3_600_000;
    s.svc
        .share(
            OPERATOR,
            "doc",
            std::slice::from_ref(&a_id),
            &[Permission::Read, Permission::Share],
            Some(limit),
        )
        .await
        .unwrap();
    for (asked, capped) in [(limit, false), (limit + 1, true)] {
        let r = s
            .svc
            .share(
                &a_id,
                "doc",
                std::slice::from_ref(&b_id),
                &[Permission::Read],
                Some(asked),
            )
            .await
            .unwrap();
        assert_eq!(r.expires_at, Some(limit));
        let made = audited(&s, &a_id, "doc", "share", AuditDecision::Record).await;
        assert_eq!(made.last().unwrap().details["expiryCapped"], capped);
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_changes_grants_it_did_not_make() {
    let s = secured(None).await;
    let owner = worker(&s).await;
    let (a, b, c) = (worker(&s).await, worker(&s).await, worker(&s).await);
    let (owner_id, a_id, b_id, c_id) = (
        owner.id().to_string(),
        a.id().to_string(),
        b.id().to_string(),
        c.id().to_string(),
    );
    s.svc
        .create(
            &owner_id,
            NewContext {
                id: Some("doc".into()),
                context_type: "notes".into(),
                doc: json!({"n": 1}),
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
    let all = [Permission::Read, Permission::Write, Permission::Share];
    s.svc
        .share(&owner_id, "doc", std::slice::from_ref(&a_id), &all, None)
        .await
        .unwrap();
    s.svc
        .share(
            &owner_id,
            "doc",
            std::slice::from_ref(&c_id),
            &[Permission::Read],
            None,
        )
        .await
        .unwrap();
    let p = probes(
        a,
        json!([
            // The owner's grant of c: neither changed nor revoked by a.
            {"share": {"id": "doc", "agents": [c_id], "permissions": ["read", "write"]}},
            {"revoke": {"id": "doc", "agents": [c_id]}},
            // Its own grant of b: made, changed, revoked.
            {"share": {"id": "doc", "agents": [b_id], "permissions": ["read"]}},
            {"share": {"id": "doc", "agents": [b_id], "permissions": ["read", "write"]}},
            {"revoke": {"id": "doc", "agents": [b_id]}},
            {"share": {"id": "doc", "agents": [b_id], "permissions": ["read"]}},
        ]),
    )
    .await;
    refused(
        &p[0],
        &[&format!("made by `{owner_id}`"), "only the owner", "ask"],
    );
    refused(
        &p[1],
        &["may revoke only grants it made", &format!("`{owner_id}`")],
    );
    for p in &p[2..] {
        assert_eq!(p["ok"], true, "{p}");
    }
    let c_grant = grant(&s, "doc", &c_id).unwrap();
    assert_eq!(
        (c_grant.permissions, c_grant.granted_by.as_str()),
        (vec![Permission::Read], owner_id.as_str())
    );
    assert_eq!(grant(&s, "doc", &b_id).unwrap().granted_by, a_id);
    // The owner, through its guest, revokes the grant a made.
    let p = probes(owner, json!([{"revoke": {"id": "doc", "agents": [b_id]}}])).await;
    assert_eq!(p[0]["ok"], true, "{}", p[0]);
    assert!(grant(&s, "doc", &b_id).is_none());

    assert_eq!(
        audited(&s, &a_id, "doc", "share", AuditDecision::Deny)
            .await
            .len(),
        1
    );
    assert_eq!(
        audited(&s, &a_id, "doc", "revoke", AuditDecision::Deny)
            .await
            .len(),
        1
    );
    assert_eq!(
        audited(&s, &a_id, "doc", "revoke", AuditDecision::Record)
            .await
            .len(),
        1
    );
    let by_owner = audited(&s, &owner_id, "doc", "revoke", AuditDecision::Record).await;
    assert_eq!(by_owner.len(), 1);
    assert_eq!(by_owner[0].details["grantedBy"], a_id.as_str());
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_grant_changes_and_grants_removed_with_an_agent_are_audited() {
    let s = secured(None).await;
    context(&s.svc, "doc").await;
    s.svc
        .register_agent("x", qi_host::context::AgentCapabilities::default())
        .await
        .unwrap();
    let x = ["x".to_string()];
    s.svc
        .share(OPERATOR, "doc", &x, &[Permission::Read], None)
        .await
        .unwrap();
    s.svc.revoke(OPERATOR, "doc", &x).await.unwrap();
    s.svc
        .share(OPERATOR, "doc", &x, &[Permission::Read], None)
        .await
        .unwrap();
    // A refused operator share (an unknown agent) is audited too.
    assert!(
        s.svc
            .share(
                OPERATOR,
                "doc",
                &["nobody".into()],
                &[Permission::Read],
                None
            )
            .await
            .is_err()
    );
    s.svc.unregister_agent("x").await.unwrap();
    let ops = |d| audited(&s, OPERATOR, "doc", "*", d);
    let made: Vec<String> = ops(AuditDecision::Record)
        .await
        .iter()
        .map(|e| e.operation.clone())
        .collect();
    assert_eq!(made, ["share", "revoke", "share", "unregister"]);
    let denied = ops(AuditDecision::Deny).await;
    assert_eq!(denied.len(), 1);
    assert!(denied[0].reason.contains("nobody"), "{denied:?}");
    assert!(s.audit.verify().await.unwrap().first_broken.is_none());
}
