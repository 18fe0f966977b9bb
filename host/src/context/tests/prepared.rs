//! Writes worked out on the caller's thread (`prepared`): they store exactly what the writer
//! would, and the writer works a write out again when the context changed in between.

use super::hot_tier::bounded;
use super::visibility::{Gate, queue};
use super::*;
use crate::context::engine::Write;
use rusqlite::types::Value as Sql;

/// Every row of `table` (columns in `columns`), in `order`.
async fn rows(svc: &ContextService, columns: &str, table: &str, order: &str) -> Vec<Vec<Sql>> {
    let sql = format!("SELECT {columns} FROM {table} ORDER BY {order}");
    svc.store()
        .read(move |conn| {
            let mut stmt = conn.prepare(&sql)?;
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| (0..n).map(|i| r.get::<_, Sql>(i)).collect())?
                .collect::<Result<Vec<Vec<Sql>>, _>>()?;
            Ok(rows)
        })
        .await
        .unwrap()
}

/// What the store holds after `script`: contexts, versions, conflicts and events (but their
/// wall-clock `ts`).
async fn stored(svc: &ContextService) -> Vec<Vec<Vec<Sql>>> {
    vec![
        rows(svc, "*", "contexts", "id").await,
        rows(svc, "*", "versions", "revision").await,
        rows(svc, "*", "conflicts", "id").await,
        rows(
            svc,
            "seq, event_type, context_id, agent_id, priority, data",
            "events",
            "seq",
        )
        .await,
    ]
}

fn write(agent: &str, base: u64) -> Write {
    Write {
        agent: agent.into(),
        base_version: Some(base),
        changes: Vec::new(),
        op: "put",
        hlc: Hlc::default(),
    }
}

/// Hands `prepared` (a write to context `c`) to the writer: `None` when the writer no longer
/// uses it (the context changed since), else the stored version or the refusal.
async fn offer(
    svc: &ContextService,
    prepared: crate::context::prepared::Prepared,
) -> Option<Result<u64, ContextError>> {
    let outcome = svc
        .run(
            Some("c".into()),
            Box::new(move |sh, inner, ctx| {
                Ok(
                    match ContextService::commit_prepared(sh, inner, ctx, "c", prepared) {
                        None => None,
                        Some(Ok(w)) => Some(Ok(w.version)),
                        Some(Err(OpError::Committed(e))) => Some(Err(e)),
                        Some(Err(rolled_back)) => return Err(rolled_back),
                    },
                )
            }),
        )
        .await;
    outcome.unwrap_or_else(|e| Some(Err(e)))
}

