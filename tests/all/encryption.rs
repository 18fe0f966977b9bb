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

/// A directory used with a master key but holding no context yet (only sealed events) also
/// needs its key: opened without one it fails with the same one-line error.
#[tokio::test]
async fn a_directory_with_only_sealed_events_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = MasterKey::generate();
    {
        let svc = open(dir.path(), Some(key.clone())).await.unwrap();
        svc.register_agent("a", AgentCapabilities::default())
            .await
            .unwrap();
    }
    let e = open(dir.path(), None).await.unwrap_err();
    assert!(e.contains("give its master key"), "{e}");
    open(dir.path(), Some(key)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_cannot_decrypt_newer_versions() {
    let dir = tempfile::tempdir().unwrap();
    let svc = open(dir.path(), Some(MasterKey::generate())).await.unwrap();
    plan_shared_with_two_agents(&svc).await;
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

/// `qi-host <args> --data-dir <dir>` with `QI_HOST_MASTER_KEY` set to `env_key` (or unset).
fn qi_host(dir: &Path, env_key: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_qi-host"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env("QI_HOST_CACHE_DIR", crate::common::cache_dir())
        .env_remove("QI_HOST_MASTER_KEY");
    if let Some(key) = env_key {
        command.env("QI_HOST_MASTER_KEY", key);
    }
    command.output().expect("qi-host runs")
}

#[track_caller]
fn stdout_ok(o: &std::process::Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[track_caller]
fn refused(o: &std::process::Output, because: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a refusal: {stderr}");
    for part in because {
        assert!(stderr.contains(part), "`{part}` not in: {stderr}");
    }
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "a one-line error: {stderr}"
    );
}

/// An encrypted data directory holding `plan` (shared with bob, then revoked, so its key was
/// wrapped for an agent and rotated), written through the library.
async fn encrypted_plan(dir: &Path, key: &MasterKey) {
    let svc = open(dir, Some(key.clone())).await.unwrap();
    svc.register_agent("bob", AgentCapabilities::default())
        .await
        .unwrap();
    svc.create(
        OPERATOR,
        NewContext {
            id: Some("plan".into()),
            context_type: "plan".into(),
            doc: json!({"step": "MARKER-PLAN-41d7"}),
            ..NewContext::default()
        },
    )
    .await
    .unwrap();
    svc.share(OPERATOR, "plan", &["bob".into()], &[Permission::Read], None)
        .await
        .unwrap();
    svc.revoke(OPERATOR, "plan", &["bob".into()]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_key_and_hex_or_raw_key_files_all_open_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = MasterKey::generate();
    encrypted_plan(&data, &key).await;
    let hex_file = dir.path().join("key.hex");
    std::fs::write(&hex_file, format!("{}\n", key.to_hex())).unwrap();
    let raw_file = dir.path().join("key.raw");
    std::fs::write(&raw_file, hex_decode(&key.to_hex())).unwrap();
    let get = ["context", "get", "plan", "--json"];
    let with_file = |file: &Path| {
        let mut args = get.to_vec();
        args.extend(["--key-file", file.to_str().unwrap()]);
        qi_host(&data, None, &args)
    };
    for (how, o) in [
        (
            "QI_HOST_MASTER_KEY",
            qi_host(&data, Some(&key.to_hex()), &get),
        ),
        ("hex key file", with_file(&hex_file)),
        ("raw key file", with_file(&raw_file)),
    ] {
        assert!(stdout_ok(&o).contains("MARKER-PLAN-41d7"), "{how}");
    }

    // Each bad key is refused, naming where it came from and what is wrong.
    let short = &key.to_hex()[..62];
    refused(
        &qi_host(&data, Some(short), &get),
        &["QI_HOST_MASTER_KEY", "31 bytes", "64 hex characters"],
    );
    refused(
        &qi_host(&data, Some(&"zz".repeat(32)), &get),
        &["QI_HOST_MASTER_KEY", "not hex"],
    );
    let bad_raw = dir.path().join("key.bad");
    std::fs::write(&bad_raw, [0xffu8; 31]).unwrap();
    refused(
        &with_file(&bad_raw),
        &["--key-file", "key.bad", "neither 32 raw bytes nor hex"],
    );
    // A well-formed key of another directory, or none at all.
    refused(
        &qi_host(&data, Some(&MasterKey::generate().to_hex()), &get),
        &["another master key"],
    );
    refused(&qi_host(&data, None, &get), &["give its master key"]);
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_is_never_written_to_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = MasterKey::generate();
    encrypted_plan(&data, &key).await;
    let key_file = dir.path().join("key.hex");
    std::fs::write(&key_file, key.to_hex()).unwrap();
    // An agent run with the key, against the directory.
    let o = qi_host(
        &data,
        None,
        &[
            "run-agent",
            qi_guest_artifacts::SNOOP_COMPONENT,
            "--task",
            "look around",
            "--json",
            "--input",
            r#"{"context": "plan"}"#,
            "--key-file",
            key_file.to_str().unwrap(),
        ],
    );
    let report: serde_json::Value = serde_json::from_str(&stdout_ok(&o)).unwrap();
    assert_eq!(
        report["output"]["attempts"][0]["error_kind"], "access-denied",
        "the store answered: {report}"
    );
    // And one with the key in the environment.
    stdout_ok(&qi_host(
        &data,
        Some(&key.to_hex()),
        &["context", "get", "plan", "--json"],
    ));

    let files = all_bytes(&data);
    // The scan sees the store: context ids are not encrypted.
    assert!(
        files.iter().any(|(_, bytes)| contains(bytes, "plan")),
        "no file holds the context id"
    );
    let raw = hex_decode(&key.to_hex());
    for (path, bytes) in &files {
        assert!(
            !bytes.windows(raw.len()).any(|w| w == raw.as_slice()),
            "the raw master key is in {path}"
        );
        for text in [key.to_hex(), key.to_hex().to_uppercase()] {
            assert!(!contains(bytes, &text), "the hex master key is in {path}");
        }
        assert!(!contains(bytes, "MARKER-PLAN-41d7"), "plaintext in {path}");
    }
}

/// Registers `owner`, `stays` and `leaves`; `owner` creates context `plan` (version 1), shares
/// it for reading with the other two and writes version 2, so that all three hold its key.
pub(crate) async fn plan_shared_with_two_agents(svc: &ContextService) {
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
}
