//! Tampering against the head file and the keyed chain: edit, delete, reorder and truncate,
//! with and without a master key; a chain recomputed with plain SHA-256 under a master key; a
//! forged or deleted head file; the operator's explicit `accept-head`.

use super::*;
use crate::store::crypto::MasterKey;

pub(super) fn config(dir: &tempfile::TempDir, key: Option<&MasterKey>) -> StoreConfig {
    StoreConfig {
        master_key: key.cloned(),
        ..StoreConfig::at(dir.path())
    }
}

/// A data directory whose log holds entries `1..=n`, written with `key` (if any); the log is
/// flushed (its head file written) and dropped.
pub(super) async fn written(n: u64, key: Option<&MasterKey>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(Store::open(config(&dir, key)).unwrap())
        .await
        .unwrap();
    for i in 1..=n {
        log.record(entry(i)).unwrap();
    }
    log.flush().await;
    assert_eq!(log.status().head.unwrap().seq, n);
    dir
}

pub(super) async fn reopen(
    dir: &tempfile::TempDir,
    key: Option<&MasterKey>,
) -> Result<AuditLog, AuditError> {
    AuditLog::open(Store::open(config(dir, key)).unwrap()).await
}

/// The log of `dir` opened without the head check, to run `verify` on it.
async fn inspect(dir: &tempfile::TempDir, key: Option<&MasterKey>) -> AuditLog {
    let options = AuditOptions {
        check_head: false,
        ..AuditOptions::default()
    };
    AuditLog::open_with(Store::open(config(dir, key)).unwrap(), options)
        .await
        .unwrap()
}

/// Recomputes, with plain SHA-256 (what anyone without the key can do), the hash of every
/// entry from `from` on, so that each links to the one before it.
fn recompute_sha256(dir: &tempfile::TempDir, from: u64) {
    let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
    let rows: Vec<(i64, i64, [String; 6])> = conn
        .prepare("SELECT seq, time_ms, agent, resource, operation, decision, reason, details FROM audit ORDER BY seq")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?]))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev = GENESIS_HASH.to_string();
    for (seq, time_ms, t) in rows {
        if (seq as u64) < from {
            prev = conn
                .query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0))
                .unwrap();
            continue;
        }
        let hash = chain::entry_hash(
            None,
            prev.as_bytes(),
            &chain::Content {
                seq: seq as u64,
                time_ms: time_ms as u64,
                agent: t[0].as_bytes(),
                resource: t[1].as_bytes(),
                operation: t[2].as_bytes(),
                decision: t[3].as_bytes(),
                reason: t[4].as_bytes(),
                details: t[5].as_bytes(),
            },
        );
        conn.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            rusqlite::params![prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

fn mismatch(e: AuditError) -> (u64, String) {
    let text = e.to_string();
    match e {
        AuditError::HeadMismatch { seq, .. } => {
            assert!(
                text.contains("qi-host audit verify") && text.contains("qi-host audit accept-head"),
                "the error says how to proceed: {text}"
            );
            (seq, text)
        }
        other => panic!("expected a head mismatch, got {other}"),
    }
}

#[tokio::test]
async fn an_untouched_log_reopens_with_and_without_a_key() {
    for key in [None, Some(MasterKey::generate())] {
        let dir = written(6, key.as_ref()).await;
        let log = reopen(&dir, key.as_ref()).await.unwrap();
        let head = log.head().await.unwrap();
        let expected = if key.is_some() {
            (ChainScheme::HmacSha256, Some(1))
        } else {
            (ChainScheme::Sha256, None)
        };
        assert_eq!(
            (head.seq, head.scheme, head.keyed_from),
            (6, expected.0, expected.1)
        );
        let report = log.verify().await.unwrap();
        assert!(report.is_intact(), "{:?}", report.first_broken);
        assert_eq!((report.entries, report.last_hash), (6, head.hash));
    }
}

#[tokio::test]
async fn a_keyed_entry_is_the_hmac_of_the_documented_encoding() {
    use hmac::Mac;
    let key = MasterKey::generate();
    let dir = written(1, Some(&key)).await;
    let log = reopen(&dir, Some(&key)).await.unwrap();
    let e = log.entry(1).await.unwrap().unwrap();
    let mut bytes = GENESIS_HASH.as_bytes().to_vec();
    bytes.extend(1u64.to_be_bytes());
    bytes.extend(e.time_ms.to_be_bytes());
    let details = serde_json::to_string(&e.details).unwrap();
    for field in [
        &e.agent,
        &e.resource,
        &e.operation,
        "deny",
        &e.reason,
        &details,
    ] {
        bytes.extend((field.len() as u64).to_be_bytes());
        bytes.extend(field.as_bytes());
    }
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&*key.derive(CHAIN_KEY_INFO.as_bytes()))
            .unwrap();
    mac.update(&bytes);
    assert_eq!(e.hash, hex::encode(mac.finalize().into_bytes()));
}