/// Puts, merge patches and pointer patches under every strategy, each based on the current
/// version, by the owner and by an agent the context is shared with; a put that removes a key
/// and adds one, a put that changes nothing, and a write the schema refuses.
async fn script(f: &Fixture) {
    agents(&f.svc, &["a", "b"]).await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    for (id, strategy) in [
        ("s", SyncStrategy::Strong),
        ("e", SyncStrategy::Eventual),
        ("c", SyncStrategy::Causal),
        ("m", SyncStrategy::Manual),
    ] {
        f.svc
            .create(
                "a",
                NewContext {
                    id: Some(id.into()),
                    context_type: "notes".into(),
                    doc: json!({"n": 0, "title": "t", "tags": ["x"], "nested": {"k": 1}}),
                    strategy,
                    schema: Some(schema.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        share_all(&f.svc, id, "a", &["b"]).await;
        let changes = [
            (
                "a",
                Change::Put(json!({"n": 1, "title": "t", "tags": ["x", "y"], "nested": {"k": 2}})),
            ),
            (
                "b",
                Change::Merge(json!({"title": "u", "added": {"z": true}})),
            ),
            (
                "a",
                Change::Pointer(vec![PointerOp::Set {
                    path: "/nested/k".into(),
                    value: json!(3),
                }]),
            ),
            // Removes `tags` and `added`, adds `later`: key order as the writer makes it.
            (
                "b",
                Change::Put(json!({"later": 1, "n": 2, "title": "u", "nested": {"k": 3}})),
            ),
            (
                "a",
                Change::Put(json!({"later": 1, "n": 2, "title": "u", "nested": {"k": 3}})),
            ),
            ("a", Change::Merge(json!({"n": "not an integer"}))),
            ("b", Change::Merge(json!({"n": 3}))),
        ];
        // Versions from the answers, not reads: a read's `accessed` event is stored on its
        // own schedule, so the events would not line up.
        let mut version = 1;
        for (agent, change) in changes {
            if let Ok(r) = f.svc.write(agent, id, change, Some(version)).await {
                version = r.version;
            }
        }
    }
}

#[tokio::test]
async fn a_write_worked_out_by_the_caller_stores_exactly_what_the_writer_would() {
    // Documents held: writes are worked out by their callers.
    let hot = bounded(StoreConfig::in_memory(), usize::MAX).await;
    script(&hot).await;
    // Nothing held: every write is worked out by the writer thread.
    let cold = bounded(StoreConfig::in_memory(), 0).await;
    script(&cold).await;

    let (hot_rows, cold_rows) = (stored(&hot.svc).await, stored(&cold.svc).await);
    assert_eq!(
        hot_rows[1].len(),
        4 * 6,
        "a create and 5 new versions per context"
    );
    assert!(!hot_rows[2].is_empty(), "the schema refusals are recorded");
    assert_eq!(hot_rows, cold_rows);
    for id in ["s", "e", "c", "m"] {
        assert_eq!(
            hot.svc.get("a", id).await.unwrap().doc,
            cold.svc.get("a", id).await.unwrap().doc
        );
    }

    // The script's writes take the caller's path on `hot` and not on `cold`.
    let doc = json!({"n": 9, "later": 1, "title": "u", "nested": {"k": 3}});
    let base = hot.svc.get("a", "e").await.unwrap().version;
    assert!(
        hot.svc
            .prepare("e", Some(base), Some(&doc), None, write("a", base))
            .is_some()
    );
    let base = cold.svc.get("a", "e").await.unwrap().version;
    assert!(
        cold.svc
            .prepare("e", Some(base), Some(&doc), None, write("a", base))
            .is_none()
    );
}

#[tokio::test]
async fn a_prepared_write_is_worked_out_again_when_the_context_changed_first() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(
        &f.svc,
        "a",
        "c",
        SyncStrategy::Eventual,
        json!({"x": 1, "y": 1}),
    )
    .await;
    share_all(&f.svc, "c", "a", &["b"]).await;
    let doc = json!({"x": 2, "y": 1});
    let prepared = f
        .svc
        .prepare("c", Some(1), Some(&doc), None, write("a", 1))
        .expect("based on the current version, with the document in memory");
    // `b` changes `y` first: the prepared document still holds the old `y`.
    f.svc
        .write("b", "c", Change::Merge(json!({"y": 5})), Some(1))
        .await
        .unwrap();
    let used = offer(&f.svc, prepared).await.is_some();
    assert!(
        !used,
        "a write prepared against version 1 is not stored over version 2"
    );
    // Through the service, the same write is merged with `b`'s change.
    f.svc
        .write("a", "c", Change::Put(doc), Some(1))
        .await
        .unwrap();
    let view = f.svc.get("a", "c").await.unwrap();
    assert_eq!(view.doc, json!({"x": 2, "y": 5}));
    assert_eq!(view.version, 3);
}

#[tokio::test]
async fn a_prepared_write_is_checked_for_access_when_it_is_stored() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "c", SyncStrategy::Strong, json!({"x": 1})).await;
    share_all(&f.svc, "c", "a", &["b"]).await;
    let doc = json!({"x": 2});
    let prepared = f
        .svc
        .prepare("c", Some(1), Some(&doc), None, write("b", 1))
        .expect("prepared while `b` may write");
    f.svc.revoke("a", "c", &["b".to_string()]).await.unwrap();
    // The context did not change: the writer uses the prepared write, and refuses it.
    let outcome = offer(&f.svc, prepared).await;
    assert!(
        matches!(outcome, Some(Err(ContextError::AccessDenied { .. }))),
        "{outcome:?}"
    );
    assert_eq!(f.svc.get("a", "c").await.unwrap().doc, json!({"x": 1}));
}

