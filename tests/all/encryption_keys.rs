//! Encryption keys: a rotation whose transaction fails loses nothing (the key it made is never
//! used), and unregistering an agent rotates the keys of the contexts shared with it.

use qi_host::context::{
    AgentCapabilities, Change, ContextService, NewContext, OPERATOR, Permission,
};
use qi_host::store::crypto::MasterKey;
use qi_host::{EventBus, EventBusConfig, Store, StoreConfig};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;

async fn service(store: Store) -> ContextService {
    let bus = EventBus::new(store.clone(), EventBusConfig::default())
        .await
        .unwrap();
    ContextService::open(
        store,
        bus,
        Arc::new(qi_host::context::SystemClock),
        qi_host::context::ContextConfig::default(),
    )
    .await
    .unwrap()
}

fn open_store(dir: &Path, key: &MasterKey) -> Store {
    Store::open(StoreConfig {
        master_key: Some(key.clone()),
        ..StoreConfig::at(dir)
    })
    .unwrap()
}

/// Makes the write that stores key version 2 fail: `RAISE(ABORT)` fails the write itself;
/// a deferred foreign-key violation lets every statement succeed and fails the `COMMIT`.
const FAIL_THE_WRITE: &str = "
CREATE TRIGGER fail_rotation AFTER INSERT ON context_keys WHEN NEW.key_version = 2
BEGIN SELECT RAISE(ABORT, 'test: the key row does not commit'); END;";
const FAIL_THE_COMMIT: &str = "
CREATE TABLE fail_parent(id INTEGER PRIMARY KEY);
CREATE TABLE fail_child(p INTEGER REFERENCES fail_parent(id) DEFERRABLE INITIALLY DEFERRED);
CREATE TRIGGER fail_rotation AFTER INSERT ON context_keys WHEN NEW.key_version = 2
BEGIN INSERT INTO fail_child VALUES (42); END;";

/// A revoke (which rotates the data key) whose transaction fails, then more writes, a restart
/// with the same master key, and everything read back.
async fn a_failed_rotation_then_restart(failure: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    {
        let store = open_store(dir.path(), &key);
        let svc = service(store.clone()).await;
        for a in ["alice", "bob"] {
            svc.register_agent(a, AgentCapabilities::default())
                .await
                .unwrap();
        }
        svc.create(
            "alice",
            NewContext {
                id: Some("plan".into()),
                context_type: "notes".into(),
                doc: json!({"step": 0}),
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
        svc.share("alice", "plan", &["bob".into()], &[Permission::Read], None)
            .await
            .unwrap();
        store
            .write(move |ctx| Ok(ctx.tx().execute_batch(failure)?))
            .await
            .unwrap();
        let e = svc
            .revoke("alice", "plan", &["bob".into()])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test: the key row does not commit") || e.contains("FOREIGN KEY"),
            "{e}"
        );
        for step in 1..=3 {
            svc.write(
                "alice",
                "plan",
                Change::Put(json!({"step": step})),
                Some(step),
            )
            .await
            .unwrap();
        }
        assert_eq!(svc.get("alice", "plan").await.unwrap().doc["step"], 3);
    }
    // A restart reads back every value written after the failed rotation.
    let svc = service(open_store(dir.path(), &key)).await;
    assert_eq!(svc.get(OPERATOR, "plan").await.unwrap().doc["step"], 3);
    let mut steps: Vec<i64> = svc
        .history(OPERATOR, "plan", 10)
        .await
        .unwrap()
        .iter()
        .filter_map(|v| v.doc["step"].as_i64())
        .collect();
    steps.sort();
    assert_eq!(steps, [0, 1, 2, 3]);
    // bob still holds the key every value is sealed under (the rotation never happened).
    assert_eq!(
        svc.decrypt_context_from_agent("bob", "plan", 4)
            .await
            .unwrap()["step"],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_write_fails_loses_no_later_value() {
    a_failed_rotation_then_restart(FAIL_THE_WRITE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_commit_fails_loses_no_later_value() {
    a_failed_rotation_then_restart(FAIL_THE_COMMIT).await;
}

/// After `leaves` is unregistered, its wrapped copy of the old key opens nothing written
/// later; `stays`, still shared, opens the new version (so the refusal is the rotation's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistering_an_agent_rotates_the_keys_of_contexts_shared_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(open_store(dir.path(), &MasterKey::generate())).await;
    crate::encryption::plan_shared_with_two_agents(&svc).await;
    for a in ["stays", "leaves"] {
        let v = svc.decrypt_context_from_agent(a, "plan", 2).await.unwrap();
        assert_eq!(v["step"], 2, "{a}");
    }
    svc.unregister_agent("leaves").await.unwrap();
    svc.write("owner", "plan", Change::Put(json!({"step": 3})), Some(2))
        .await
        .unwrap();
    assert_eq!(
        svc.decrypt_context_from_agent("stays", "plan", 3)
            .await
            .unwrap()["step"],
        3
    );
    let e = svc
        .decrypt_context_from_agent("leaves", "plan", 3)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no key for version"), "{e}");
}

/// A data directory written without a master key, then opened with one: the context's earlier
/// versions are sealed when it is first written under its new key (an unsealed row of a context
/// with a key is refused, so they would otherwise become unreadable), and earlier events are
/// sealed on open; after a restart everything reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_before_encryption_stays_readable_once_a_key_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let plain = || Store::open(StoreConfig::at(dir.path())).unwrap();
    {
        let svc = service(plain()).await;
        svc.create(
            OPERATOR,
            NewContext {
                id: Some("old".into()),
                context_type: "notes".into(),
                doc: json!({"step": 1}),
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
        svc.write(OPERATOR, "old", Change::Put(json!({"step": 2})), Some(1))
            .await
            .unwrap();
    }
    let key = MasterKey::generate();
    {
        let svc = service(open_store(dir.path(), &key)).await;
        // Readable before the first write under a key (the context has none yet)...
        assert_eq!(svc.get(OPERATOR, "old").await.unwrap().doc["step"], 2);
        // ...and the first write gives it one and seals the earlier versions.
        svc.write(OPERATOR, "old", Change::Put(json!({"step": 3})), Some(2))
            .await
            .unwrap();
    }
    let svc = service(open_store(dir.path(), &key)).await;
    let mut steps: Vec<i64> = svc
        .history(OPERATOR, "old", 10)
        .await
        .unwrap()
        .iter()
        .filter_map(|v| v.doc["step"].as_i64())
        .collect();
    steps.sort();
    assert_eq!(steps, [1, 2, 3]);
    let filter = qi_host::events::EventFilter {
        context_ids: vec!["old".into()],
        ..Default::default()
    };
    let events = svc.bus().history(&filter, None, 10).await.unwrap();
    assert!(events.len() >= 3, "{events:?}");
}