#[tokio::test]
async fn a_truncated_tail_is_caught_on_open_and_accepted_only_explicitly() {
    for key in [None, Some(MasterKey::generate())] {
        let dir = written(10, key.as_ref()).await;
        tamper(&dir, "DELETE FROM audit WHERE seq > 8");
        let (seq, text) = mismatch(reopen(&dir, key.as_ref()).await.unwrap_err());
        assert_eq!(seq, 10);
        assert!(text.contains("the log ends at entry 8"), "{text}");
        // verify reports the same break.
        let broken = inspect(&dir, key.as_ref()).await.verify().await.unwrap();
        assert_eq!(broken.first_broken.unwrap().seq, 10);

        let head = AuditLog::accept_head(Store::open(config(&dir, key.as_ref())).unwrap())
            .await
            .unwrap();
        assert_eq!(head.seq, 9, "the acceptance is entry 9");
        let log = reopen(&dir, key.as_ref()).await.unwrap();
        let accepted = log.entry(9).await.unwrap().unwrap();
        assert_eq!(
            (accepted.agent.as_str(), accepted.operation.as_str()),
            ("operator", "accept-head")
        );
        assert!(
            accepted.reason.contains("the log ends at entry 8"),
            "{}",
            accepted.reason
        );
        assert!(log.verify().await.unwrap().is_intact());
    }
}

#[tokio::test]
async fn edited_deleted_and_reordered_entries_are_caught_with_a_key() {
    let key = MasterKey::generate();
    let cases = [
        (
            "UPDATE audit SET decision = 'allow' WHERE seq = 4",
            4,
            "modified",
        ),
        ("DELETE FROM audit WHERE seq = 5", 5, "deleted"),
        (
            "UPDATE audit SET seq = -seq WHERE seq IN (3, 4); \
             UPDATE audit SET seq = 4 WHERE seq = -3; UPDATE audit SET seq = 3 WHERE seq = -4",
            3,
            "reordered",
        ),
    ];
    for (sql, at, word) in cases {
        let dir = written(8, Some(&key)).await;
        tamper(&dir, sql);
        let broken = inspect(&dir, Some(&key)).await.verify().await.unwrap();
        let b = broken.first_broken.expect(word);
        assert_eq!(b.seq, at, "{word}: {b}");
        assert!(b.problem.contains(word), "{word}: {b}");
        // Opening walks from the head only; the tail still matches for these, so the walk of
        // `verify` is what finds them (and `accept-head` refuses a broken chain).
        let refused = AuditLog::accept_head(Store::open(config(&dir, Some(&key))).unwrap()).await;
        assert!(matches!(refused, Err(AuditError::Broken { .. })), "{word}");
    }
}

#[tokio::test]
async fn a_tail_rewritten_without_the_key_is_caught() {
    // Without a key the rewritten chain is valid: only the head file catches it.
    let dir = written(10, None).await;
    tamper(&dir, "UPDATE audit SET reason = 'forged' WHERE seq = 9");
    recompute_sha256(&dir, 9);
    let walked = inspect(&dir, None).await;
    let chain_only = walked
        .inner
        .store
        .read(|c| read::verify(c, None))
        .await
        .unwrap();
    assert!(chain_only.is_intact(), "{:?}", chain_only.first_broken);
    assert_eq!(walked.verify().await.unwrap().first_broken.unwrap().seq, 10);
    let (seq, text) = mismatch(reopen(&dir, None).await.unwrap_err());
    assert_eq!(seq, 10);
    assert!(text.contains("the log was rewritten"), "{text}");

    // With a key, a tail recomputed with plain SHA-256 is not a valid HMAC chain.
    let key = MasterKey::generate();
    let dir = written(10, Some(&key)).await;
    tamper(&dir, "UPDATE audit SET reason = 'forged' WHERE seq = 9");
    recompute_sha256(&dir, 9);
    let b = inspect(&dir, Some(&key))
        .await
        .verify()
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(b.seq, 9, "{b}");
    assert!(b.problem.contains("modified"), "{b}");
    assert!(reopen(&dir, Some(&key)).await.is_err());
}

