//! Context store tests: every strategy under real concurrency, the permission matrix,
//! history and rollback, merge, batch sync, heartbeats, schema checks, determinism.

use super::*;
use crate::events::{EventBusConfig, EventType, SubscribeFrom};
use crate::store::StoreConfig;
use serde_json::json;
use std::time::Duration;

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

#[tokio::test]
async fn each_permission_is_refused_when_missing_revoked_or_expired_and_every_refusal_reported() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "granted", "none", "expired", "revoked"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"a": 1}),
    )
    .await;

    type Attempt = for<'s> fn(
        &'s ContextService,
        &'static str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), ContextError>> + Send + 's>,
    >;
    let ops: [(Permission, Attempt); 4] = [
        (Permission::Read, |s, a| {
            Box::pin(async move { s.get(a, "c").await.map(|_| ()) })
        }),
        (Permission::Write, |s, a| {
            Box::pin(async move {
                s.write(a, "c", Change::Merge(json!({"w": a})), None)
                    .await
                    .map(|_| ())
            })
        }),
        (Permission::Share, |s, a| {
            Box::pin(async move {
                s.share(a, "c", &["none".to_string()], &[Permission::Share], Some(1))
                    .await
                    .map(|_| ())
            })
        }),
        (Permission::Delete, |_s, _a| Box::pin(async move { Ok(()) })),
    ];
    for (perm, attempt) in ops {
        if perm == Permission::Delete {
            continue;
        }
        // granted: only this permission (plus what the op needs to be tested alone).
        f.svc
            .share("owner", "c", &["granted".into()], &[perm], None)
            .await
            .unwrap();
        let now = f.svc.now_ms();
        f.svc
            .share("owner", "c", &["expired".into()], &[perm], Some(now + 10))
            .await
            .unwrap();
        f.svc
            .share("owner", "c", &["revoked".into()], &[perm], None)
            .await
            .unwrap();
        f.svc
            .revoke("owner", "c", &["revoked".into()])
            .await
            .unwrap();
        assert!(attempt(&f.svc, "granted").await.is_ok(), "{perm} granted");
        for who in ["none", "revoked"] {
            let e = attempt(&f.svc, who).await.unwrap_err();
            assert!(
                matches!(e, ContextError::AccessDenied { .. }),
                "{perm} {who}: {e}"
            );
        }
        // Not yet expired, then expired without any sweep running.
        assert!(
            attempt(&f.svc, "expired").await.is_ok(),
            "{perm} before expiry"
        );
        f.clock.advance(10);
        let e = attempt(&f.svc, "expired").await.unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        // A share of another permission does not grant this one.
        let other = if perm == Permission::Read {
            Permission::Write
        } else {
            Permission::Read
        };
        f.svc
            .share("owner", "c", &["granted".into()], &[other], None)
            .await
            .unwrap();
        assert!(
            matches!(
                attempt(&f.svc, "granted").await,
                Err(ContextError::AccessDenied { .. })
            ),
            "{perm} with only {other}"
        );
        f.clock.advance(1_000);
        for a in ["owner"] {
            f.svc.heartbeat(a).await.unwrap();
        }
        for a in ["granted", "none", "expired", "revoked"] {
            f.svc.heartbeat(a).await.unwrap();
        }
    }
    // Delete.
    f.svc
        .share(
            "owner",
            "c",
            &["granted".into()],
            &[Permission::Read, Permission::Write],
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        f.svc.delete("granted", "c").await,
        Err(ContextError::AccessDenied { .. })
    ));
    f.svc
        .share(
            "owner",
            "c",
            &["granted".into()],
            &[Permission::Delete],
            None,
        )
        .await
        .unwrap();
    f.svc.delete("granted", "c").await.unwrap();
    // Every refusal left an access-violation conflict and event.
    let history = f
        .svc
        .bus()
        .history(
            &EventFilter {
                event_types: vec![EventType::Conflict],
                ..Default::default()
            },
            None,
            1_000,
        )
        .await
        .unwrap();
    let violations = history
        .iter()
        .filter(|e| e.data["conflictType"] == "access-violation")
        .count();
    // Per permission: none, revoked, expired, and granted with only another permission;
    // then the delete without the permission.
    assert_eq!(violations, 3 * 4 + 1);
}

