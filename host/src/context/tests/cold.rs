//! Red team: reads of evicted contexts racing changes, what the writer keeps after a batch,
//! and writer-only state in a batch that fails to commit.

use super::hot_tier::bounded;
use super::visibility::{Gate, failed_commit, poison, poison_tables, queue};
use super::*;
use crate::events::EventError;
use crate::store::{READ_CONNECTIONS, StoreError};

/// Every read connection of a store, held until [`Reads::open`].
struct Reads {
    release: Vec<std::sync::mpsc::Sender<()>>,
    held: Vec<tokio::task::JoinHandle<Result<(), StoreError>>>,
}

impl Reads {
    /// Returns once every read connection is inside a read that waits for `open`.
    async fn hold(store: &Store) -> Reads {
        let (entered, inside) = std::sync::mpsc::channel::<()>();
        let (mut release, mut held) = (Vec::new(), Vec::new());
        for _ in 0..READ_CONNECTIONS {
            let (open, gate) = std::sync::mpsc::channel::<()>();
            let (entered, store) = (entered.clone(), store.clone());
            held.push(tokio::spawn(async move {
                store
                    .read(move |_| {
                        entered.send(()).unwrap();
                        gate.recv().ok();
                        Ok(())
                    })
                    .await
            }));
            release.push(open);
        }
        tokio::task::spawn_blocking(move || {
            for _ in 0..READ_CONNECTIONS {
                inside.recv().unwrap();
            }
        })
        .await
        .unwrap();
        Reads { release, held }
    }

    async fn open(self) {
        drop(self.release);
        for h in self.held {
            h.await.unwrap().unwrap();
        }
    }
}

/// `b` may read `c` (evicted: nothing is kept hot), then is revoked and the owner writes a
/// secret, while `read` (queued before) waits for a read connection.
async fn revoked_while_loading<T>(
    f: &Fixture,
    read: impl std::future::Future<Output = T> + Send,
) -> T {
    let reads = Reads::hold(f.svc.store()).await;
    // Passes its access check now, then waits to load the evicted document.
    let read = queue(read);
    f.svc.revoke("owner", "c", &["b".into()]).await.unwrap();
    f.svc
        .write("owner", "c", Change::Merge(json!({"secret": 1})), Some(1))
        .await
        .unwrap();
    reads.open().await;
    read.await
}

