//! A context's life: history and rollback, schema checks, merging, batch sync, the events
//! of every change and read, and reopening the store.

use super::*;

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
        .write("a", "s", Change::Merge(json!({"count": "many"})), Some(1))
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
async fn every_change_and_read_is_an_event_with_a_global_sequence() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "c", SyncStrategy::Eventual, json!({})).await;
    f.svc
        .write("a", "c", Change::Merge(json!({"x": 1})), Some(1))
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

/// The generation the agents' gate memo is stamped with moves with every committed change an
/// access decision reads (a new context, labels), and not with a document write.
#[tokio::test]
async fn the_attributes_generation_moves_with_what_access_decisions_read() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    let new = |t: &str| NewContext {
        id: Some("g".into()),
        context_type: t.into(),
        doc: json!({"v": 1}),
        ..Default::default()
    };
    let g0 = f.svc.attributes_generation();
    f.svc.create("a", new("notes")).await.unwrap();
    let g1 = f.svc.attributes_generation();
    assert!(g1 > g0, "a create moves it");
    f.svc
        .write("a", "g", Change::Put(json!({"v": 2})), Some(1))
        .await
        .unwrap();
    assert_eq!(f.svc.attributes_generation(), g1, "a write does not");
    f.svc
        .set_labels(OPERATOR, "g", &["secret".to_string()])
        .await
        .unwrap();
    let g2 = f.svc.attributes_generation();
    assert!(g2 > g1, "a label change moves it");
    // An id is never reused, so a context's type and owner never change after its create.
    f.svc.delete("a", "g").await.unwrap();
    let e = f.svc.create("a", new("secrets")).await.unwrap_err();
    assert!(matches!(e, ContextError::AlreadyExists(_)), "{e:?}");
    assert_eq!(f.svc.attributes("g").unwrap().0, "notes");
}
