//! Encryption at rest: only ciphertext on disk, a wrong or missing key fails cleanly, and an
//! agent whose share was revoked cannot open later versions.

use qi_host::StoreConfig;
use qi_host::context::{
    AgentCapabilities, Change, ContextService, NewContext, OPERATOR, Permission, SyncStrategy,
};
use qi_host::store::crypto::MasterKey;
use serde_json::json;
use std::path::Path;

async fn open(dir: &Path, key: Option<MasterKey>) -> Result<ContextService, String> {
    crate::common::context_service(StoreConfig {
        master_key: key,
        ..StoreConfig::at(dir)
    })
    .await
}

/// Every file under `dir`, read whole (the database, its WAL and the blob directory).
fn all_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    crate::common::files_under(dir)
        .into_iter()
        .map(|(p, bytes)| (p.display().to_string(), bytes))
        .collect()
}

fn contains(hay: &[u8], needle: &str) -> bool {
    crate::common::contains_bytes(hay, needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_ciphertext_at_rest_and_the_right_key_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    let markers = [
        "MARKER-SMALL-7f3a",
        "MARKER-BIG-91c2",
        "MARKER-V2-5d0e",
        "MARKER-A-c3b1",
        "MARKER-B-e8f4",
    ];
    {
        let svc = open(dir.path(), Some(key.clone())).await.unwrap();
        for a in ["alice", "bob"] {
            svc.register_agent(a, AgentCapabilities::default())
                .await
                .unwrap();
        }
        svc.create(
            "alice",
            NewContext {
                id: Some("small".into()),
                context_type: "notes".into(),
                doc: json!({"text": markers[0]}),
                strategy: SyncStrategy::Eventual,
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
        // Over the blob threshold (64 KiB): lives in the blob directory.
        let big = markers[1].repeat(10_000);
        svc.create(
            OPERATOR,
            NewContext {
                id: Some("big".into()),
                context_type: "notes".into(),
                doc: json!({"text": big}),
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
        svc.write(
            OPERATOR,
            "big",
            Change::Put(json!({"text": markers[2]})),
            Some(1),
        )
        .await
        .unwrap();
        // A conflict: alice and bob write the same field from the same base version.
        svc.share(
            "alice",
            "small",
            &["bob".into()],
            &[Permission::Read, Permission::Write],
            None,
        )
        .await
        .unwrap();
        svc.write(
            "alice",
            "small",
            Change::Merge(json!({"text": markers[3]})),
            Some(1),
        )
        .await
        .unwrap();
        svc.write(
            "bob",
            "small",
            Change::Merge(json!({"text": markers[4]})),
            Some(1),
        )
        .await
        .unwrap();
        assert!(!svc.conflicts(OPERATOR, "small").await.unwrap().is_empty());
    }
    let files = all_bytes(dir.path());
    assert!(
        files.iter().any(|(p, _)| p.contains("blobs")),
        "the big doc is a blob"
    );
    for (path, bytes) in &files {
        for m in markers {
            assert!(!contains(bytes, m), "plaintext `{m}` found in {path}");
        }
    }
    // The right key reads everything back: current values, history and conflict values.
    let svc = open(dir.path(), Some(key)).await.unwrap();
    let big = svc.get(OPERATOR, "big").await.unwrap();
    assert_eq!(big.doc["text"], markers[2]);
    let history = svc.history(OPERATOR, "big", 10).await.unwrap();
    assert!(history.iter().any(|v| {
        v.doc["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(markers[1]))
    }));
    let conflicts = svc.conflicts(OPERATOR, "small").await.unwrap();
    let values = serde_json::to_string(&conflicts).unwrap();
    assert!(
        values.contains(markers[3]) && values.contains(markers[4]),
        "{values}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_key_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let svc = open(dir.path(), Some(MasterKey::generate())).await.unwrap();
        svc.create(
            OPERATOR,
            NewContext {
                id: Some("c".into()),
                context_type: "notes".into(),
                doc: json!({"x": 1}),
                ..NewContext::default()
            },
        )
        .await
        .unwrap();
    }
    let e = open(dir.path(), Some(MasterKey::generate()))
        .await
        .unwrap_err();
    assert!(e.contains("another master key"), "{e}");
    let e = open(dir.path(), None).await.unwrap_err();
    assert!(e.contains("give its master key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_cannot_decrypt_newer_versions() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Some(MasterKey::generate())).await.unwrap();
    for a in ["owner", "stays", "leaves"] {
        svc.register_agent(a, AgentCapabilities::default())
            .await
            .unwrap();
    }
    svc.create(
        "owner",
        NewContext {
            id: Some("plan".into()),
            context_type: "plan".into(),
            doc: json!({"step": 1}),
            ..NewContext::default()
        },
    )
    .await
    .unwrap();
    svc.share(
        "owner",
        "plan",
        &["stays".into(), "leaves".into()],
        &[Permission::Read],
        None,
    )
    .await
    .unwrap();
    svc.write("owner", "plan", Change::Put(json!({"step": 2})), Some(1))
        .await
        .unwrap();
    // Both hold the key of version 2.
    for a in ["stays", "leaves", "owner"] {
        let v = svc.decrypt_context_from_agent(a, "plan", 2).await.unwrap();
        assert_eq!(v["step"], 2, "{a}");
    }
    svc.revoke("owner", "plan", &["leaves".into()])
        .await
        .unwrap();
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
    // What it could read before stays readable to it; nobody else's key opens it.
    assert_eq!(
        svc.decrypt_context_from_agent("leaves", "plan", 2)
            .await
            .unwrap()["step"],
        2
    );
    assert!(
        svc.decrypt_context_from_agent("stranger", "plan", 2)
            .await
            .is_err()
    );
}
