//! Conflicts through the WIT: a real guest (`worker`) reads a manual conflict's competing
//! values, resolves it, reads history, patches by JSON Pointer and rolls back, with the
//! `write` permission; with `read` only, every changing call is refused.

use super::*;
use qi_guest_artifacts::WORKER_COMPONENT;

fn steps(steps: Value) -> Value {
    json!({"subtask": "probe", "attempt": 1, "inputs": {"steps": steps}})
}

/// Runs `agent` with `steps`; its probes.
async fn probes(agent: SubAgent, task_id: &str, s: Value) -> Vec<Value> {
    let report = start(agent, task_id, steps(s)).await.unwrap();
    ok(&report)["probes"].as_array().unwrap().clone()
}

/// A manual context in conflict on `/f`: the operator wrote 1 and agent `peer` wrote 2, both
/// from version 1 (version 3 holds the conflict).
async fn manual_conflict(peer: &str) -> String {
    let id = create("manual", SyncStrategy::Manual, json!({"f": 0})).await;
    let svc = &context_host().await.svc;
    svc.register_agent(peer, Default::default()).await.unwrap();
    svc.share(
        OPERATOR,
        &id,
        &[peer.to_string()],
        &[Permission::Read, Permission::Write],
        None,
    )
    .await
    .unwrap();
    svc.write(OPERATOR, &id, Change::Merge(json!({"f": 1})), Some(1))
        .await
        .unwrap();
    let r = svc
        .write(peer, &id, Change::Merge(json!({"f": 2})), Some(1))
        .await
        .unwrap();
    assert_eq!((r.status, r.version), (ContextStatus::Conflict, 3));
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_write_resolves_patches_and_rolls_back_through_the_wit() {
    let peer = unique("peer");
    let id = manual_conflict(&peer).await;
    let resolver = spawn(WORKER_COMPONENT).await;
    share(&id, &[&resolver], &[Permission::Read, Permission::Write]).await;
    let me = resolver.id().to_string();
    let p = probes(
        resolver,
        "resolver",
        json!([
            {"context_pending": id},
            {"context_resolve": {"id": id, "agent": peer}},
            {"context_pending": id},
            {"context_pointer_patch": {"id": id, "ops": [
                {"op": "set", "path": "/g", "value": {"h": 5}},
                {"op": "remove", "path": "/f"}
            ], "base": 4}},
            {"context_history": {"id": id, "limit": 3}},
            {"context_rollback": {"id": id, "version": 1}},
        ]),
    )
    .await;
    for probe in &p {
        assert_eq!(probe["ok"], true, "{probe}");
    }
    let pending = &p[0]["value"];
    assert_eq!(pending["fields"]["/f"][OPERATOR], 1, "{pending}");
    assert_eq!(pending["fields"]["/f"][&peer], 2, "{pending}");
    let values: Vec<&Value> = pending["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["value"])
        .collect();
    assert_eq!(values, [&json!(1), &json!(2)], "{pending}");
    assert_eq!(p[1]["value"]["version"], 4);
    assert_eq!(p[2]["value"], Value::Null, "resolved: nothing pending");
    assert_eq!(p[3]["value"]["version"], 5);
    let history = p[4]["value"].as_array().unwrap();
    let seen: Vec<(u64, &str, &str)> = history
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["agent"].as_str().unwrap(),
                v["op"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (5, me.as_str(), "patch"),
            (4, me.as_str(), "resolve"),
            (3, peer.as_str(), "patch")
        ]
    );
    assert_eq!(history[0]["doc"], json!({"g": {"h": 5}}));
    assert_eq!(history[1]["doc"], json!({"f": 2}));
    assert_eq!(p[5]["value"]["version"], 6);
    let view = context_host().await.svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!((view.version, view.doc), (6, json!({"f": 0})));
    assert_eq!(view.status, ContextStatus::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_read_only_every_changing_call_is_refused_and_reads_are_bounded() {
    let peer = unique("peer");
    let id = manual_conflict(&peer).await;
    let reader = spawn(WORKER_COMPONENT).await;
    share(&id, &[&reader], &[Permission::Read]).await;
    let p = probes(
        reader,
        "reader",
        json!([
            {"context_resolve": {"id": id, "agent": peer}},
            {"context_rollback": {"id": id, "version": 1}},
            {"context_pointer_patch": {"id": id, "ops": [{"op": "set", "path": "/f", "value": 3}]}},
            {"context_pending": id},
            {"context_history": {"id": id, "limit": 64}},
            {"context_history": {"id": id, "limit": 65}},
            {"context_history": {"id": id, "limit": 0}},
        ]),
    )
    .await;
    for probe in &p[..3] {
        assert_eq!(probe["ok"], false, "{probe}");
        let error = probe["error"].as_str().unwrap();
        assert!(error.starts_with("access-denied"), "{probe}");
        assert!(error.contains("does not grant write"), "{probe}");
    }
    // Reading is allowed: the pending values and up to 64 versions.
    assert_eq!(p[3]["ok"], true, "{}", p[3]);
    assert_eq!(p[3]["value"]["fields"]["/f"][&peer], 2);
    assert_eq!(p[4]["ok"], true, "{}", p[4]);
    assert_eq!(p[4]["value"].as_array().unwrap().len(), 3);
    for probe in &p[5..] {
        assert_eq!(probe["ok"], false, "{probe}");
        let error = probe["error"].as_str().unwrap();
        assert!(
            error.starts_with("invalid") && error.contains("1 to 64"),
            "{probe}"
        );
    }
    let view = context_host().await.svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!(
        (view.version, view.status),
        (3, ContextStatus::Conflict),
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pointer_patch_of_1024_operations_is_applied_and_one_more_is_refused_unapplied() {
    let id = create("pointer", SyncStrategy::Eventual, json!({})).await;
    let writer = spawn(WORKER_COMPONENT).await;
    share(&id, &[&writer], &[Permission::Read, Permission::Write]).await;
    let ops = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"op": "set", "path": format!("/k{i}"), "value": i}))
            .collect()
    };
    let p = probes(
        writer,
        "pointer",
        json!([
            {"context_pointer_patch": {"id": id, "ops": ops(1_025), "base": 1}},
            {"context_pointer_patch": {"id": id, "ops": ops(1_024), "base": 1}},
        ]),
    )
    .await;
    assert_eq!(p[0]["ok"], false, "{}", p[0]);
    let error = p[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("invalid") && error.contains("1024"),
        "{error}"
    );
    assert_eq!(p[1]["ok"], true, "{}", p[1]);
    assert_eq!(p[1]["value"]["version"], 2);
    let view = context_host().await.svc.get(OPERATOR, &id).await.unwrap();
    assert_eq!(view.doc.as_object().unwrap().len(), 1_024);
    assert_eq!(view.doc["k1023"], 1023);
}
