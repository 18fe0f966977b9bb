//! `subscriber`: event delivery to a guest is complete, in order, resumable and ends on revocation.

use super::*;

const WRITES: u64 = 10;

/// Update events as the subscriber reports them: `(seq, version, agent)`.
fn reported(out: &Value) -> Vec<(u64, u64, String)> {
    out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["version"].as_u64().unwrap(),
                e["agent"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_exactly_the_updates_after_subscribing_in_order_and_resumes() {
    let id = create("subscribed", SyncStrategy::Strong, json!({"n": 0})).await;
    let svc = &context_host().await.svc;
    // Committed before the subscription: must not be delivered.
    svc.write(
        OPERATOR,
        &id,
        Change::Merge(json!({"before": true})),
        Some(1),
    )
    .await
    .unwrap();
    let watcher = spawn(SUBSCRIBER_COMPONENT).await;
    let writer = spawn(RACER_COMPONENT).await;
    share(&id, &[&watcher], &[Permission::Read]).await;
    share(&id, &[&writer], &[Permission::Read, Permission::Write]).await;
    let writer_id = writer.id().to_string();

    // The writer's updates, then the operator's end marker: the watcher stops at the
    // marker, so an extra or repeated event would show up before it.
    let key = crate::common::unique_key("subscriber");
    let watching = start(
        watcher,
        "subscriber",
        json!({"context": id, "expect": WRITES + 1, "timeout_ms": 60_000, "signal": key}),
    );
    let subscribed = crate::common::next_signal(&key).await;
    assert_eq!(
        subscribed["subscribed"], true,
        "the watcher's first signal says it has subscribed"
    );
    let starts_after = subscribed["starts_after"].as_u64().unwrap();
    let writing = start(
        writer,
        "writer",
        json!({"context": id, "writes": WRITES, "field": "n", "strategy": "strong"}),
    );
    assert_eq!(ok(&writing.await.unwrap())["acked"], WRITES);
    let marker = svc
        .write(
            OPERATOR,
            &id,
            Change::Merge(json!({"done": true})),
            Some(WRITES + 2),
        )
        .await
        .unwrap();
    assert_eq!(marker.version, WRITES + 3);
    let watched = crate::common::hang_guard("the watcher's end", watching)
        .await
        .unwrap();
    let out = ok(&watched);
    assert_eq!(out["error"], Value::Null, "{out}");
    assert_eq!(out["received"], WRITES + 1, "{out}");
    assert_eq!(out["gap_free"], true);
    let events = reported(out);
    let expected: Vec<(u64, String)> = (3..WRITES + 3)
        .map(|v| (v, writer_id.clone()))
        .chain([(WRITES + 3, OPERATOR.to_string())])
        .collect();
    let got: Vec<(u64, String)> = events.iter().map(|(_, v, a)| (*v, a.clone())).collect();
    assert_eq!(
        got, expected,
        "the writer's updates in version order, then the marker"
    );

    // They are the context's stored `updated` events after the subscription, seq for seq.
    let filter = EventFilter {
        event_types: vec![EventType::Updated],
        context_ids: vec![id.clone()],
        ..EventFilter::default()
    };
    let stored = svc.bus().history(&filter, Some(0), 1000).await.unwrap();
    let stored: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    let seen: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(
        stored.len(),
        seen.len() + 1,
        "all but the one before subscribing"
    );
    assert_eq!(seen, stored[1..]);
    // A subscription "from now" says where now was: after the update before it, before the
    // first one it delivered.
    assert!(
        stored[0] <= starts_after && starts_after < seen[0],
        "starts after {starts_after}: {stored:?}"
    );
    assert_eq!(out["last_seq"], *seen.last().unwrap());

    // A later subscriber resuming after the third update gets exactly the rest.
    let resumer = spawn(SUBSCRIBER_COMPONENT).await;
    share(&id, &[&resumer], &[Permission::Read]).await;
    let report = crate::common::hang_guard(
        "the resumer's end",
        resumer.run(task(
            "resumer",
            json!({"context": id, "expect": seen.len() - 3, "timeout_ms": 60_000,
                   "after_seq": seen[2]}),
        )),
    )
    .await;
    let out = ok(&report);
    assert_eq!(out["error"], Value::Null, "{out}");
    let resumed: Vec<u64> = reported(out).iter().map(|e| e.0).collect();
    assert_eq!(resumed, seen[3..]);
    assert_eq!(out["gap_free"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_subscriber_stops_receiving_at_once() {
    let id = create("revoked", SyncStrategy::Eventual, json!({"n": 0})).await;
    let watcher = spawn(SUBSCRIBER_COMPONENT).await;
    share(&id, &[&watcher], &[Permission::Read]).await;
    let watcher_id = watcher.id().to_string();
    let key = crate::common::unique_key("revoked");
    let watching = start(
        watcher,
        "subscriber",
        json!({"context": id, "expect": 3, "timeout_ms": 60_000, "signal": key}),
    );
    assert_eq!(crate::common::next_signal(&key).await["subscribed"], true);
    let svc = &context_host().await.svc;
    let first = svc
        .write(OPERATOR, &id, Change::Merge(json!({"n": 1})), Some(1))
        .await
        .unwrap();
    // The watcher has the first update in hand before its share is revoked.
    let got = crate::common::next_signal(&key).await;
    let first_seq = got["seq"].as_u64().unwrap();
    svc.revoke(OPERATOR, &id, std::slice::from_ref(&watcher_id))
        .await
        .unwrap();
    let refused = svc
        .write(OPERATOR, &id, Change::Merge(json!({"n": 2})), Some(2))
        .await
        .unwrap();
    svc.write(OPERATOR, &id, Change::Merge(json!({"n": 3})), Some(3))
        .await
        .unwrap();
    let report = crate::common::hang_guard("the revoked watcher's end", watching)
        .await
        .unwrap();
    let out = ok(&report);
    let events = reported(out);
    assert_eq!(
        events,
        [(first_seq, first.version, OPERATOR.to_string())],
        "only the update before the revocation: {out}"
    );
    let error = out["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("access-denied"), "{out}");
    // The refused event was checked before it counted as delivered: the resume point the
    // error names stands just before it.
    let updates = EventFilter {
        context_ids: vec![id.clone()],
        event_types: vec![EventType::Updated],
        ..EventFilter::default()
    };
    let stored = svc.bus().history(&updates, Some(0), 100).await.unwrap();
    let refused_seq = stored
        .iter()
        .find(|e| e.data["version"] == refused.version)
        .expect("the refused update is stored")
        .seq;
    let resume = format!("nothing after seq {} was delivered", refused_seq - 1);
    assert!(error.contains(&resume), "{error}");
}
