//! Writes worked out on the caller's thread (`prepared`): they store exactly what the writer
//! would, and the writer works a write out again when the context changed in between.

use super::hot_tier::bounded;
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
    let used = f
        .svc
        .run(
            Some("c".into()),
            Box::new(move |sh, inner, ctx| {
                Ok(ContextService::commit_prepared(sh, inner, ctx, "c", prepared).is_some())
            }),
        )
        .await
        .unwrap();
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
    let outcome = f
        .svc
        .run(
            Some("c".into()),
            Box::new(move |sh, inner, ctx| {
                match ContextService::commit_prepared(sh, inner, ctx, "c", prepared) {
                    Some(Err(OpError::Committed(e))) => Ok(Some(e)),
                    Some(_) => Ok(None),
                    None => panic!("the context did not change: the prepared write applies"),
                }
            }),
        )
        .await
        .unwrap();
    assert!(
        matches!(outcome, Some(ContextError::AccessDenied { .. })),
        "{outcome:?}"
    );
    assert_eq!(f.svc.get("a", "c").await.unwrap().doc, json!({"x": 1}));
}
