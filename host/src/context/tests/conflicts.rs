//! Conflicts that keep every value: every rival since the base, bases that must be named and
//! retained, last-writer-wins by HLC, causal against eventual (with N × M concurrent
//! writers), manual's competing values.

use super::*;

pub(super) fn merge(v: Value) -> Change {
    Change::Merge(v)
}

fn refusal(e: ContextError) -> Refusal {
    match e {
        ContextError::Refused { refusal, .. } => refusal,
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn every_overlapping_rival_is_recorded_in_one_conflict() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b", "c"]).await;
    ctx(
        &f.svc,
        "a",
        "x",
        SyncStrategy::Eventual,
        json!({"f": 0, "g": 0}),
    )
    .await;
    share_all(&f.svc, "x", "a", &["b", "c"]).await;
    // b and c both change `f` after version 1; a, based on version 1, has seen neither.
    f.svc
        .write("b", "x", merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    f.svc
        .write("c", "x", merge(json!({"f": 2})), Some(2))
        .await
        .unwrap();
    f.svc
        .write("b", "x", merge(json!({"g": 5})), Some(3))
        .await
        .unwrap();
    let r = f
        .svc
        .write("a", "x", merge(json!({"f": 3})), Some(1))
        .await
        .unwrap();
    assert_eq!(
        r.conflicts.len(),
        1,
        "one conflict for the field: {:?}",
        r.conflicts
    );
    let c = &r.conflicts[0];
    assert_eq!(c.field, "/f");
    assert_eq!(
        c.agent_values,
        BTreeMap::from([
            ("a".to_string(), json!(3)),
            ("b".to_string(), json!(1)),
            ("c".to_string(), json!(2)),
        ]),
        "both rivals and the writer"
    );
    // The pair: a write based on the version after both rivals meets no conflict.
    let r = f
        .svc
        .write("a", "x", merge(json!({"f": 4})), Some(r.version))
        .await
        .unwrap();
    assert!(r.conflicts.is_empty(), "{:?}", r.conflicts);
}

#[tokio::test]
async fn eventual_and_causal_writes_must_name_their_base_and_manual_ones_need_not() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    for (id, strategy) in [("e", SyncStrategy::Eventual), ("c", SyncStrategy::Causal)] {
        ctx(&f.svc, "a", id, strategy, json!({})).await;
        let e = f
            .svc
            .write("a", id, merge(json!({"k": 1})), None)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("`baseVersion` is required"), "{text}");
        assert!(
            text.contains("context::update"),
            "points to the SDK's update: {text}"
        );
        assert_eq!(
            f.svc.get("a", id).await.unwrap().version,
            1,
            "nothing written"
        );
        // The pair: with its base the same write is accepted.
        f.svc
            .write("a", id, merge(json!({"k": 1})), Some(1))
            .await
            .unwrap();
    }
    ctx(&f.svc, "a", "m", SyncStrategy::Manual, json!({})).await;
    f.svc
        .write("a", "m", merge(json!({"k": 1})), None)
        .await
        .unwrap();
    // The host's own writer reads the version it replaces.
    f.svc
        .put_as_operator("e", "notes", json!({"k": 9}))
        .await
        .unwrap();
    assert_eq!(f.svc.get("a", "e").await.unwrap().doc, json!({"k": 9}));
}

#[tokio::test]
async fn a_base_dropped_by_retention_is_refused_not_diffed_against_the_current_document() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    f.svc
        .create(
            "a",
            NewContext {
                id: Some("x".into()),
                context_type: "t".into(),
                doc: json!({"f": 0}),
                strategy: SyncStrategy::Eventual,
                history_limit: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    share_all(&f.svc, "x", "a", &["b"]).await;
    for (i, base) in (1..=4).zip(1..) {
        f.svc
            .write("b", "x", merge(json!({"f": i})), Some(base))
            .await
            .unwrap();
    }
    // Versions 3, 4, 5 are kept; 1 and 2 are gone.
    for change in [merge(json!({"f": 100})), Change::Put(json!({"f": 100}))] {
        match refusal(f.svc.write("a", "x", change, Some(2)).await.unwrap_err()) {
            Refusal::BaseNotRetained {
                base: 2,
                oldest: 3,
                current: 5,
            } => {}
            other => panic!("{other:?}"),
        }
    }
    let view = f.svc.get("a", "x").await.unwrap();
    assert_eq!((view.version, &view.doc), (5, &json!({"f": 4})));
    // The pair: the oldest retained base is accepted, and meets b's later changes.
    let r = f
        .svc
        .write("a", "x", Change::Put(json!({"f": 100})), Some(3))
        .await
        .unwrap();
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].agent_values["b"], json!(4));
}