#[tokio::test]
async fn a_whole_chain_recomputed_with_sha256_under_a_key_is_caught() {
    let key = MasterKey::generate();
    let dir = written(6, Some(&key)).await;
    // Recompute everything with SHA-256 and pretend the log was never keyed.
    tamper(
        &dir,
        "UPDATE audit SET reason = 'nothing happened' WHERE seq = 2",
    );
    recompute_sha256(&dir, 1);
    tamper(&dir, "DELETE FROM meta WHERE key = 'audit.keyed_from'");
    // The chain walk alone now passes (an unkeyed chain is allowed before a key was set) ...
    let report = inspect(&dir, Some(&key)).await;
    let walked = report
        .inner
        .store
        .read(|c| read::verify(c, None))
        .await
        .unwrap();
    assert!(walked.is_intact());
    // ... but the head file, authenticated with the key, says it was keyed from entry 1.
    let (seq, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert_eq!(seq, 1);
    assert!(text.contains("recomputed without the key"), "{text}");
    let b = report.verify().await.unwrap().first_broken.unwrap();
    assert!(b.problem.contains("keyed from entry 1"), "{b}");
}

#[tokio::test]
async fn a_forged_or_deleted_head_file_is_caught() {
    let key = MasterKey::generate();
    let dir = written(10, Some(&key)).await;
    tamper(&dir, "DELETE FROM audit WHERE seq > 8");
    // The attacker rewrites the head file to match the truncated log, without the key.
    let path = dir.path().join(HEAD_FILE);
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let hash8 = inspect(&dir, Some(&key))
        .await
        .entry(8)
        .await
        .unwrap()
        .unwrap()
        .hash;
    file["seq"] = json!(8);
    file["hash"] = json!(hash8);
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let (_, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert!(text.contains("MAC") && text.contains("forged"), "{text}");
    // Dropping the MAC does not help.
    file.as_object_mut().unwrap().remove("mac");
    file["mac"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    let (_, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert!(text.contains("forged"), "{text}");
    // Nor does deleting the file, with or without a key.
    for key in [None, Some(key)] {
        let dir = written(3, key.as_ref()).await;
        std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
        let (seq, text) = mismatch(reopen(&dir, key.as_ref()).await.unwrap_err());
        assert_eq!(seq, 3);
        assert!(text.contains("missing"), "{text}");
    }
}

#[tokio::test]
async fn a_keyed_log_needs_its_key_and_an_unkeyed_one_becomes_keyed() {
    let key = MasterKey::generate();
    // Entries written before a key was set stay verifiable; keying starts at the next one.
    let dir = written(3, None).await;
    let log = reopen(&dir, Some(&key)).await.unwrap();
    log.record(entry(4)).unwrap();
    log.flush().await;
    let head = log.head().await.unwrap();
    assert_eq!(
        (head.seq, head.scheme, head.keyed_from),
        (4, ChainScheme::HmacSha256, Some(4))
    );
    assert!(log.verify().await.unwrap().is_intact());
    drop(log);
    // Without the key the log cannot be opened (nor extended with unkeyed entries).
    let e = reopen(&dir, None).await.unwrap_err().to_string();
    assert!(e.contains("keyed with the master key from entry 4"), "{e}");
    // Another key does not open it either: the head file's MAC does not verify.
    let e = reopen(&dir, Some(&MasterKey::generate()))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("another master key"), "{e}");
}

#[tokio::test]
async fn a_tail_deleted_while_the_host_runs_is_not_extended() {
    let key = MasterKey::generate();
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(Store::open(config(&dir, Some(&key))).unwrap())
        .await
        .unwrap();
    for n in 1..=5 {
        log.record(entry(n)).unwrap();
    }
    log.flush().await;
    // Without this check the next batch would chain onto entry 3 with valid HMACs and write
    // a matching head file, hiding the deletion.
    tamper(&dir, "DELETE FROM audit WHERE seq > 3");
    log.record(entry(6)).unwrap();
    log.flush().await;
    let failure = log.status().failure.expect("the log failed closed");
    assert!(
        failure.contains("audit entry 5") && failure.contains("deleted while the host ran"),
        "{failure}"
    );
    assert!(matches!(
        log.record(entry(7)),
        Err(AuditUnavailable::Failed { .. })
    ));
    // The head file still names entry 5, so the next open reports the truncation.
    drop(log);
    let (seq, _) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert_eq!(seq, 5);
}

/// Red team: without the key an attacker cannot make a MAC, but a head file with no MAC that
/// names an unkeyed log (or an empty one) is what a log written before the key was set leaves
/// behind. Written over the head of a keyed log whose tail was deleted, it must not pass.
#[tokio::test]
async fn an_unkeyed_head_file_without_a_mac_does_not_cover_a_truncated_keyed_log() {
    let key = MasterKey::generate();
    // Keyed from the first entry: a head naming the empty log.
    let dir = written(10, Some(&key)).await;
    tamper(&dir, "DELETE FROM audit WHERE seq > 8");
    let path = dir.path().join(HEAD_FILE);
    let forged = json!({"version": 1, "seq": 0, "hash": GENESIS_HASH, "scheme": "sha256",
                        "keyedFrom": null, "mac": null});
    std::fs::write(&path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let (_, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert!(text.contains("forged"), "{text}");
    // Keyed from entry 4: the head the unkeyed log had, naming entry 3 (the open with the key
    // replaces it with an authenticated one before any keyed entry).
    let dir = written(3, None).await;
    let unkeyed = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();
    let log = reopen(&dir, Some(&key)).await.unwrap();
    for i in 4..=10 {
        log.record(entry(i)).unwrap();
    }
    log.flush().await;
    drop(log);
    tamper(&dir, "DELETE FROM audit WHERE seq > 5");
    std::fs::write(dir.path().join(HEAD_FILE), &unkeyed).unwrap();
    let (_, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert!(text.contains("forged"), "{text}");
    // The operator adopts the log once, explicitly.
    let head = AuditLog::accept_head(Store::open(config(&dir, Some(&key))).unwrap())
        .await
        .unwrap();
    assert_eq!(head.seq, 6, "the acceptance is entry 6");
    assert!(reopen(&dir, Some(&key)).await.is_ok());
}

/// Probe: a huge head file is refused unread (it would otherwise be read whole into memory),
/// and a temporary head file a killed writer left behind is removed by the next write.
#[tokio::test]
async fn a_huge_head_file_is_refused_unread_and_stale_temporary_files_are_removed() {
    let dir = written(2, None).await;
    let stale = dir.path().join(format!("{HEAD_FILE}.tmp-999999"));
    std::fs::write(&stale, b"half a head").unwrap();
    let log = reopen(&dir, None).await.unwrap();
    log.record(entry(3)).unwrap();
    log.flush().await;
    assert_eq!(log.status().head.unwrap().seq, 3, "the head was written");
    assert!(!stale.exists(), "the stale temporary file was removed");
    drop(log);
    let path = dir.path().join(HEAD_FILE);
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.set_len(64 * 1024 + 1).unwrap();
    let (_, text) = mismatch(reopen(&dir, None).await.unwrap_err());
    assert!(text.contains("larger than 65536 bytes"), "{text}");
}

/// kill -9 between a batch's commit and its head write: the head the writer anchored just
/// before that batch (the genesis for an empty log; for a log given a master key, the entry
/// the chain will be keyed from, with its MAC) is only behind the log, which the next open
/// verifies forward. Before, no head file over a log with entries (or an unkeyed head over a
/// keyed log) made every later open refuse the data directory. Opening a log with a key and
/// writing nothing changes nothing.
#[tokio::test]
async fn a_host_killed_before_its_first_head_write_reopens() {
    let key = MasterKey::generate();
    for key in [None, Some(&key)] {
        let dir = tempfile::tempdir().unwrap();
        drop(reopen(&dir, key).await.unwrap());
        assert!(
            !dir.path().join(HEAD_FILE).exists(),
            "nothing is written before an entry is"
        );
        let log = reopen(&dir, key).await.unwrap();
        for i in 1..=4 {
            log.record(entry(i)).unwrap();
        }
        log.flush().await;
        drop(log);
        // Killed after the first batch committed, before its head was written: the head is
        // the genesis anchor.
        let genesis = AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
            scheme: ChainScheme::Sha256,
            keyed_from: key.map(|_| 1),
        };
        let store = Store::open(config(&dir, key)).unwrap();
        head::write_replacing(dir.path(), &genesis, open::keys_of(&store).as_deref()).unwrap();
        drop(store);
        let log = reopen(&dir, key)
            .await
            .expect("a head behind the log is verified forward");
        assert_eq!(log.head().await.unwrap().seq, 4);
    }
    // A log given a master key for the first time: opened with the key and left unwritten, it
    // still opens without it; once a keyed batch is about to commit, the anchor names the entry
    // keying starts at.
    let dir = written(3, None).await;
    drop(reopen(&dir, Some(&key)).await.unwrap());
    drop(
        reopen(&dir, None)
            .await
            .expect("no keyed entry yet: still an unkeyed log"),
    );
    let store = Store::open(config(&dir, Some(&key))).unwrap();
    let known = store.read(read::current_head).await.unwrap();
    writer::anchor(&store, open::keys_of(&store), &known)
        .await
        .unwrap();
    drop(store);
    let anchor = std::fs::read(dir.path().join(HEAD_FILE)).unwrap();
    drop(reopen(&dir, Some(&key)).await.expect("no keyed entry yet"));
    let log = reopen(&dir, Some(&key)).await.unwrap();
    for i in 4..=6 {
        log.record(entry(i)).unwrap();
    }
    log.flush().await;
    drop(log);
    std::fs::write(dir.path().join(HEAD_FILE), &anchor).unwrap();
    let log = reopen(&dir, Some(&key))
        .await
        .expect("verified forward from the anchor");
    let head = log.head().await.unwrap();
    assert_eq!((head.seq, head.keyed_from), (6, Some(4)));
    // Deleting the head file is still caught.
    drop(log);
    std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
    let (_, text) = mismatch(reopen(&dir, Some(&key)).await.unwrap_err());
    assert!(text.contains("missing"), "{text}");
}
