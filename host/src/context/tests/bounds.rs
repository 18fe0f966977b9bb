//! Bounded by construction: conflict records refer to versions instead of copying large
//! values, every result is checked against the document limit, pending competing values count,
//! conflict retention.

use super::conflicts::merge;
use super::*;

async fn fixture_with(config: ContextConfig) -> Fixture {
    fixture_in(StoreConfig::in_memory(), config).await
}

async fn fixture_in(store: StoreConfig, config: ContextConfig) -> Fixture {
    let store = Store::open(store).unwrap();
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let svc = ContextService::open(store, bus, clock.clone(), config)
        .await
        .unwrap();
    Fixture { svc, clock }
}

#[tokio::test]
async fn a_stale_strong_write_records_a_reference_to_the_current_version_not_a_copy() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    let big = "x".repeat(10_000);
    ctx(
        &f.svc,
        "a",
        "s",
        SyncStrategy::Strong,
        json!({"big": big, "n": 0}),
    )
    .await;
    share_all(&f.svc, "s", "a", &["b"]).await;
    f.svc
        .write("a", "s", merge(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let e = f
        .svc
        .write("b", "s", merge(json!({"n": 2})), Some(1))
        .await
        .unwrap_err();
    let ContextError::Refused {
        conflict: Some(c), ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(c.agent_values["a"], json!({"version": 2}));
    assert_eq!(c.agent_values["b"], json!({"/n": 2}));
    // Neither the record nor its event copies the document.
    let events = f
        .svc
        .bus()
        .history(
            &crate::events::EventFilter {
                event_types: vec![EventType::Conflict],
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(!events[0].data.to_string().contains(&big));
    assert_eq!(events[0].data["id"], c.id);
}

#[tokio::test]
async fn a_rivals_large_value_is_recorded_as_a_reference_to_its_version_a_small_one_copied() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(
        &f.svc,
        "a",
        "x",
        SyncStrategy::Eventual,
        json!({"f": 0, "g": 0}),
    )
    .await;
    share_all(&f.svc, "x", "a", &["b"]).await;
    // The string's JSON is 2 bytes longer than the string: just at the limit, then one past.
    let at_limit = "s".repeat(engine::MAX_INLINE_CONFLICT_VALUE_BYTES - 2);
    let past = "l".repeat(engine::MAX_INLINE_CONFLICT_VALUE_BYTES - 1);
    f.svc
        .write("b", "x", merge(json!({"f": at_limit, "g": past})), Some(1))
        .await
        .unwrap();
    let r = f
        .svc
        .write("a", "x", merge(json!({"f": 1, "g": 2})), Some(1))
        .await
        .unwrap();
    let by_field: BTreeMap<&str, &Conflict> =
        r.conflicts.iter().map(|c| (c.field.as_str(), c)).collect();
    assert_eq!(by_field["/f"].agent_values["b"], json!(at_limit), "copied");
    assert_eq!(
        by_field["/g"].agent_values["b"],
        json!({"version": 2}),
        "referred to"
    );
    assert_eq!(
        by_field["/g"].agent_values["a"],
        json!(2),
        "the writer's own value copied"
    );
    let stored = f.svc.conflicts("a", "x").await.unwrap();
    assert!(!serde_json::to_string(&stored).unwrap().contains(&past));
}

fn small_limit(bytes: usize) -> ContextConfig {
    ContextConfig {
        max_document_bytes: bytes,
        ..ContextConfig::default()
    }
}

fn doc_of(bytes: usize) -> Value {
    // `{"p":"…"}` is 8 bytes around the string.
    json!({ "p": "x".repeat(bytes - 8) })
}

#[tokio::test]
async fn every_change_is_checked_against_the_document_limit_after_it_is_applied() {
    const LIMIT: usize = 1_000;
    let f = fixture_with(small_limit(LIMIT)).await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Manual, doc_of(LIMIT - 100)).await;
    // A small merge patch, pointer patch or put that lands just inside passes...
    let inside = |n: usize| json!({"q": "y".repeat(n)});
    // `,"q":"…"` adds 7 bytes around the string.
    let r = f
        .svc
        .write("a", "x", merge(inside(93)), None)
        .await
        .unwrap();
    assert_eq!(r.version, 2);
    // ...and one byte more is refused, naming the limit, and changes nothing.
    for change in [
        merge(inside(94)),
        Change::Pointer(vec![PointerOp::Set {
            path: "/q".into(),
            value: json!("y".repeat(94)),
        }]),
    ] {
        let e = f.svc.write("a", "x", change, None).await.unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("maxDocumentBytes") && text.contains("1000"),
            "{text}"
        );
        assert!(matches!(e, ContextError::Invalid { .. }), "{e}");
    }
    assert_eq!(f.svc.get("a", "x").await.unwrap().version, 2);

    // A resolution is checked too.
    agents(&f.svc, &["b"]).await;
    ctx(&f.svc, "a", "m", SyncStrategy::Manual, json!({"f": 0})).await;
    share_all(&f.svc, "m", "a", &["b"]).await;
    f.svc
        .write("a", "m", merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    f.svc
        .write("b", "m", merge(json!({"f": 2})), Some(1))
        .await
        .unwrap();
    let e = f
        .svc
        .resolve("a", "m", ResolveChoice::Document(doc_of(LIMIT + 1)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("maxDocumentBytes"), "{e}");
    // A merge of contexts is checked on the merged document.
    ctx(
        &f.svc,
        "a",
        "half1",
        SyncStrategy::Manual,
        json!({"p": "x".repeat(LIMIT / 2 - 8)}),
    )
    .await;
    ctx(
        &f.svc,
        "a",
        "half2",
        SyncStrategy::Manual,
        json!({"q": "x".repeat(LIMIT / 2 - 8)}),
    )
    .await;
    let into = |id: &str| NewContext {
        id: Some(id.into()),
        context_type: "t".into(),
        ..Default::default()
    };
    // `{"p":"…","q":"…"}` is 15 bytes around the strings: 492 + 492 + 15 = 999.
    f.svc
        .merge_contexts("a", &["half1".into(), "half2".into()], into("merged"))
        .await
        .unwrap();
    ctx(
        &f.svc,
        "a",
        "half3",
        SyncStrategy::Manual,
        json!({"r": "x".repeat(LIMIT / 2 - 8)}),
    )
    .await;
    // Three halves are over the limit.
    let e = f
        .svc
        .merge_contexts("a", &["merged".into(), "half3".into()], into("too-big"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the limit is 1000"), "{e}");
    let r = f
        .svc
        .resolve("a", "m", ResolveChoice::Document(doc_of(LIMIT)))
        .await
        .unwrap();
    assert_eq!(r.status, ContextStatus::Active);
}

#[tokio::test]
async fn a_rollback_is_checked_against_the_document_limit_in_force() {
    const LIMIT: usize = 1_000;
    let dir = tempfile::tempdir().unwrap();
    {
        // Written under the default limit: version 1 is large, version 2 small.
        let f = fixture_in(StoreConfig::at(dir.path()), ContextConfig::default()).await;
        agents(&f.svc, &["a"]).await;
        ctx(&f.svc, "a", "x", SyncStrategy::Strong, doc_of(LIMIT + 1)).await;
        f.svc
            .write("a", "x", Change::Put(doc_of(LIMIT)), Some(1))
            .await
            .unwrap();
        f.svc
            .write("a", "x", Change::Put(json!({})), Some(2))
            .await
            .unwrap();
    }
    let f = fixture_in(StoreConfig::at(dir.path()), small_limit(LIMIT)).await;
    let e = f.svc.rollback("a", "x", 1).await.unwrap_err();
    assert!(e.to_string().contains("maxDocumentBytes"), "{e}");
    assert_eq!(f.svc.get("a", "x").await.unwrap().version, 3);
    // The pair: version 2, exactly at the limit, comes back.
    let r = f.svc.rollback("a", "x", 2).await.unwrap();
    assert_eq!(r.version, 4);
}

#[tokio::test]
async fn competing_values_count_with_the_document_so_a_pending_conflict_is_bounded() {
    const LIMIT: usize = 400;
    let f = fixture_with(small_limit(LIMIT)).await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "m", SyncStrategy::Manual, json!({"f": 0})).await;
    share_all(&f.svc, "m", "a", &["b"]).await;
    f.svc
        .write("a", "m", merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    f.svc
        .write("b", "m", merge(json!({"f": 2})), Some(1))
        .await
        .unwrap();
    let mut accepted = 0;
    let refused = loop {
        match f
            .svc
            .write("b", "m", merge(json!({"f": "z".repeat(40)})), None)
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 20, "competing values grew without a bound");
    };
    assert!(accepted > 0, "one competing value fits");
    assert!(
        refused.to_string().contains("competing values"),
        "{refused}"
    );
}

#[tokio::test]
async fn conflicts_are_retained_up_to_the_configured_count_except_pending_ones() {
    let f = fixture_with(ContextConfig {
        max_conflicts_per_context: 3,
        ..ContextConfig::default()
    })
    .await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "s", SyncStrategy::Strong, json!({"n": 0})).await;
    share_all(&f.svc, "s", "a", &["b"]).await;
    f.svc
        .write("a", "s", merge(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let e = f
            .svc
            .write("b", "s", merge(json!({"n": i})), Some(1))
            .await
            .unwrap_err();
        let ContextError::Refused {
            conflict: Some(c), ..
        } = e
        else {
            panic!("{e}")
        };
        ids.push(c.id);
    }
    // Exactly at the limit: all three kept.
    let kept: Vec<u64> = f
        .svc
        .conflicts("a", "s")
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept, ids);
    // One more: the oldest goes.
    let e = f
        .svc
        .write("b", "s", merge(json!({"n": 9})), Some(1))
        .await
        .unwrap_err();
    let ContextError::Refused {
        conflict: Some(c), ..
    } = e
    else {
        panic!("{e}")
    };
    ids.push(c.id);
    let kept: Vec<u64> = f
        .svc
        .conflicts("a", "s")
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(kept, ids[1..]);

    // A pending manual conflict is kept however many records follow.
    ctx(&f.svc, "a", "m", SyncStrategy::Manual, json!({"f": 0})).await;
    share_all(&f.svc, "m", "a", &["b"]).await;
    f.svc
        .write("a", "m", merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    f.svc
        .write("b", "m", merge(json!({"f": 2})), Some(1))
        .await
        .unwrap();
    let pending = f
        .svc
        .get("a", "m")
        .await
        .unwrap()
        .pending
        .unwrap()
        .conflict_ids;
    // Four access violations by an agent without a share: records of their own.
    agents(&f.svc, &["c"]).await;
    for _ in 0..4 {
        f.svc
            .write("c", "m", merge(json!({"f": 9})), None)
            .await
            .unwrap_err();
    }
    let kept = f.svc.conflicts("a", "m").await.unwrap();
    assert_eq!(kept.len(), 4, "three newest and the pending one: {kept:?}");
    assert_eq!(kept[0].id, pending[0], "{kept:?}");
}

#[tokio::test]
async fn a_write_far_behind_large_documents_is_refused_before_the_writer_reads_them_all() {
    // The versions between a write's base and the current one are read on the store's
    // writer: at most `OBSERVED_DOCUMENTS` documents' worth of bytes, whatever their count.
    const LIMIT: usize = 1_000;
    let f = fixture_with(small_limit(LIMIT)).await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(
        &f.svc,
        "a",
        "x",
        SyncStrategy::Eventual,
        doc_of(LIMIT - 100),
    )
    .await;
    share_all(&f.svc, "x", "a", &["b"]).await;
    // Tiny patches, each a new version holding the whole (large) document.
    let patches = 16;
    // Far more versions than the bound.
    const { assert!(engine::OBSERVED_DOCUMENTS < 8) };
    for v in 1..=patches {
        f.svc
            .write("a", "x", merge(json!({ "n": v })), Some(v))
            .await
            .unwrap();
    }
    let current = patches + 1;
    let e = f
        .svc
        .write("b", "x", merge(json!({"m": 1})), Some(1))
        .await
        .unwrap_err();
    match e {
        ContextError::Refused {
            refusal:
                Refusal::ChangesTooLarge {
                    base: 1,
                    current: c,
                    ..
                },
            ..
        } => assert_eq!(c, current),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.svc.get("a", "x").await.unwrap().version, current);
    // A base whose versions since fit is merged as before.
    let r = f
        .svc
        .write("b", "x", merge(json!({"m": 2})), Some(current - 2))
        .await
        .unwrap();
    assert_eq!(r.version, current + 1);
}