#[tokio::test]
async fn a_base_at_most_the_bound_behind_is_accepted_one_more_is_refused() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Eventual, json!({"n": 0})).await;
    share_all(&f.svc, "x", "a", &["b"]).await;
    let max = engine::MAX_VERSIONS_BEHIND;
    for v in 1..=max {
        f.svc
            .write("a", "x", merge(json!({ "n": v })), Some(v))
            .await
            .unwrap();
    }
    // The context is at version max + 1: base 1 is exactly `max` behind.
    let r = f
        .svc
        .write("b", "x", merge(json!({"m": 1})), Some(1))
        .await
        .unwrap();
    assert!(r.new_version);
    match refusal(
        f.svc
            .write("b", "x", merge(json!({"m": 2})), Some(1))
            .await
            .unwrap_err(),
    ) {
        Refusal::BaseTooOld {
            base: 1,
            behind,
            max: m,
            ..
        } => {
            assert_eq!((behind, m), (max + 1, max));
        }
        other => panic!("{other:?}"),
    }
}

fn state_with_holder(holder_hlc: Hlc) -> ContextState {
    let mut field_stamps = BTreeMap::new();
    field_stamps.insert(
        "/f".to_string(),
        StampedField {
            version: 2,
            hlc: holder_hlc,
            agent: "b".into(),
        },
    );
    ContextState {
        id: "x".into(),
        owner: "o".into(),
        context_type: "t".into(),
        schema: None,
        strategy: SyncStrategy::Eventual,
        resolution: ConflictResolution::LastWriteWins,
        status: ContextStatus::Active,
        version: 2,
        revision: 2,
        hlc: Hlc {
            wall_ms: 50,
            logical: 0,
        },
        doc: json!({"f": "b"}),
        field_stamps,
        pending: None,
        history_limit: None,
        created_at: 0,
        updated_at: 0,
        resident: true,
        kv_revision: 0,
    }
}

fn version(v: u64, agent: &str, doc: Value) -> ContextVersion {
    ContextVersion {
        context_id: "x".into(),
        version: v,
        revision: v,
        agent_id: agent.into(),
        hlc: Hlc {
            wall_ms: v,
            logical: 0,
        },
        op: "patch".into(),
        doc,
    }
}

#[test]
fn last_writer_wins_compares_hlc_timestamps_not_commit_order() {
    // b's change holds `f` with HLC 20. a's write is applied after it (commit order) but was
    // accepted earlier (HLC 10): it loses, and its value is kept in the conflict.
    let state = state_with_holder(Hlc {
        wall_ms: 20,
        logical: 0,
    });
    let observed = [
        version(1, "o", json!({"f": "o"})),
        version(2, "b", json!({"f": "b"})),
    ];
    let at = Stamp {
        hlc: Hlc {
            wall_ms: 60,
            logical: 0,
        },
        revision: 3,
        now_ms: 60,
    };
    let write = |hlc: u64| Write {
        agent: "a".into(),
        base_version: Some(1),
        changes: vec![FieldChange {
            path: "/f".into(),
            value: Some(json!("a")),
        }],
        op: "patch",
        hlc: Hlc {
            wall_ms: hlc,
            logical: 0,
        },
    };
    let older = engine::apply_write(&state, &write(10), at, None, &observed).unwrap();
    assert!(
        older.version.is_none(),
        "the older write lost its only field"
    );
    assert_eq!(older.state.doc, json!({"f": "b"}));
    let c = &older.conflicts[0];
    assert_eq!(c.agent_values["a"], json!("a"));
    assert_eq!(c.resolution.as_ref().unwrap().resolved_value, json!("b"));
    // The pair: accepted after b's (HLC 30), the same write wins.
    let newer = engine::apply_write(&state, &write(30), at, None, &observed).unwrap();
    assert_eq!(newer.state.doc, json!({"f": "a"}));
    assert_eq!(
        newer.conflicts[0]
            .resolution
            .as_ref()
            .unwrap()
            .resolved_value,
        json!("a")
    );
}

#[tokio::test]
async fn causal_refuses_a_write_that_did_not_see_the_writers_own_earlier_one_eventual_does_not() {
    let f = fixture().await;
    agents(&f.svc, &["a"]).await;
    for (id, strategy) in [("e", SyncStrategy::Eventual), ("c", SyncStrategy::Causal)] {
        ctx(&f.svc, "a", id, strategy, json!({"f": 0})).await;
        f.svc
            .write("a", id, merge(json!({"f": 1})), Some(1))
            .await
            .unwrap();
        let again = f.svc.write("a", id, merge(json!({"g": 1})), Some(1)).await;
        match strategy {
            SyncStrategy::Eventual => {
                let r = again.unwrap();
                assert!(r.conflicts.is_empty(), "own writes never conflict");
            }
            _ => match refusal(again.unwrap_err()) {
                Refusal::NotCausal { base: 1, own: 2 } => {}
                other => panic!("{other:?}"),
            },
        }
    }
    // The pair: based on its own last write, the causal write is accepted.
    f.svc
        .write("a", "c", merge(json!({"g": 1})), Some(2))
        .await
        .unwrap();
    assert_eq!(
        f.svc.get("a", "c").await.unwrap().doc,
        json!({"f": 1, "g": 1})
    );
}