#[tokio::test]
async fn a_prepared_write_is_not_stored_over_a_deleted_context() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    ctx(&f.svc, "a", "c", SyncStrategy::Eventual, json!({"x": 1})).await;
    let doc = json!({"x": 2});
    let prepared = f
        .svc
        .prepare("c", Some(1), Some(&doc), None, write("a", 1))
        .expect("based on the current version, with the document in memory");
    f.svc.delete("a", "c").await.unwrap();
    let used = offer(&f.svc, prepared).await.is_some();
    assert!(
        !used,
        "the deleted state is another state than the one prepared against"
    );
    let refused = f.svc.write("a", "c", Change::Put(doc), Some(2)).await;
    assert!(refused.is_err(), "{refused:?}");
    let status = rows(&f.svc, "status, version", "contexts", "id").await;
    assert_eq!(
        status,
        vec![vec![Sql::Text("deleted".into()), Sql::Integer(2)]]
    );
}

/// The state each context of `ids` has in memory, documents loaded.
async fn states(f: &Fixture, ids: &[&str]) -> Vec<ContextState> {
    let mut out = Vec::new();
    for id in ids {
        f.svc.get("a", id).await.unwrap();
        let state = f.svc.shared.committed().context_arc(id).unwrap();
        assert!(state.resident);
        out.push((*state).clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_writes_read_back_the_same_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["s", "e", "c", "m"];
    let before = {
        let f = bounded(StoreConfig::at(dir.path()), usize::MAX).await;
        script(&f).await;
        // The last write of each context is worked out by its caller.
        for id in ids {
            let base = f.svc.get("a", id).await.unwrap().version;
            let doc = json!({"n": 7, "title": "v", "big": "y".repeat(8 * 1024)});
            assert!(
                f.svc
                    .prepare(id, Some(base), Some(&doc), None, write("a", base))
                    .is_some()
            );
            f.svc
                .write("a", id, Change::Put(doc), Some(base))
                .await
                .unwrap();
        }
        let before = states(&f, &ids).await;
        assert_eq!(before, states(&f, &ids).await);
        (before, stored(&f.svc).await)
    };
    let f = bounded(StoreConfig::at(dir.path()), usize::MAX).await;
    f.svc.heartbeat("a").await.unwrap();
    assert_eq!(states(&f, &ids).await, before.0);
    let after = stored(&f.svc).await;
    assert_eq!(after[0], before.1[0], "the contexts rows");
    assert_eq!(after[1], before.1[1], "the versions rows");
    // The schema (set at create, not by the upsert) still holds after the reopen.
    for id in ids {
        let base = f.svc.get("a", id).await.unwrap().version;
        let refused = f
            .svc
            .write("a", id, Change::Merge(json!({"n": "text"})), Some(base))
            .await;
        assert!(
            matches!(
                refused,
                Err(ContextError::Refused {
                    refusal: Refusal::Schema(_),
                    ..
                })
            ),
            "{refused:?}"
        );
    }
}

/// The blobs stored, and the blobs some row names, sorted.
async fn blobs(svc: &ContextService) -> (Vec<String>, Vec<String>) {
    let mut stored = svc.store().blobs().list().unwrap().0;
    stored.sort();
    let named = rows(
        svc,
        "doc_blob",
        "(SELECT doc_blob FROM contexts UNION SELECT doc_blob FROM versions)",
        "doc_blob",
    )
    .await
    .into_iter()
    .filter_map(|r| match &r[0] {
        Sql::Text(h) => Some(h.clone()),
        _ => None,
    })
    .collect();
    (stored, named)
}

/// Replaces a stored (blob) document of a context keeping one version: each write trims the
/// version that names the blob the context row names too, so the old blob is a candidate of
/// the collection twice in one write. Held documents (`hot`): the writes are prepared.
async fn replace_stored_documents(hot: bool) {
    let store = StoreConfig {
        blob_threshold: 1024,
        ..StoreConfig::in_memory()
    };
    let f = bounded(store, if hot { usize::MAX } else { 0 }).await;
    agents(&f.svc, &["a"]).await;
    f.svc
        .create(
            "a",
            NewContext {
                id: Some("c".into()),
                context_type: "notes".into(),
                doc: json!({"text": "a".repeat(4096)}),
                history_limit: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let docs = [
        json!({"text": "b".repeat(4096)}),
        json!({"text": "b".repeat(4096), "n": 1}),
        json!({"text": "small"}),
        json!({"text": "c".repeat(4096)}),
    ];
    for (i, doc) in docs.into_iter().enumerate() {
        let base = i as u64 + 1;
        let prepared = f
            .svc
            .prepare("c", Some(base), Some(&doc), None, write("a", base));
        assert_eq!(prepared.is_some(), hot);
        f.svc
            .write("a", "c", Change::Put(doc.clone()), Some(base))
            .await
            .unwrap();
        // The next write runs after the collection of the one before.
        f.svc.heartbeat("a").await.unwrap();
        let (stored, named) = blobs(&f.svc).await;
        assert_eq!(stored, named, "after version {}", base + 1);
        assert_eq!(f.svc.get("a", "c").await.unwrap().doc, doc);
    }
}

#[tokio::test]
async fn a_prepared_write_replacing_a_stored_document_leaves_no_blob_behind() {
    replace_stored_documents(true).await;
}

#[tokio::test]
async fn a_write_replacing_a_stored_document_leaves_no_blob_behind() {
    replace_stored_documents(false).await;
}

#[tokio::test]
async fn of_two_writes_prepared_on_one_strong_version_only_the_first_is_stored() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "c", SyncStrategy::Strong, json!({"x": 1})).await;
    share_all(&f.svc, "c", "a", &["b"]).await;
    let (first, second) = (json!({"x": 2}), json!({"x": 3}));
    let prepared = [
        f.svc
            .prepare("c", Some(1), Some(&first), None, write("a", 1))
            .expect("based on the current version"),
        f.svc
            .prepare("c", Some(1), Some(&second), None, write("b", 1))
            .expect("based on the current version"),
    ];
    let mut used = Vec::new();
    for p in prepared {
        used.push(offer(&f.svc, p).await.map(|r| r.is_ok()));
    }
    assert_eq!(
        used,
        vec![Some(true), None],
        "the second is the writer's to decide"
    );
    let stale = f.svc.write("b", "c", Change::Put(second), Some(1)).await;
    assert!(
        matches!(
            stale,
            Err(ContextError::Refused {
                refusal: Refusal::Stale { current: 2, .. },
                ..
            })
        ),
        "{stale:?}"
    );
    let view = f.svc.get("a", "c").await.unwrap();
    assert_eq!((view.doc, view.version), (first, 2));
}

/// Red team: a prepared write is queued without a savepoint (`write_self_guarded`), so a
/// failure *after its first row* (here the `contexts` row refusing the update, standing for
/// an I/O error, a full disk, a failed blob write or a corrupt row) cannot be undone alone:
/// the whole batch is rolled back, another agent's write on another context with it. That
/// write kept nothing, so `ContextService::write` tries it once more: its caller sees success.
/// The faulty write fails, is not visible anywhere, and succeeds at the same base once the
/// fault is gone; everything survives a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_write_failing_after_its_first_row_fails_alone_to_its_callers_and_leaves_no_trace()
 {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Strong, json!({"n": 0})).await;
    ctx(&f.svc, "b", "y", SyncStrategy::Strong, json!({"n": 0})).await;
    let seq_before = f.svc.bus().last_seq();
    // The fault: the update of y's row fails, after its version row went in.
    let raw = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER red_team_fault BEFORE UPDATE ON contexts WHEN NEW.id = 'y' \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
    )
    .unwrap();

    // Hold the writer so that both writes land in one batch, a's first.
    let gate = Gate::hold(f.svc.store()).await;
    let a = queue(f.svc.write("a", "x", Change::Put(json!({"n": 1})), Some(1)));
    let b = queue(f.svc.write("b", "y", Change::Put(json!({"n": 1})), Some(1)));
    gate.open().await.unwrap();
    let (a, b) = (a.await, b.await);
    assert!(b.is_err(), "the faulty write: {b:?}");
    // a's first try was rolled back with the batch; its second one committed.
    let a = a.unwrap_or_else(|e| panic!("the other agent's write in the same batch: {e}"));
    assert_eq!(a.version, 2);
    assert_eq!(f.svc.bus().last_seq(), seq_before + 1, "only a's event");
    let x = f.svc.get("a", "x").await.unwrap();
    assert_eq!((x.version, x.doc), (2, json!({"n": 1})));
    // Nothing of b's write is stored, visible or announced.
    let y = f.svc.get("b", "y").await.unwrap();
    assert_eq!((y.version, y.doc), (1, json!({"n": 0})));
    let y_versions: i64 = f
        .svc
        .store()
        .read(|conn| {
            Ok(conn.query_row(
                "SELECT count(*) FROM versions WHERE context_id = 'y'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .unwrap();
    assert_eq!(y_versions, 1);
    // b retries at the same base once the fault is gone.
    raw.execute_batch("DROP TRIGGER red_team_fault").unwrap();
    let w = f
        .svc
        .write("b", "y", Change::Put(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    assert_eq!(w.version, 2);
    drop(f);
    let f = fixture_at(StoreConfig::at(dir.path())).await;
    for (agent, id) in [("a", "x"), ("b", "y")] {
        let view = f.svc.get(agent, id).await.unwrap();
        assert_eq!(
            (view.version, view.doc.clone()),
            (2, json!({"n": 1})),
            "{id}"
        );
    }
}

/// Red team: a context written before encryption was enabled gets its data key on its first
/// write after a master key is configured, and that write reseals every earlier version
/// (`ensure_key`), after the key rows are in. A prepared write runs without a savepoint, so
/// an old version that cannot be resealed (here its blob file is gone; a corrupt row does the
/// same) aborted the whole batch: every write of another agent batched with it failed, again
/// at each retry, for as long as the context stayed broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_that_cannot_be_resealed_fails_alone_not_with_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = || StoreConfig {
        blob_threshold: 64,
        ..StoreConfig::at(dir.path())
    };
    let f = fixture_at(config()).await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(
        &f.svc,
        "a",
        "x",
        SyncStrategy::Strong,
        json!({"t": "a".repeat(200)}),
    )
    .await;
    f.svc
        .write(
            "a",
            "x",
            Change::Put(json!({"t": "b".repeat(200)})),
            Some(1),
        )
        .await
        .unwrap();
    ctx(&f.svc, "b", "y", SyncStrategy::Strong, json!({"n": 0})).await;
    drop(f);
    // The blob of x's first version goes missing.
    let raw = rusqlite::Connection::open(dir.path().join(crate::store::DB_FILE)).unwrap();
    let hash: String = raw
        .query_row(
            "SELECT doc_blob FROM versions WHERE context_id = 'x' AND version = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(raw);
    std::fs::remove_file(dir.path().join(crate::store::BLOB_DIR).join(hash)).unwrap();

    let f = fixture_at(StoreConfig {
        master_key: Some(crate::store::crypto::MasterKey::from_hex(&"42".repeat(32)).unwrap()),
        ..config()
    })
    .await;
    // Read back into memory, so the writes are prepared.
    for (agent, id) in [("a", "x"), ("b", "y")] {
        f.svc.get(agent, id).await.unwrap();
    }
    for round in 0..2 {
        // Hold the writer so that both writes land in one batch, b's first.
        let gate = Gate::hold(f.svc.store()).await;
        let base = round + 1;
        let b = queue(
            f.svc
                .write("b", "y", Change::Put(json!({"n": base})), Some(base)),
        );
        let a = queue(
            f.svc
                .write("a", "x", Change::Put(json!({"t": "c"})), Some(2)),
        );
        gate.open().await.unwrap();
        let (b, a) = (b.await, a.await);
        assert!(a.is_err(), "round {round}: x cannot be resealed: {a:?}");
        assert_eq!(
            b.map(|w| w.version).map_err(|e| e.to_string()),
            Ok(base + 1),
            "round {round}: b's write to y shared a batch with a's write to x"
        );
    }
}
