//! Context store tests: every strategy under real concurrency, the permission matrix,
//! history and rollback, merge, batch sync, heartbeats, schema checks, determinism.

use super::*;
use crate::events::{EventBus, EventBusConfig, EventType, SubscribeFrom};
use crate::store::Store;
use crate::store::StoreConfig;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

mod access;
mod bounds;
mod cold;
mod conflicts;
mod create_lead_redteam;
mod hot_tier;
mod leaders;
mod lifecycle;
mod matrix;
mod prepared;
mod visibility;

struct Fixture {
    svc: ContextService,
    clock: Arc<ManualClock>,
}

async fn fixture_at(config: StoreConfig) -> Fixture {
    let store = Store::open(config).unwrap();
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let svc = ContextService::open(store, bus, clock.clone(), ContextConfig::default())
        .await
        .unwrap();
    Fixture { svc, clock }
}

async fn fixture() -> Fixture {
    fixture_at(StoreConfig::in_memory()).await
}

async fn agents(svc: &ContextService, names: &[&str]) {
    for n in names {
        svc.register_agent(n, AgentCapabilities::default())
            .await
            .unwrap();
    }
}

async fn ctx(svc: &ContextService, owner: &str, id: &str, strategy: SyncStrategy, doc: Value) {
    svc.create(
        owner,
        NewContext {
            id: Some(id.into()),
            context_type: "notes".into(),
            doc,
            strategy,
            ..Default::default()
        },
    )
    .await
    .unwrap();
}

async fn share_all(svc: &ContextService, id: &str, owner: &str, targets: &[&str]) {
    let t: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
    svc.share(owner, id, &t, &[Permission::Read, Permission::Write], None)
        .await
        .unwrap();
}

fn writers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i}")).collect()
}

