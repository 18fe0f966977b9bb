//! README (encryption at rest): with a master key, "conflict and resolution events then name the
//! agents and fields, not the values". Checked on the events themselves, as a subscriber or
//! `events tail` would read them, not only on the bytes at rest.

use qi_host::StoreConfig;
use qi_host::context::{
    AgentCapabilities, Change, ContextService, NewContext, Permission, ResolveChoice, SyncStrategy,
};
use qi_host::events::{EventFilter, EventType};
use qi_host::store::crypto::MasterKey;
use serde_json::json;

const ALICE_SECRET: &str = "ALICE-VALUE-5e1d";
const BOB_SECRET: &str = "BOB-VALUE-a07c";

async fn conflict_then_resolve(svc: &ContextService) {
    for a in ["alice", "bob"] {
        svc.register_agent(a, AgentCapabilities::default())
            .await
            .unwrap();
    }
    svc.create(
        "alice",
        NewContext {
            id: Some("plan".into()),
            context_type: "notes".into(),
            doc: json!({"step": "draft"}),
            strategy: SyncStrategy::Manual,
            ..NewContext::default()
        },
    )
    .await
    .unwrap();
    svc.share(
        "alice",
        "plan",
        &["bob".into()],
        &[Permission::Read, Permission::Write],
        None,
    )
    .await
    .unwrap();
    // Both write `step` from version 1: a manual context holds both values in conflict.
    svc.write(
        "alice",
        "plan",
        Change::Merge(json!({"step": ALICE_SECRET})),
        Some(1),
    )
    .await
    .unwrap();
    let _ = svc
        .write(
            "bob",
            "plan",
            Change::Merge(json!({"step": BOB_SECRET})),
            Some(1),
        )
        .await;
    assert!(
        !svc.conflicts("alice", "plan").await.unwrap().is_empty(),
        "the race produced no conflict"
    );
    svc.resolve("alice", "plan", ResolveChoice::Agent("bob".into()))
        .await
        .unwrap();
}

/// The `conflict` and `resolved` events of `plan`, as JSON text.
async fn conflict_events(svc: &ContextService) -> (String, String) {
    let text = |t: EventType| async move {
        let filter = EventFilter {
            event_types: vec![t],
            context_ids: vec!["plan".into()],
            ..EventFilter::default()
        };
        let events = svc.bus().history(&filter, None, 100).await.unwrap();
        assert!(!events.is_empty(), "no {t:?} event");
        serde_json::to_string(&events).unwrap()
    };
    (
        text(EventType::Conflict).await,
        text(EventType::Resolved).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_key_conflict_and_resolution_events_name_agents_and_fields_not_values() {
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::common::context_service(StoreConfig {
        master_key: Some(MasterKey::generate()),
        ..StoreConfig::at(dir.path())
    })
    .await
    .unwrap();
    conflict_then_resolve(&svc).await;
    let (conflict, resolved) = conflict_events(&svc).await;
    for (kind, text) in [("conflict", &conflict), ("resolved", &resolved)] {
        assert!(
            text.contains("\"/step\""),
            "{kind} event names no field: {text}"
        );
        for secret in [ALICE_SECRET, BOB_SECRET] {
            assert!(
                !text.contains(secret),
                "{kind} event carries a value: {text}"
            );
        }
    }
    assert!(
        conflict.contains("alice") && conflict.contains("bob"),
        "the conflict event names no agents: {conflict}"
    );
}

/// The pair of the test above: without a master key the resolution event carries the chosen
/// value, so the check above looks where the values would be. A conflict event never copies
/// values, key or not: it refers to its conflict record (`id`), which holds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_key_the_same_events_carry_the_values() {
    let svc = crate::common::in_memory_context().await;
    conflict_then_resolve(&svc).await;
    let (conflict, resolved) = conflict_events(&svc).await;
    assert!(resolved.contains(BOB_SECRET), "{resolved}");
    for secret in [ALICE_SECRET, BOB_SECRET] {
        assert!(!conflict.contains(secret), "{conflict}");
    }
    let records = svc.conflicts("alice", "plan").await.unwrap();
    let events: Vec<serde_json::Value> = serde_json::from_str(&conflict).unwrap();
    for event in &events {
        let id = event["data"]["id"]
            .as_u64()
            .expect("the event names its record");
        let record = records
            .iter()
            .find(|c| c.id == id)
            .expect("the record exists");
        let values = serde_json::to_string(&record.agent_values).unwrap();
        assert!(
            values.contains(ALICE_SECRET) || values.contains(BOB_SECRET),
            "{record:?}"
        );
    }
}
