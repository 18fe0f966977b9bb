//! The hot tier is bounded in bytes: least-recently-used documents are evicted and read back
//! from the store when needed, and every operation works on an evicted context.

use super::*;

pub(super) async fn bounded(store: StoreConfig, hot_tier_bytes: usize) -> Fixture {
    let store = Store::open(store).unwrap();
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let config = ContextConfig {
        hot_tier_bytes,
        ..ContextConfig::default()
    };
    let svc = ContextService::open(store, bus, clock.clone(), config)
        .await
        .unwrap();
    Fixture { svc, clock }
}

fn hot(f: &Fixture, id: &str) -> bool {
    let committed = f.svc.shared.committed();
    committed
        .context_arc(id)
        .expect("the context exists")
        .resident
}

fn doc(i: usize) -> Value {
    json!({"n": i, "text": "x".repeat(1000)})
}

/// Bytes one of the `doc(i)` documents (i < 10) counts for, measured with no bound.
async fn one_document() -> usize {
    let f = bounded(StoreConfig::in_memory(), usize::MAX).await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "c0", SyncStrategy::Eventual, doc(0)).await;
    let (bytes, count) = f.svc.shared.committed().resident();
    assert_eq!(count, 1);
    bytes
}

/// Creates `c0..c2` (same size) and reads `c0` after `c1`, so `c1` is the least recently used.
async fn three_contexts(bound: usize) -> Fixture {
    let f = bounded(StoreConfig::in_memory(), bound).await;
    agents(&f.svc, &["a"]).await;
    for i in 0..3 {
        ctx(
            &f.svc,
            "a",
            &format!("c{i}"),
            SyncStrategy::Eventual,
            doc(i),
        )
        .await;
        if i == 1 {
            f.svc.get("a", "c0").await.unwrap();
        }
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_up_to_the_bound_stay_in_memory() {
    let size = one_document().await;
    let f = three_contexts(3 * size).await;
    assert_eq!(f.svc.shared.committed().resident(), (3 * size, 3));
    for id in ["c0", "c1", "c2"] {
        assert!(hot(&f, id), "{id} was evicted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_past_the_bound_evicts_the_least_recently_used_and_reads_it_back() {
    let size = one_document().await;
    let f = three_contexts(3 * size - 1).await;
    assert!(!hot(&f, "c1"), "c1 is the least recently used");
    assert!(hot(&f, "c0") && hot(&f, "c2"));
    assert_eq!(f.svc.shared.committed().resident(), (2 * size, 2));
    // Read back from disk: the same document; now c0 is the least recently used.
    let view = f.svc.get("a", "c1").await.unwrap();
    assert_eq!((view.doc, view.version), (doc(1), 1));
    assert!(hot(&f, "c1") && hot(&f, "c2"));
    assert!(!hot(&f, "c0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_an_evicted_context() {
    // A bound of 0 evicts every document as soon as its change is published.
    let f = bounded(StoreConfig::in_memory(), 0).await;
    agents(&f.svc, &["owner", "b"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    assert!(!hot(&f, "c"));
    let w = f
        .svc
        .write("owner", "c", Change::Merge(json!({"y": 2})), Some(1))
        .await
        .unwrap();
    assert_eq!(w.version, 2);
    assert!(!hot(&f, "c"));
    // A put is diffed against its base version, read from disk.
    let w = f
        .svc
        .write("owner", "c", Change::Put(json!({"x": 1, "y": 3})), Some(2))
        .await
        .unwrap();
    assert_eq!(w.version, 3);
    assert_eq!(
        f.svc.get("owner", "c").await.unwrap().doc,
        json!({"x": 1, "y": 3})
    );
    f.svc
        .share("owner", "c", &["b".into()], &[Permission::Read], None)
        .await
        .unwrap();
    assert_eq!(f.svc.get("b", "c").await.unwrap().version, 3);
    let listed = f.svc.list("b", None, None).await.unwrap();
    assert_eq!(listed[0].doc, json!({"x": 1, "y": 3}));
    assert_eq!(f.svc.ids("b", None, None), ["c"]);
    let history = f.svc.history("owner", "c", 10).await.unwrap();
    assert_eq!(history.len(), 3);
    let back = f.svc.rollback("owner", "c", 1).await.unwrap();
    assert_eq!(back.version, 4);
    assert_eq!(f.svc.get("owner", "c").await.unwrap().doc, json!({"x": 1}));
    assert_eq!(f.svc.delete("owner", "c").await.unwrap().version, 5);
    assert!(f.svc.ids("owner", None, None).is_empty());
    assert!(!hot(&f, "c"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_loads_documents_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    {
        let f = bounded(StoreConfig::at(dir.path()), usize::MAX).await;
        agents(&f.svc, &["a"]).await;
        ctx(&f.svc, "a", "c", SyncStrategy::Eventual, json!({"x": 1})).await;
        f.svc
            .write("a", "c", Change::Merge(json!({"x": 2})), Some(1))
            .await
            .unwrap();
    }
    let f = bounded(StoreConfig::at(dir.path()), usize::MAX).await;
    assert!(!hot(&f, "c"), "open loads metadata only");
    f.svc.heartbeat("a").await.unwrap();
    assert_eq!(f.svc.get("a", "c").await.unwrap().doc, json!({"x": 2}));
    assert!(hot(&f, "c"));
    let w = f
        .svc
        .write("a", "c", Change::Merge(json!({"y": 1})), Some(2))
        .await
        .unwrap();
    assert_eq!(w.version, 3);
}
