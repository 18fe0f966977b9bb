//! No plaintext at rest with a master key, for what a coordinated run stores besides context
//! values: votes, contributions and checkpoint states (in `sync-resolved` events, sync
//! outcomes and checkpoint documents) and published event data. The pair without a key shows
//! the scan looks where those values would be.

use crate::coord::{Harness, header, one, outcome, point, point_run, result};
use qi_host::StoreConfig;
use qi_host::context::OPERATOR;
use qi_host::events::{EventFilter, EventType, NewEvent};
use qi_host::store::crypto::MasterKey;
use serde_json::json;

const VOTE: &str = "VOTE-CANARY-7c1e";
const CONTRIBUTION: &str = "CONTRIB-CANARY-3b9d";
const CHECKPOINT: &str = "CKPT-CANARY-a41f";
const EVENT: &str = "EVENT-CANARY-90d2";
const CANARIES: [&str; 4] = [VOTE, CONTRIBUTION, CHECKPOINT, EVENT];

/// Runs a decision, an aggregation and a checkpoint whose payloads carry canaries, publishes
/// an event carrying one, checks each reached the host, and returns the canaries found in any
/// file of the data directory (database, WAL, blobs).
async fn canaries_at_rest(key: Option<MasterKey>) -> Vec<(String, &'static str)> {
    let dir = tempfile::tempdir().unwrap();
    let svc = crate::common::context_service(StoreConfig {
        master_key: key,
        ..StoreConfig::at(dir.path())
    })
    .await
    .unwrap();
    let h = Harness::with_context(svc.clone());

    let vote = format!(r#"[{{ vote = {{ point = "pt", choice = "{VOTE}" }} }}]"#);
    let (r, _) = h
        .run(&point_run(
            &point("decision", "\"all-complete\"", "", "wait", ""),
            [&vote, &vote, &vote],
        ))
        .await;
    assert_eq!(outcome(&r, "p1")["result"]["decision"], VOTE, "{r:#?}");

    let give = format!(r#"[{{ contribute = {{ point = "pt", value = "{CONTRIBUTION}" }} }}]"#);
    let (r, _) = h
        .run(&point_run(
            &point(
                "aggregation",
                "\"all-complete\"",
                "",
                "wait",
                "reducer = \"concat\"",
            ),
            [&give, &give, &give],
        ))
        .await;
    assert_eq!(
        outcome(&r, "p1")["result"],
        json!([CONTRIBUTION, CONTRIBUTION, CONTRIBUTION]),
        "{r:#?}"
    );

    let steps = format!(
        r#"[{{ checkpoint = {{ point = "pt", state = {{ secret = "{CHECKPOINT}" }} }} }}]"#
    );
    let toml = header(
        "hybrid",
        "graceful-degradation",
        "[[strategy.synchronizationPoints]]\nid = \"pt\"\ntype = \"checkpoint\"\nparticipants = [\"p1\"]\n",
    ) + &one("p1", None, &steps, "");
    let (r, events) = h.run(&toml).await;
    assert!(r.success, "{r:#?}");
    assert!(result(&r, "p1").output.is_some());
    assert!(
        events.iter().any(|e| e["kind"] == "sync-resolved"),
        "{events:?}"
    );
    let doc = svc
        .get(
            OPERATOR,
            &format!("run/{}/checkpoint/pt/p1", r.coordination_id),
        )
        .await
        .unwrap()
        .doc;
    assert_eq!(doc["state"]["secret"], CHECKPOINT);

    svc.bus()
        .publish(
            NewEvent::new(EventType::Custom)
                .context("notes")
                .data(json!({"note": EVENT})),
        )
        .await
        .unwrap();
    let filter = EventFilter {
        context_ids: vec!["notes".into()],
        ..EventFilter::default()
    };
    let back = svc.bus().history(&filter, None, 10).await.unwrap();
    assert_eq!(back[0].data["note"], EVENT, "the event reads back");

    let mut found = Vec::new();
    for (path, bytes) in crate::common::files_under(dir.path()) {
        for c in CANARIES {
            if crate::common::contains_bytes(&bytes, c.as_bytes()) {
                found.push((path.display().to_string(), c));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_key_votes_contributions_checkpoints_and_events_are_sealed_at_rest() {
    let found = canaries_at_rest(Some(MasterKey::generate())).await;
    assert!(found.is_empty(), "plaintext at rest: {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_key_the_same_run_leaves_every_canary_on_disk() {
    let found = canaries_at_rest(None).await;
    for c in CANARIES {
        assert!(
            found.iter().any(|(_, f)| *f == c),
            "`{c}` not on disk: {found:?}"
        );
    }
}
