//! Changes end what they no longer allow, and labels are the host's: a subscription made
//! earlier is refused at the next event a policy change or a trust drop denies; a guest
//! writing `labels` into a document does not change the labels a policy sees.

use super::*;
use qi_guest_artifacts::SUBSCRIBER_COMPONENT;
use qi_host::context::Change;

/// Tool calls and event subscriptions allowed.
const WATCH: &str = r#"
[[policies]]
id = "watch"
[[policies.rules]]
effect = "allow"
resources = ["tool/*", "events/*"]
"#;

/// Tool calls only.
const TOOLS_ONLY: &str = r#"
[[policies]]
id = "tools-only"
[[policies.rules]]
effect = "allow"
resources = ["tool/*"]
"#;

fn policy_set(text: &str) -> PolicySet {
    let file: toml::Value = toml::from_str(text).expect("policy toml");
    PolicySet::new(file["policies"].clone().try_into().expect("policies parse"))
        .expect("policies valid")
}

/// A `subscriber` on `s` watching `doc` (shared for reading, requiring `min_trust`, until
/// `expires_at`) for three updates. Between the operator's updates it runs `first` (after the first one reached the
/// guest) and `second` (after the second did); returns the guest's output and id.
async fn watch_across(
    s: &Secured,
    (min_trust, expires_at): (Option<TrustLevel>, Option<u64>),
    first: impl FnOnce(&Secured, &str),
    second: impl FnOnce(&Secured, &str),
) -> (Value, String) {
    context(&s.svc, "doc").await;
    let component = s.host.load(SUBSCRIBER_COMPONENT).unwrap();
    let mut spec = SubAgentSpecification::default();
    spec.security_constraints.allowed_tools = vec!["test.signal".into()];
    let agent = s.host.spawn(&component, spec).await.unwrap();
    let id = agent.id().to_string();
    s.svc
        .share_with_min_trust(
            OPERATOR,
            "doc",
            std::slice::from_ref(&id),
            &[Permission::Read],
            expires_at,
            min_trust,
        )
        .await
        .unwrap();
    let key = crate::common::unique_key("sharing-changes");
    let watching = tokio::spawn(agent.run(TaskRequest::new(
        "watch",
        json!({"context": "doc", "expect": 3, "timeout_ms": 60_000, "signal": key}),
    )));
    assert_eq!(crate::common::next_signal(&key).await["subscribed"], true);
    let write = |version: u64| {
        s.svc.write(
            OPERATOR,
            "doc",
            Change::Merge(json!({"n": version})),
            Some(version),
        )
    };
    write(1).await.unwrap();
    assert!(crate::common::next_signal(&key).await["seq"].is_u64());
    first(s, &id);
    write(2).await.unwrap();
    assert!(crate::common::next_signal(&key).await["seq"].is_u64());
    second(s, &id);
    write(3).await.unwrap();
    let report = crate::common::hang_guard("the watcher's end", watching)
        .await
        .unwrap();
    let out = report
        .output
        .clone()
        .unwrap_or_else(|| panic!("{report:?}"));
    (out, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_ends_a_subscription_at_the_next_event_it_denies() {
    let s = secured_with_tools(Some(WATCH), crate::common::test_tools()).await;
    let (out, id) = watch_across(
        &s,
        (None, None),
        // Replaced by policies that still allow it: decided again, still delivered.
        |s, _| s.access.set_policies(Some(policy_set(WATCH))),
        // Replaced by policies that deny it: the next event ends the subscription.
        |s, _| s.access.set_policies(Some(policy_set(TOOLS_ONLY))),
    )
    .await;
    assert_eq!(out["received"], 2, "{out}");
    let e = out["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("access-denied"), "{out}");
    assert!(e.contains("policies no longer allow"), "{out}");
    s.audit.flush().await;
    let decided: Vec<(AuditDecision, String)> = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            resource: Some("events/doc".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.decision, e.reason))
        .collect();
    // At subscribe, after the first change, after the second: three decisions, not one per
    // event.
    assert_eq!(decided.len(), 3, "{decided:?}");
    assert_eq!(decided[2].0, AuditDecision::Deny, "{decided:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_drop_below_a_shares_requirement_ends_a_subscription() {
    let s = secured_with_tools(None, crate::common::test_tools()).await;
    let (out, _) = watch_across(
        &s,
        (Some(TrustLevel::Low), None),
        // Raised: still meets the requirement.
        |s, id| {
            s.host
                .update_agent_trust_level(id, TrustLevel::Medium, "test")
                .unwrap()
        },
        // Dropped below it.
        |s, id| {
            s.host
                .update_agent_trust_level(id, TrustLevel::None, "test")
                .unwrap()
        },
    )
    .await;
    assert_eq!(out["received"], 2, "{out}");
    let e = out["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("access-denied"), "{out}");
    assert!(e.contains("requires trust level low"), "{out}");
}

/// Red team: the end of a subscription by the sharing rules (here a revoked share) is a
/// refusal, audited like any other, with or without a policy file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_a_subscription_ended_by_a_revoke_is_audited() {
    let s = secured_with_tools(None, crate::common::test_tools()).await;
    let (out, id) = watch_across(
        &s,
        (None, None),
        |_, _| {},
        |s, id| {
            let (svc, id) = (s.svc.clone(), id.to_string());
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move {
                    svc.revoke(OPERATOR, "doc", std::slice::from_ref(&id))
                        .await
                        .unwrap()
                })
            })
        },
    )
    .await;
    assert_eq!(out["received"], 2, "{out}");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("access-denied"),
        "{out}"
    );
    s.audit.flush().await;
    let denied = s
        .audit
        .query(&AuditQuery {
            agent: Some(id),
            decision: Some(AuditDecision::Deny),
            resource: Some("context/doc".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(denied.len(), 1, "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_expiring_ends_a_subscription_at_its_next_event() {
    // The context store's clock is the test's.
    let clock = Arc::new(qi_host::context::ManualClock::new(1_000_000));
    let store = qi_host::Store::open(qi_host::StoreConfig::in_memory()).unwrap();
    let bus = qi_host::EventBus::new(store.clone(), qi_host::EventBusConfig::default())
        .await
        .unwrap();
    let svc = ContextService::open(
        store.clone(),
        bus,
        clock.clone(),
        qi_host::context::ContextConfig::default(),
    )
    .await
    .unwrap();
    let audit = AuditLog::open(store).await.unwrap();
    let access = Arc::new(AccessControl::new(None, Some(audit.clone())));
    let s = Secured {
        host: crate::common::new_host(4)
            .with_context(svc.clone())
            .with_access(access.clone()),
        svc,
        access,
        audit,
    };
    let (out, _) = watch_across(
        &s,
        (None, Some(1_000_000 + 1_000)),
        // One millisecond before the expiry: still delivered.
        |_, _| clock.advance(999),
        // At the expiry.
        |_, _| clock.advance(1),
    )
    .await;
    assert_eq!(out["received"], 2, "{out}");
    let e = out["error"].as_str().unwrap_or_default();
    assert!(e.starts_with("access-denied"), "{out}");
    assert!(e.contains("expired"), "{out}");
}

/// Context writes allowed; reads only of contexts labelled `public`.
const PUBLIC_READS: &str = r#"
[[policies]]
id = "public-reads"
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["put"]
[[policies.rules]]
effect = "allow"
resources = ["context/*"]
actions = ["get"]
condition = 'resource.labels.contains("public")'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_host_kept_and_a_documents_labels_field_changes_nothing() {
    let s = secured(Some(PUBLIC_READS)).await;
    // Manual, so that the guest's write needs no base version (it is based on the current one).
    s.svc
        .create(
            OPERATOR,
            NewContext {
                id: Some("doc".into()),
                context_type: "notes".into(),
                strategy: qi_host::context::SyncStrategy::Manual,
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
    let component = s.host.load(WORKER_COMPONENT).unwrap();
    let spawn_sharing = || async {
        let a = s
            .host
            .spawn(&component, SubAgentSpecification::default())
            .await
            .unwrap();
        s.svc
            .share(
                OPERATOR,
                "doc",
                &[a.id().to_string()],
                &[Permission::Read, Permission::Write],
                None,
            )
            .await
            .unwrap();
        a
    };
    // The guest writes `labels` into the document: the write is allowed, the read is not.
    let writer = spawn_sharing().await;
    let writer_id = writer.id().to_string();
    let r = writer
        .run(TaskRequest::new(
            "p",
            steps_input(json!([
                {"context_put": {"id": "doc", "doc": {"labels": ["public"]}}},
                {"context_get": {"id": "doc"}},
            ])),
        ))
        .await;
    let out = r.output.clone().unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(out["probes"][0]["ok"], true, "{out}");
    assert_eq!(out["probes"][1]["ok"], false, "{out}");
    let doc = s.svc.get(OPERATOR, "doc").await.unwrap().doc;
    assert_eq!(doc["labels"], json!(["public"]), "the document says public");
    assert_eq!(s.svc.labels("doc"), Some(Vec::new()), "the host does not");

    // Only the operator relabels; an agent's attempt is refused and audited.
    let e = s
        .svc
        .set_labels(&writer_id, "doc", &["public".into()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("qi-host context label"), "{e}");
    let e = s
        .svc
        .set_labels(OPERATOR, "doc", &["no spaces".into()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("invalid `labels`"), "{e}");
    // Labelled by the operator: the same read is allowed.
    s.svc
        .set_labels(OPERATOR, "doc", &["public".into()])
        .await
        .unwrap();
    let reader = spawn_sharing().await;
    let r = reader
        .run(TaskRequest::new(
            "p",
            steps_input(json!([{"context_get": {"id": "doc"}}])),
        ))
        .await;
    assert_eq!(r.output.unwrap()["probes"][0]["ok"], true);

    s.audit.flush().await;
    let labels: Vec<(String, AuditDecision)> = s
        .audit
        .query(&AuditQuery {
            resource: Some("context/doc".into()),
            operation: Some("label".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.agent, e.decision))
        .collect();
    assert_eq!(
        labels,
        [
            (writer_id, AuditDecision::Deny),
            (OPERATOR.to_string(), AuditDecision::Deny),
            (OPERATOR.to_string(), AuditDecision::Record),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_persist_and_the_operator_sets_them_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let config = || qi_host::StoreConfig::at(dir.path());
    let svc = crate::common::context_service(config()).await.unwrap();
    svc.create(
        OPERATOR,
        NewContext {
            id: Some("doc".into()),
            context_type: "notes".into(),
            labels: vec!["b".into(), "a".into(), "b".into()],
            ..NewContext::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(svc.labels("doc"), Some(vec!["a".into(), "b".into()]));
    drop(svc);
    let data = dir.path().to_str().unwrap();
    let out = crate::common::qi_host_output(&[
        "context",
        "label",
        "doc",
        "public",
        "team:x",
        "--data-dir",
        data,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("doc: labels public, team:x"),
        "{out:?}"
    );
    // Just past the rules: refused, naming the field, nothing changed.
    let out =
        crate::common::qi_host_output(&["context", "label", "doc", "a/b", "--data-dir", data]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`labels`"),
        "{out:?}"
    );
    let svc = crate::common::context_service(config()).await.unwrap();
    assert_eq!(
        svc.labels("doc"),
        Some(vec!["public".into(), "team:x".into()])
    );
    let audit = AuditLog::open(svc.store().clone()).await.unwrap();
    let entries = audit
        .query(&AuditQuery {
            operation: Some("label".into()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let decisions: Vec<AuditDecision> = entries.iter().map(|e| e.decision).collect();
    assert_eq!(decisions, [AuditDecision::Record, AuditDecision::Deny]);
}