/// Registers `owner` and `n` writers `w0..`, creates context `c` owned by `owner` with
/// `strategy` and `doc`, and shares it (read, write) with every writer.
async fn writers_on_shared_context(
    f: &Fixture,
    n: usize,
    strategy: SyncStrategy,
    doc: Value,
) -> Vec<String> {
    let ws = writers(n);
    agents(&f.svc, &["owner"]).await;
    for w in &ws {
        f.svc
            .register_agent(w, AgentCapabilities::default())
            .await
            .unwrap();
    }
    ctx(&f.svc, "owner", "c", strategy, doc).await;
    let names: Vec<&str> = ws.iter().map(String::as_str).collect();
    share_all(&f.svc, "c", "owner", &names).await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_refuses_stale_writes_and_loses_no_acknowledged_one() {
    let f = fixture().await;
    let ws = writers_on_shared_context(&f, 8, SyncStrategy::Strong, json!({"n": 0})).await;

    // Each writer increments the counter 20 times with compare-and-set retries.
    let mut tasks = Vec::new();
    for w in ws.clone() {
        let svc = f.svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut stale = 0;
            for _ in 0..20 {
                loop {
                    let cur = svc.get(&w, "c").await.unwrap();
                    let n = cur.doc["n"].as_u64().unwrap();
                    match svc
                        .write(&w, "c", Change::Put(json!({"n": n + 1})), Some(cur.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(ContextError::Refused {
                            refusal: Refusal::Stale { current, .. },
                            conflict,
                            ..
                        }) => {
                            assert!(current > cur.version);
                            assert_eq!(
                                conflict.unwrap().conflict_type,
                                ConflictType::ConcurrentUpdate
                            );
                            stale += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            stale
        }));
    }
    let mut stale_total = 0;
    for t in tasks {
        stale_total += t.await.unwrap();
    }
    let end = f.svc.get("owner", "c").await.unwrap();
    assert_eq!(end.doc["n"], 160, "every acknowledged increment is there");
    assert_eq!(end.version, 161);
    // Every refused write was reported exactly once.
    let conflicts = f.svc.conflicts("owner", "c").await.unwrap();
    assert_eq!(conflicts.len(), stale_total);
    // However the writers interleaved, a write based on an old version is refused, naming
    // the current one, and changes nothing.
    match f
        .svc
        .write("w0", "c", Change::Put(json!({"n": 0})), Some(160))
        .await
    {
        Err(ContextError::Refused {
            refusal: Refusal::Stale { current: 161, .. },
            ..
        }) => {}
        other => panic!("a stale write: {other:?}"),
    }
    assert_eq!(f.svc.get("owner", "c").await.unwrap().doc["n"], 160);
    // A strong write without a base version is refused with a clear error.
    let err = f
        .svc
        .write("w0", "c", Change::Put(json!({})), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`baseVersion` is required"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_merges_different_fields_and_keeps_losing_values() {
    let f = fixture().await;
    let ws =
        writers_on_shared_context(&f, 16, SyncStrategy::Eventual, json!({"shared": "initial"}))
            .await;

    // Every writer writes its own field 10 times and the shared field once, all based on
    // version 1.
    let mut tasks = Vec::new();
    for w in ws.clone() {
        let svc = f.svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10 {
                let r = svc
                    .write(
                        &w,
                        "c",
                        Change::Pointer(vec![PointerOp::Set {
                            path: format!("/{w}"),
                            value: json!(i),
                        }]),
                        Some(1),
                    )
                    .await
                    .unwrap();
                acked.push(r.version);
            }
            svc.write(&w, "c", Change::Merge(json!({"shared": w})), Some(1))
                .await
                .unwrap();
            acked
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let end = f.svc.get("owner", "c").await.unwrap();
    for w in &ws {
        assert_eq!(
            end.doc[w.as_str()],
            9,
            "writer {w}'s last write to its own field survived"
        );
    }
    // The shared field: last writer wins by HLC, and every other value is kept in a conflict.
    let conflicts = f.svc.conflicts("owner", "c").await.unwrap();
    let shared: Vec<_> = conflicts.iter().filter(|c| c.field == "/shared").collect();
    assert_eq!(
        shared.len(),
        15,
        "one conflict per concurrent writer after the first"
    );
    let winner = end.doc["shared"].as_str().unwrap().to_string();
    let mut seen: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for c in &shared {
        assert_eq!(
            c.resolution.as_ref().unwrap().strategy,
            ConflictResolution::LastWriteWins
        );
        for v in c.agent_values.values() {
            seen.insert(v.as_str().unwrap().to_string());
        }
    }
    for w in &ws {
        assert!(seen.contains(w), "value of {w} kept in a conflict record");
    }
    assert!(seen.contains(&winner));
    // Own-field writes by the same writer never conflict with each other.
    assert!(conflicts.iter().all(|c| c.field == "/shared"));
}

async fn run_script(strategy: SyncStrategy) -> (Value, Vec<Conflict>) {
    let f = fixture().await;
    agents(&f.svc, &["a", "b", "c"]).await;
    ctx(&f.svc, "a", "x", strategy, json!({"k": 0, "m": {"p": 1}})).await;
    share_all(&f.svc, "x", "a", &["b", "c"]).await;
    let script: &[(&str, Value)] = &[
        ("b", json!({"k": 1})),
        ("c", json!({"k": 2, "m": {"q": 2}})),
        ("a", json!({"m": {"p": 3}})),
    ];
    for (agent, patch) in script {
        f.clock.advance(7);
        let _ = f
            .svc
            .write(agent, "x", Change::Merge(patch.clone()), Some(1))
            .await;
    }
    let doc = f.svc.get("a", "x").await.unwrap().doc;
    let mut conflicts = f.svc.conflicts("a", "x").await.unwrap();
    for c in &mut conflicts {
        c.id = 0;
    }
    (doc, conflicts)
}

#[tokio::test]
async fn results_are_deterministic_given_the_same_inputs_and_clocks() {
    for strategy in [
        SyncStrategy::Eventual,
        SyncStrategy::Causal,
        SyncStrategy::Manual,
    ] {
        let one = run_script(strategy).await;
        let two = run_script(strategy).await;
        assert_eq!(one, two, "{strategy:?}");
    }
    let (doc, conflicts) = run_script(SyncStrategy::Eventual).await;
    assert_eq!(doc, json!({"k": 2, "m": {"p": 3, "q": 2}}));
    assert_eq!(conflicts.len(), 1);
    assert_eq!(
        conflicts[0].agent_values,
        BTreeMap::from([("b".to_string(), json!(1)), ("c".to_string(), json!(2))])
    );
}

#[tokio::test]
async fn causal_needs_what_the_writer_observed_and_resolves_as_configured() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    f.svc
        .create(
            "a",
            NewContext {
                id: Some("x".into()),
                context_type: "t".into(),
                doc: json!({"cfg": {"x": 1}}),
                strategy: SyncStrategy::Causal,
                resolution: ConflictResolution::Merge,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    share_all(&f.svc, "x", "a", &["b"]).await;
    let err = f
        .svc
        .write("b", "x", Change::Merge(json!({"cfg": {"y": 2}})), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("`baseVersion` is required for causal"),
        "{err}"
    );
    let err = f
        .svc
        .write("b", "x", Change::Merge(json!({"cfg": {"y": 2}})), Some(9))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ahead of the context"), "{err}");
    f.svc
        .write(
            "a",
            "x",
            Change::Put(json!({"cfg": {"x": 1, "z": 3}})),
            Some(1),
        )
        .await
        .unwrap();
    // b did not see a's change: the same field conflicts, and merge keeps both sides.
    let r = f
        .svc
        .write(
            "b",
            "x",
            Change::Put(json!({"cfg": {"x": 1, "y": 2}})),
            Some(1),
        )
        .await
        .unwrap();
    let doc = f.svc.get("a", "x").await.unwrap().doc;
    assert_eq!(doc, json!({"cfg": {"x": 1, "y": 2, "z": 3}}));
    // Different fields inside `cfg`: nothing to resolve.
    assert_eq!(r.conflicts, []);
    // The same field from the same observed version: a conflict, resolved by merge.
    let v = f.svc.get("a", "x").await.unwrap().version;
    let mut outcomes = Vec::new();
    for (agent, x) in [("a", 10), ("b", 20)] {
        let r = f
            .svc
            .write(agent, "x", Change::Merge(json!({"cfg": {"x": x}})), Some(v))
            .await
            .unwrap();
        outcomes.push(r.conflicts);
    }
    assert_eq!(outcomes[0], [], "the first writer saw the current version");
    let conflict = &outcomes[1][0];
    assert_eq!(outcomes[1].len(), 1);
    assert_eq!(conflict.field, "/cfg/x");
    assert_eq!(conflict.conflict_type, ConflictType::FieldModification);
    assert_eq!(
        conflict.agent_values,
        BTreeMap::from([("a".to_string(), json!(10)), ("b".to_string(), json!(20))])
    );
    let outcome = conflict.resolution.as_ref().unwrap();
    assert_eq!(outcome.strategy, ConflictResolution::Merge);
    assert_eq!(
        f.svc.get("a", "x").await.unwrap().doc["cfg"]["x"],
        outcome.resolved_value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_holds_every_competing_value_until_resolved() {
    let f = fixture().await;
    let ws = writers_on_shared_context(
        &f,
        5,
        SyncStrategy::Manual,
        json!({"decision": "none", "other": 0}),
    )
    .await;
    let mut tasks = Vec::new();
    for w in ws.clone() {
        let svc = f.svc.clone();
        tasks.push(tokio::spawn(async move {
            svc.write(
                &w,
                "c",
                Change::Merge(json!({"decision": format!("by-{w}")})),
                Some(1),
            )
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let view = f.svc.get("owner", "c").await.unwrap();
    assert_eq!(view.status, ContextStatus::Conflict);
    let pending = view.pending.unwrap();
    let values = &pending.fields["/decision"];
    for w in &ws {
        assert!(
            values.values().any(|v| v == &json!(format!("by-{w}"))),
            "{w}'s value is held"
        );
    }
    // Writes elsewhere wait for the resolution.
    let err = f
        .svc
        .write(
            "w0",
            "c",
            Change::Merge(json!({"other": 1})),
            Some(view.version),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("resolve it first"), "{err}");

    let r = f
        .svc
        .resolve("owner", "c", ResolveChoice::Agent("w3".into()))
        .await
        .unwrap();
    assert_eq!(r.status, ContextStatus::Active);
    let end = f.svc.get("owner", "c").await.unwrap();
    assert_eq!(end.doc["decision"], "by-w3");
    let conflicts = f.svc.conflicts("owner", "c").await.unwrap();
    assert_eq!(conflicts.len(), 1, "reported exactly once");
    let c = &conflicts[0];
    assert_eq!(c.agent_values.len(), 5, "with every value: {c:?}");
    assert_eq!(c.resolution.as_ref().unwrap().resolved_by, "owner");
}
