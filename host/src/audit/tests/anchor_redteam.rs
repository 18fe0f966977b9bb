//! Red team of the head anchoring (`writer::anchor`, first written at open, now just before
//! the batch that needs it) and the `not_yet_keyed` relaxation of `check_head`. Tests marked
//! `Was failing` failed against the anchoring at open and hold now.

use super::*;
use crate::store::crypto::MasterKey;

use super::tamper::{config, reopen, written};

/// What `qi-host audit verify` / `qi-host audit head` do: open without the head check.
async fn inspect(dir: &tempfile::TempDir, key: Option<&MasterKey>) -> Result<AuditLog, AuditError> {
    let options = AuditOptions {
        check_head: false,
        ..AuditOptions::default()
    };
    AuditLog::open_with(Store::open(config(dir, key)).unwrap(), options).await
}

fn head_bytes(dir: &tempfile::TempDir) -> Option<Vec<u8>> {
    std::fs::read(dir.path().join(HEAD_FILE)).ok()
}

/// Was failing. An attacker without the key truncates a keyed log and deletes the head file
/// (caught on open: "missing"). The operator runs `qi-host audit verify` (an open without the
/// head check): the open anchors a fresh, MAC'd head at the truncated tail, so verify reports
/// an intact log and every later open accepts the truncation, without `accept-head`.
#[tokio::test]
async fn verify_does_not_launder_a_truncation_behind_a_deleted_head_file() {
    for key in [Some(MasterKey::generate()), None] {
        let dir = written(10, key.as_ref()).await;
        tamper(&dir, "DELETE FROM audit WHERE seq > 6");
        std::fs::remove_file(dir.path().join(HEAD_FILE)).unwrap();
        // The inspection must not write a head file.
        let log = inspect(&dir, key.as_ref()).await.unwrap();
        let report = log.verify().await.unwrap();
        drop(log);
        assert!(
            head_bytes(&dir).is_none(),
            "an open without the head check wrote a head file over a log whose head was deleted \
             (key: {})",
            key.is_some()
        );
        assert!(
            !report.is_intact(),
            "verify reports a truncated log with a deleted head as intact"
        );
        let e = reopen(&dir, key.as_ref()).await.err();
        assert!(e.is_some(), "a later open accepts the truncation");
    }
}

/// Was failing. Same with a head file damaged or forged by someone without the key (its MAC
/// does not verify): the inspecting open replaces it with an authentic head at the tail.
#[tokio::test]
async fn verify_does_not_replace_a_forged_head_file() {
    let key = MasterKey::generate();
    let dir = written(10, Some(&key)).await;
    tamper(&dir, "DELETE FROM audit WHERE seq > 6");
    std::fs::write(dir.path().join(HEAD_FILE), b"{\"garbage\":true}").unwrap();
    let before = head_bytes(&dir);
    let log = inspect(&dir, Some(&key)).await.unwrap();
    let report = log.verify().await.unwrap();
    drop(log);
    assert_eq!(
        head_bytes(&dir),
        before,
        "the inspecting open replaced the head file"
    );
    assert!(!report.is_intact(), "a forged head is reported as intact");
    assert!(reopen(&dir, Some(&key)).await.is_err());
}

/// Was failing. `qi-host audit head` / `verify` run without the key on a keyed log (the
/// operator forgot `--key-file`): the open cannot read the MAC'd head, treats it as absent and
/// replaces it with a head without a MAC that names the keyed chain; every later open with
/// the key refuses it as forged, and only `accept-head` recovers.
#[tokio::test]
async fn an_open_without_the_key_does_not_destroy_a_keyed_head() {
    let key = MasterKey::generate();
    let dir = written(5, Some(&key)).await;
    let before = head_bytes(&dir);
    // Whether or not the keyless inspection is refused, it must not touch the head.
    let _ = inspect(&dir, None).await.map(drop);
    assert_eq!(
        head_bytes(&dir),
        before,
        "the keyless open rewrote the head file"
    );
    reopen(&dir, Some(&key))
        .await
        .expect("an untouched keyed log reopens with its key");
}

/// Was failing (regression). A log opened once with a master key but never written under it
/// (a key given by mistake, or a host killed at once) can no longer be opened without the
/// key: the open anchored a MAC'd head naming a keyed chain that does not exist. Before the
/// anchoring the log was untouched and opened without the key.
#[tokio::test]
async fn a_log_merely_opened_with_a_key_still_opens_without_it() {
    let key = MasterKey::generate();
    let dir = written(3, None).await;
    drop(reopen(&dir, Some(&key)).await.unwrap());
    let log = reopen(&dir, None)
        .await
        .expect("no keyed entry exists: the log is still unkeyed");
    log.record(entry(4)).unwrap();
    log.flush().await;
    assert!(log.verify().await.unwrap().is_intact());
}

/// The anchor the writer writes before its next batch on `dir` (what a crash right after that
/// batch's commit leaves as the head file).
async fn anchor_of(dir: &tempfile::TempDir, key: Option<&MasterKey>) -> Vec<u8> {
    let store = Store::open(config(dir, key)).unwrap();
    let known = store.read(super::super::read::current_head).await.unwrap();
    super::super::writer::anchor(&store, super::super::open::keys_of(&store), &known)
        .await
        .unwrap();
    head_bytes(dir).expect("anchored")
}

/// Holds: a head with keyedFrom in the future cannot be forged without the key, and the
/// anchor does not cover unkeyed entries appended after it (the relaxation needs k > tail).
#[tokio::test]
async fn the_anchor_does_not_cover_unkeyed_entries_appended_after_it() {
    let key = MasterKey::generate();
    let dir = written(3, None).await;
    let anchor = anchor_of(&dir, Some(&key)).await;
    // A log of 6 unkeyed entries under the anchor naming entry 3 of another log: refused.
    let dir2 = written(6, None).await;
    std::fs::write(dir2.path().join(HEAD_FILE), &anchor).unwrap();
    assert!(reopen(&dir2, Some(&key)).await.is_err());
    // Keyed-from in the future with a bad MAC: refused.
    let mut forged: serde_json::Value = serde_json::from_slice(&anchor).unwrap();
    forged["keyedFrom"] = json!(1000);
    std::fs::write(
        dir.path().join(HEAD_FILE),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    assert!(reopen(&dir, Some(&key)).await.is_err());
}

/// Holds: a crash after each batch of a log becoming keyed, with the head at the anchor or at
/// any head the host wrote since, reopens (the head is only behind the log).
#[tokio::test]
async fn every_head_the_host_wrote_reopens_after_a_crash() {
    let key = MasterKey::generate();
    let dir = written(2, None).await;
    let mut heads = vec![anchor_of(&dir, Some(&key)).await];
    let log = reopen(&dir, Some(&key)).await.unwrap();
    for i in 3..=6 {
        log.record(entry(i)).unwrap();
        log.flush().await;
        heads.push(head_bytes(&dir).unwrap());
    }
    drop(log);
    for h in &heads {
        std::fs::write(dir.path().join(HEAD_FILE), h).unwrap();
        let log = reopen(&dir, Some(&key))
            .await
            .expect("a head behind the log");
        assert_eq!(log.head().await.unwrap().seq, 6);
        drop(log);
    }
}