async fn shared_evicted_context() -> Fixture {
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
    f.svc
        .share("owner", "c", &["b".into()], &[Permission::Read], None)
        .await
        .unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_get_does_not_return_what_was_written_after_its_reader_was_revoked() {
    let f = shared_evicted_context().await;
    let got = revoked_while_loading(&f, f.svc.get("b", "c")).await;
    match got {
        Err(ContextError::AccessDenied { .. }) => {}
        Ok(view) => assert_eq!(view.doc, json!({"x": 1}), "b read past its revoke"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_list_does_not_return_what_was_written_after_its_reader_was_revoked() {
    let f = shared_evicted_context().await;
    let listed = revoked_while_loading(&f, f.svc.list("b", None, None))
        .await
        .unwrap();
    for view in listed {
        assert_eq!(view.doc, json!({"x": 1}), "b listed past its revoke");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_keeps_no_document_past_the_bound_once_its_batch_is_published() {
    // A bound of 0: no document stays in memory once its change is published, however many
    // a batch touched (a batch holds up to 1,024 writes of up to 16 MiB each).
    let f = bounded(StoreConfig::in_memory(), 0).await;
    agents(&f.svc, &["a"]).await;
    let gate = Gate::hold(f.svc.store()).await;
    let creates: Vec<_> = (0..4)
        .map(|i| {
            queue(f.svc.create(
                "a",
                NewContext {
                    id: Some(format!("c{i}")),
                    context_type: "notes".into(),
                    doc: json!({"text": "x".repeat(100_000)}),
                    ..Default::default()
                },
            ))
        })
        .collect();
    gate.open().await.unwrap();
    for c in creates {
        c.await.unwrap();
    }
    assert_eq!(f.svc.shared.committed().resident(), (0, 0));
    let held = f.svc.shared.working.lock().unwrap().held_document_bytes();
    assert_eq!(held, 0, "bytes of documents the writer still holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistration_that_fails_to_commit_forgets_none_of_the_agents_subscriptions() {
    let f = fixture().await;
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner", "a"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    f.svc
        .share("owner", "c", &["a".into()], &[Permission::Read], None)
        .await
        .unwrap();
    let mut sub = f.svc.subscribe("a", "c", SubscribeFrom::Now).await.unwrap();
    poison_tables(&store).await;

    let gate = Gate::hold(&store).await;
    let unregister = queue(f.svc.unregister_agent("a"));
    let poisoned = poison(&store);
    gate.open().await.unwrap();
    failed_commit(unregister.await);
    assert!(matches!(poisoned.await, Err(StoreError::Commit { .. })));

    // `a` is still registered; unregistering it now ends its subscription.
    assert!(f.svc.registered_agents().iter().any(|r| r.agent_id == "a"));
    f.svc.unregister_agent("a").await.unwrap();
    f.svc
        .write("owner", "c", Change::Merge(json!({"x": 2})), Some(1))
        .await
        .unwrap();
    let next = sub.next().await;
    assert!(
        matches!(next, Err(EventError::Unsubscribed)),
        "the unregistered agent's subscription still delivers: {next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_does_not_return_what_was_written_after_its_reader_was_revoked() {
    let f = shared_evicted_context().await;
    let got = revoked_while_loading(&f, f.svc.history("b", "c", 10)).await;
    match got {
        Err(ContextError::AccessDenied { .. }) => {}
        Ok(versions) => assert_eq!(versions.len(), 1, "b read history past its revoke"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_not_returned_to_a_reader_revoked_while_they_load() {
    let f = bounded(StoreConfig::in_memory(), 0).await;
    agents(&f.svc, &["owner", "b"]).await;
    ctx(&f.svc, "owner", "c", SyncStrategy::Strong, json!({"x": 1})).await;
    f.svc
        .share("owner", "c", &["b".into()], &[Permission::Read], None)
        .await
        .unwrap();
    let reads = Reads::hold(f.svc.store()).await;
    let read = queue(f.svc.conflicts("b", "c"));
    f.svc.revoke("owner", "c", &["b".into()]).await.unwrap();
    // A stale write under `strong` records a conflict holding the value it brought.
    f.svc
        .write("owner", "c", Change::Merge(json!({"x": 2})), Some(1))
        .await
        .unwrap();
    let stale = f
        .svc
        .write("owner", "c", Change::Merge(json!({"secret": 1})), Some(1))
        .await;
    assert!(
        matches!(stale, Err(ContextError::Refused { .. })),
        "{stale:?}"
    );
    reads.open().await;
    match read.await {
        Err(ContextError::AccessDenied { .. }) => {}
        Ok(conflicts) => assert!(
            conflicts.is_empty(),
            "b read conflicts past its revoke: {conflicts:?}"
        ),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_values_of_a_pending_conflict_count_toward_the_hot_tier_bound() {
    let f = bounded(StoreConfig::in_memory(), usize::MAX).await;
    let ws = super::writers_on_shared_context(&f, 2, SyncStrategy::Manual, json!({"x": 0})).await;
    for (w, v) in ws.iter().zip([1, 2]) {
        f.svc
            .write(w, "c", Change::Merge(json!({"x": v})), Some(1))
            .await
            .unwrap();
    }
    // `c` waits for a resolution; a competing value for `x` joins it without a new version.
    let big = "x".repeat(1 << 20);
    f.svc
        .write(&ws[1], "c", Change::Merge(json!({"x": big})), Some(2))
        .await
        .unwrap();
    let (bytes, count) = f.svc.shared.committed().resident();
    assert_eq!(count, 1);
    assert!(
        bytes > big.len(),
        "{bytes} bytes counted for a 1 MiB competing value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_deletes_sweeps_and_unregistrations_of_a_failed_batch_leave_no_trace() {
    // Nothing kept hot: the operations load the evicted document inside the failed batch.
    let f = bounded(StoreConfig::in_memory(), 0).await;
    let store = f.svc.store().clone();
    agents(&f.svc, &["owner", "a", "b"]).await;
    for id in ["c", "d"] {
        ctx(&f.svc, "owner", id, SyncStrategy::Eventual, json!({"x": 1})).await;
        f.svc
            .share(
                "owner",
                id,
                &["a".into(), "b".into()],
                &[Permission::Read],
                None,
            )
            .await
            .unwrap();
    }
    poison_tables(&store).await;
    // `a` and `b` go quiet past the timeout; `owner` stays connected.
    f.clock.advance(31_000);
    f.svc.heartbeat("owner").await.unwrap();

    let a = ["a".to_string()];
    let gate = Gate::hold(&store).await;
    let revoke = queue(f.svc.revoke("owner", "c", &a));
    let delete = queue(f.svc.delete("owner", "d"));
    let sweep = queue(f.svc.sweep_disconnected());
    let unregister = queue(f.svc.unregister_agent("b"));
    let poisoned = poison(&store);
    gate.open().await.unwrap();
    failed_commit(revoke.await);
    failed_commit(delete.await);
    failed_commit(sweep.await);
    failed_commit(unregister.await);
    assert!(matches!(poisoned.await, Err(StoreError::Commit { .. })));

    for id in ["c", "d"] {
        let holders: Vec<String> = f.svc.grants(id).into_iter().map(|s| s.agent_id).collect();
        assert_eq!(holders, ["a", "b"], "grants of {id}");
    }
    let regs = f.svc.registered_agents();
    let status = |id: &str| regs.iter().find(|r| r.agent_id == id).map(|r| r.status);
    assert_eq!(status("a"), Some(AgentConnection::Active));
    assert_eq!(status("b"), Some(AgentConnection::Active));
    assert_eq!(f.svc.ids("owner", None, None), ["c", "d"]);
    // Every change can be made again, on the state as committed.
    f.svc.heartbeat("a").await.unwrap();
    f.svc.heartbeat("b").await.unwrap();
    assert_eq!(f.svc.get("a", "c").await.unwrap().doc, json!({"x": 1}));
    assert_eq!(f.svc.get("b", "d").await.unwrap().doc, json!({"x": 1}));
    f.svc.revoke("owner", "c", &["a".into()]).await.unwrap();
    assert_eq!(f.svc.delete("owner", "d").await.unwrap().version, 2);
    f.svc.unregister_agent("b").await.unwrap();
    assert!(f.svc.get("a", "c").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_loading_evicted_documents_while_writers_change_them_never_go_back() {
    // Room for one document (about 58 bytes with its field stamp): the two contexts keep
    // evicting each other.
    let f = bounded(StoreConfig::in_memory(), 100).await;
    agents(&f.svc, &["w", "r0", "r1", "r2"]).await;
    for id in ["c0", "c1"] {
        ctx(&f.svc, "w", id, SyncStrategy::Strong, json!({"n": 0})).await;
        let readers = ["r0".to_string(), "r1".into(), "r2".into()];
        f.svc
            .share("w", id, &readers, &[Permission::Read], None)
            .await
            .unwrap();
    }
    const WRITES: u64 = 60;
    let writer = tokio::spawn({
        let svc = f.svc.clone();
        async move {
            for i in 0..WRITES {
                let id = if i % 2 == 0 { "c0" } else { "c1" };
                let cur = svc.get("w", id).await.unwrap();
                let n = cur.doc["n"].as_u64().unwrap();
                svc.write("w", id, Change::Put(json!({"n": n + 1})), Some(cur.version))
                    .await
                    .unwrap();
            }
        }
    });
    let mut readers = Vec::new();
    for r in ["r0", "r1", "r2"] {
        let svc = f.svc.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = [0u64; 2];
            let mut reads = 0;
            while seen.iter().sum::<u64>() < WRITES + 2 {
                for (k, id) in ["c0", "c1"].iter().enumerate() {
                    let v = svc.get(r, id).await.unwrap();
                    assert!(
                        v.version >= seen[k],
                        "{r} read {id} v{} after v{}",
                        v.version,
                        seen[k]
                    );
                    assert_eq!(v.doc["n"].as_u64(), Some(v.version - 1), "{r}: {v:?}");
                    seen[k] = v.version;
                    reads += 1;
                }
            }
            reads
        }));
    }
    writer.await.unwrap();
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let (bytes, _) = f.svc.shared.committed().resident();
    assert!(bytes <= 100, "{bytes} bytes held for a 100-byte bound");
}

fn is_hot(f: &Fixture, id: &str) -> bool {
    let committed = f.svc.shared.committed();
    committed
        .context_arc(id)
        .expect("the context exists")
        .resident
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_larger_than_the_whole_bound_evicts_nothing() {
    let small = |i: usize| json!({"n": i, "text": "x".repeat(1000)});
    let f = bounded(StoreConfig::in_memory(), usize::MAX).await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "c0", SyncStrategy::Eventual, small(0)).await;
    let size = f.svc.shared.committed().resident().0;

    let f = bounded(StoreConfig::in_memory(), 3 * size).await;
    agents(&f.svc, &["a"]).await;
    for i in 0..3 {
        ctx(
            &f.svc,
            "a",
            &format!("c{i}"),
            SyncStrategy::Eventual,
            small(i),
        )
        .await;
    }
    // Created, written and read: too large to keep, it pushes out none of the others.
    let big = json!({"text": "y".repeat(4 * size)});
    ctx(&f.svc, "a", "big", SyncStrategy::Eventual, big.clone()).await;
    f.svc
        .write("a", "big", Change::Merge(json!({"more": 1})), Some(1))
        .await
        .unwrap();
    assert_eq!(
        f.svc.get("a", "big").await.unwrap().doc["text"],
        big["text"]
    );
    assert!(!is_hot(&f, "big"));
    for id in ["c0", "c1", "c2"] {
        assert!(
            is_hot(&f, id),
            "{id} was evicted for a document that cannot stay"
        );
    }
    assert_eq!(f.svc.shared.committed().resident(), (3 * size, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_no_grant_revoke_or_label_whose_commit_failed() {
    let f = fixture().await;
    let store = f.svc.store().clone();
    let log = crate::audit::AuditLog::open(Store::open(StoreConfig::in_memory()).unwrap())
        .await
        .unwrap();
    f.svc.set_audit(log.clone());
    agents(&f.svc, &["owner", "a", "b"]).await;
    ctx(
        &f.svc,
        "owner",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1}),
    )
    .await;
    f.svc
        .share("owner", "c", &["a".into()], &[Permission::Read], None)
        .await
        .unwrap();
    poison_tables(&store).await;
    log.flush().await;
    let before = log
        .query(&crate::audit::AuditQuery::default())
        .await
        .unwrap();

    let (a, b, red) = (["a".to_string()], ["b".to_string()], ["red".to_string()]);
    let gate = Gate::hold(&store).await;
    let revoke = queue(f.svc.revoke("owner", "c", &a));
    let share = queue(f.svc.share("owner", "c", &b, &[Permission::Read], None));
    let relabel = queue(f.svc.set_labels(OPERATOR, "c", &red));
    let poisoned = poison(&store);
    gate.open().await.unwrap();
    failed_commit(revoke.await);
    failed_commit(share.await);
    failed_commit(relabel.await);
    assert!(matches!(poisoned.await, Err(StoreError::Commit { .. })));

    log.flush().await;
    let after = log
        .query(&crate::audit::AuditQuery::default())
        .await
        .unwrap();
    let new: Vec<String> = after[before.len()..]
        .iter()
        .map(|e| format!("{} {}: {}", e.operation, e.resource, e.reason))
        .collect();
    assert!(new.is_empty(), "audited though never committed: {new:?}");
}