#[tokio::test]
async fn sharers_cannot_grant_more_than_they_hold() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "s", "t"]).await;
    ctx(&f.svc, "owner", "c", SyncStrategy::Strong, json!({})).await;
    f.svc
        .share(
            "owner",
            "c",
            &["s".into()],
            &[Permission::Read, Permission::Share],
            None,
        )
        .await
        .unwrap();
    f.svc
        .share("s", "c", &["t".into()], &[Permission::Read], None)
        .await
        .unwrap();
    let e = f
        .svc
        .share("s", "c", &["t".into()], &[Permission::Write], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot grant write"), "{e}");
    assert_eq!(f.svc.shared_contexts("t").len(), 1);
}

#[tokio::test]
async fn history_rollback_and_retention() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    f.svc
        .create(
            "a",
            NewContext {
                id: Some("h".into()),
                context_type: "t".into(),
                doc: json!({"v": 1}),
                strategy: SyncStrategy::Strong,
                history_limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for v in 2..=5 {
        f.svc
            .write("a", "h", Change::Put(json!({"v": v})), Some(v - 1))
            .await
            .unwrap();
    }
    let h = f.svc.history("a", "h", 100).await.unwrap();
    assert_eq!(
        h.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![5, 4, 3]
    );
    let r = f.svc.rollback("a", "h", 3).await.unwrap();
    assert_eq!(r.version, 6);
    assert_eq!(f.svc.get("a", "h").await.unwrap().doc, json!({"v": 3}));
    let h = f.svc.history("a", "h", 100).await.unwrap();
    assert_eq!(h[0].op, "rollback");
    let e = f.svc.rollback("a", "h", 1).await.unwrap_err();
    assert!(e.to_string().contains("retention"), "{e}");
}

#[tokio::test]
async fn schema_mismatch_is_refused_and_reported() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    let schema = json!({"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]});
    f.svc
        .create(
            "a",
            NewContext {
                id: Some("s".into()),
                context_type: "t".into(),
                doc: json!({"count": 1}),
                schema: Some(schema),
                strategy: SyncStrategy::Eventual,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let e = f
        .svc
        .write("a", "s", Change::Merge(json!({"count": "many"})), None)
        .await
        .unwrap_err();
    match e {
        ContextError::Refused {
            refusal: Refusal::Schema(m),
            conflict: Some(c),
            ..
        } => {
            assert!(m.contains("count"), "{m}");
            assert_eq!(c.conflict_type, ConflictType::SchemaMismatch);
        }
        other => panic!("{other}"),
    }
    assert_eq!(f.svc.get("a", "s").await.unwrap().doc, json!({"count": 1}));
    let bad = f
        .svc
        .create(
            "a",
            NewContext {
                context_type: "t".into(),
                schema: Some(json!({"type": 12})),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("not a valid JSON schema"), "{bad}");
}

#[tokio::test]
async fn merge_contexts_and_batch_sync() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(
        &f.svc,
        "a",
        "one",
        SyncStrategy::Strong,
        json!({"x": 1, "shared": "one"}),
    )
    .await;
    ctx(
        &f.svc,
        "a",
        "two",
        SyncStrategy::Strong,
        json!({"y": 2, "shared": "two"}),
    )
    .await;
    let r = f
        .svc
        .merge_contexts(
            "a",
            &["one".into(), "two".into()],
            NewContext {
                id: Some("both".into()),
                context_type: "t".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(
        f.svc.get("a", "both").await.unwrap().doc,
        json!({"x": 1, "y": 2, "shared": "two"})
    );
    let results = f.svc.batch_sync("b", &["one".into(), "nope".into()]).await;
    assert!(!results[0].success && results[0].error.as_ref().unwrap().contains("access denied"));
    assert!(!results[1].success && results[1].error.as_ref().unwrap().contains("no context"));
    let results = f.svc.batch_sync("a", &["one".into(), "two".into()]).await;
    assert!(results.iter().all(|r| r.success && r.version == 1));
    let syncs = f
        .svc
        .bus()
        .history(
            &EventFilter {
                event_types: vec![EventType::Sync],
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(syncs.len(), 2);
    assert_eq!(syncs[0].data["syncedContexts"], 0);
    assert_eq!(syncs[1].data["syncedContexts"], 2);
}

#[tokio::test]
async fn disconnected_agents_lose_access_and_subscriptions() {
    let f = fixture().await;
    agents(&f.svc, &["owner", "r"]).await;
    ctx(&f.svc, "owner", "c", SyncStrategy::Eventual, json!({})).await;
    share_all(&f.svc, "c", "owner", &["r"]).await;
    let mut sub = f.svc.subscribe("r", "c", SubscribeFrom::Now).await.unwrap();
    f.svc
        .write("owner", "c", Change::Merge(json!({"a": 1})), None)
        .await
        .unwrap();
    let e = sub
        .next_timeout(Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.event_type, EventType::Updated);
    f.clock.advance(31_000);
    f.svc.heartbeat("owner").await.unwrap();
    // Refused before any sweep ran ...
    assert!(matches!(
        f.svc.get("r", "c").await,
        Err(ContextError::AccessDenied { .. })
    ));
    // ... and the sweep marks it, emits the event and ends its subscription.
    assert_eq!(
        f.svc.sweep_disconnected().await.unwrap(),
        vec!["r".to_string()]
    );
    let mut ended = false;
    for _ in 0..10 {
        match sub.next_timeout(Duration::from_secs(5)).await {
            Err(_) => {
                ended = true;
                break;
            }
            Ok(Some(_)) => continue,
            Ok(None) => break,
        }
    }
    assert!(ended, "subscription ended");
    f.svc.heartbeat("r").await.unwrap();
    assert!(f.svc.get("r", "c").await.is_ok());
}

#[tokio::test]
async fn every_change_and_read_is_an_event_with_a_global_sequence() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "c", SyncStrategy::Eventual, json!({})).await;
    f.svc
        .write("a", "c", Change::Merge(json!({"x": 1})), None)
        .await
        .unwrap();
    f.svc.get("a", "c").await.unwrap();
    f.svc.delete("a", "c").await.unwrap();
    // The read's event is recorded without making the reader wait: wait for it here.
    let mut accessed = f
        .svc
        .bus()
        .subscribe(
            EventFilter {
                event_types: vec![EventType::Accessed],
                context_ids: vec!["c".into()],
                ..Default::default()
            },
            SubscribeFrom::AfterSeq(0),
        )
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), accessed.next())
        .await
        .expect("the read's accessed event is recorded")
        .unwrap();
    let events = f
        .svc
        .bus()
        .history(
            &EventFilter {
                context_ids: vec!["c".into()],
                ..Default::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    let types: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    for t in [
        EventType::Created,
        EventType::Updated,
        EventType::Accessed,
        EventType::Deleted,
    ] {
        assert!(types.contains(&t), "{t:?} in {types:?}");
    }
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let f = fixture_at(StoreConfig::at(dir.path())).await;
        agents(&f.svc, &["a", "b"]).await;
        ctx(
            &f.svc,
            "a",
            "c",
            SyncStrategy::Strong,
            json!({"big": "x".repeat(100_000)}),
        )
        .await;
        f.svc
            .share("a", "c", &["b".into()], &[Permission::Read], None)
            .await
            .unwrap();
        f.svc
            .write("a", "c", Change::Merge(json!({"k": 1})), Some(1))
            .await
            .unwrap();
    }
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    let v = f.svc.get("b", "c").await.unwrap();
    assert_eq!(v.version, 2);
    assert_eq!(v.doc["k"], 1);
    assert_eq!(v.doc["big"].as_str().unwrap().len(), 100_000);
    let r = f
        .svc
        .write("a", "c", Change::Merge(json!({"k": 2})), Some(2))
        .await
        .unwrap();
    assert!(r.revision > v.revision);
    assert!(r.hlc > v.hlc);
}