/// N writers × M writes each under `causal` (last-writer-wins), each write based on the
/// version the writer's previous write returned, as causal requires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_n_writers_by_m_writes_merge_their_fields_and_keep_every_overlap() {
    const N: usize = 8;
    const M: u64 = 10;
    let f = fixture().await;
    let ws =
        writers_on_shared_context(&f, N, SyncStrategy::Causal, json!({"shared": "initial"})).await;
    let mut tasks = Vec::new();
    for w in ws.clone() {
        let svc = f.svc.clone();
        tasks.push(tokio::spawn(async move {
            let (mut base, mut made, mut written) = (1, 0, Vec::new());
            for i in 0..M {
                let value = format!("{w}-{i}");
                let patch = json!({ w.as_str(): i, "shared": value });
                let r = svc.write(&w, "c", merge(patch), Some(base)).await.unwrap();
                made += u64::from(r.new_version);
                base = r.version;
                written.push(value);
            }
            (w, made, written)
        }));
    }
    let mut made_total = 0;
    let mut written = BTreeMap::new();
    for t in tasks {
        let (w, made, values) = t.await.unwrap();
        made_total += made;
        written.insert(w, values);
    }
    let end = f.svc.get("owner", "c").await.unwrap();
    for w in &ws {
        assert_eq!(
            end.doc[w.as_str()],
            M - 1,
            "{w}'s own field has its last write"
        );
    }
    assert_eq!(
        end.version,
        1 + made_total,
        "one version per write that won something"
    );
    let conflicts = f.svc.conflicts("owner", "c").await.unwrap();
    assert!(!conflicts.is_empty(), "the writers never overlapped");
    for c in &conflicts {
        assert_eq!(c.field, "/shared", "own fields never conflict: {c:?}");
        assert!(c.agent_values.len() >= 2, "{c:?}");
        for (agent, value) in &c.agent_values {
            assert!(
                written[agent].iter().any(|v| value == v),
                "{agent} wrote {value}: {c:?}"
            );
        }
        let outcome = c.resolution.as_ref().unwrap();
        assert_eq!(outcome.strategy, ConflictResolution::LastWriteWins);
        assert!(
            c.agent_values
                .values()
                .any(|v| v == &outcome.resolved_value)
        );
    }
    // No acknowledged value vanishes: each is in a version or kept in a conflict record.
    let versions = f.svc.history("owner", "c", 10_000).await.unwrap();
    for (w, values) in &written {
        for value in values {
            let value = json!(value);
            assert!(
                versions.iter().any(|v| v.doc["shared"] == value)
                    || conflicts
                        .iter()
                        .any(|c| c.agent_values.get(w) == Some(&value)),
                "{w}'s value {value} is lost"
            );
        }
    }
}

#[tokio::test]
async fn manual_keeps_every_competing_value_even_several_from_one_agent() {
    let f = fixture().await;
    agents(&f.svc, &["a", "b"]).await;
    ctx(&f.svc, "a", "x", SyncStrategy::Manual, json!({"f": 0})).await;
    share_all(&f.svc, "x", "a", &["b"]).await;
    f.svc
        .write("a", "x", merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    let r = f
        .svc
        .write("b", "x", merge(json!({"f": 2})), Some(1))
        .await
        .unwrap();
    assert_eq!(r.status, ContextStatus::Conflict);
    f.svc
        .write("b", "x", merge(json!({"f": 3})), None)
        .await
        .unwrap();
    f.svc
        .write("a", "x", merge(json!({"f": 4})), None)
        .await
        .unwrap();
    let pending = f.svc.get("a", "x").await.unwrap().pending.unwrap();
    let values: Vec<(String, Value)> = pending
        .values
        .iter()
        .map(|v| (v.agent.clone(), v.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            ("a".to_string(), json!(1)),
            ("b".to_string(), json!(2)),
            ("b".to_string(), json!(3)),
            ("a".to_string(), json!(4)),
        ]
    );
    // b, with `write`, resolves with one of the earlier values.
    let r = f
        .svc
        .resolve(
            "b",
            "x",
            ResolveChoice::Fields(BTreeMap::from([("/f".into(), json!(2))])),
        )
        .await
        .unwrap();
    assert_eq!(r.status, ContextStatus::Active);
    assert_eq!(f.svc.get("a", "x").await.unwrap().doc, json!({"f": 2}));
}
