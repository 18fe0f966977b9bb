//! Store tests: one owner per data directory, the read-only open, and the collection of
//! blobs no row names.

use super::*;
use serde_json::json;

/// A store in `dir` where every document larger than 16 bytes goes to the blob tier.
fn blobby(dir: &Path) -> Store {
    Store::open(StoreConfig {
        blob_threshold: 16,
        ..StoreConfig::at(dir)
    })
    .unwrap()
}

/// Inserts version `version` of `ctx-1` holding `doc` (a blob above the threshold); returns
/// its blob hash.
async fn put_version(store: &Store, version: i64, doc: serde_json::Value) -> String {
    store
        .write(move |ctx| {
            let stored = ctx.store_doc(&doc)?;
            ctx.tx().execute(
                "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                 VALUES ('ctx-1', ?1, ?1, 'a', '0', 'put', ?2, ?3, 0)",
                rusqlite::params![version, stored.doc_column(), stored.blob_column()],
            )?;
            Ok(stored.blob_column().expect("above the threshold").to_string())
        })
        .await
        .unwrap()
}

async fn delete_version(store: &Store, version: i64) {
    store
        .write(move |ctx| {
            ctx.tx().execute(
                "DELETE FROM versions WHERE context_id = 'ctx-1' AND version = ?1",
                [version],
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

fn big(tag: &str) -> serde_json::Value {
    json!({"tag": tag, "padding": "x".repeat(100)})
}

#[tokio::test]
async fn a_blob_is_removed_with_its_last_reference_and_kept_while_one_remains() {
    let dir = tempfile::tempdir().unwrap();
    let store = blobby(dir.path());
    let shared = put_version(&store, 1, big("a")).await;
    assert_eq!(
        put_version(&store, 2, big("a")).await,
        shared,
        "same bytes, same blob"
    );
    let other = put_version(&store, 3, big("b")).await;
    let blobs = store.blobs().clone();

    // Version 1 goes (as retention drops it): version 2 still names the blob.
    delete_version(&store, 1).await;
    assert!(blobs.contains(&shared).unwrap(), "still named by version 2");
    // A delete that rolls back removes nothing.
    let rolled_back: Result<(), StoreError> = store
        .write(|ctx| {
            ctx.tx()
                .execute("DELETE FROM versions WHERE version = 3", [])?;
            Err(StoreError::Encode("test: roll this write back".into()))
        })
        .await;
    assert!(rolled_back.is_err());
    assert!(blobs.contains(&other).unwrap(), "the delete rolled back");
    // The last reference goes: the blob goes with the commit that dropped it.
    delete_version(&store, 2).await;
    assert!(
        !blobs.contains(&shared).unwrap(),
        "no row names it any more"
    );
    assert!(blobs.contains(&other).unwrap(), "version 3 still names it");
    assert!(!store.blobs().get(&other).unwrap().is_empty());
}

#[tokio::test]
async fn a_replaced_current_document_frees_its_blob() {
    let dir = tempfile::tempdir().unwrap();
    let store = blobby(dir.path());
    let upsert = |doc: serde_json::Value| {
        let store = store.clone();
        async move {
            store
                .write(move |ctx| {
                    let stored = ctx.store_doc(&doc)?;
                    // As the context service writes the current state: INSERT OR REPLACE.
                    ctx.tx().execute(
                        "INSERT OR REPLACE INTO contexts(id, owner, context_type, strategy, resolution, status, version, revision, hlc, doc, doc_blob, field_stamps, created_at, updated_at) \
                         VALUES ('ctx-1', 'a', 't', 'eventual', 'lww', 'active', 1, 1, '0', ?1, ?2, X'80', 0, 0)",
                        rusqlite::params![stored.doc_column(), stored.blob_column()],
                    )?;
                    Ok(stored.blob_column().unwrap().to_string())
                })
                .await
                .unwrap()
        }
    };
    let first = upsert(big("first")).await;
    let second = upsert(big("second")).await;
    assert!(!store.blobs().contains(&first).unwrap(), "replaced");
    assert!(store.blobs().contains(&second).unwrap(), "current");
}

#[tokio::test]
async fn blobs_a_crash_left_behind_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, orphan) = {
        let store = blobby(dir.path());
        let kept = put_version(&store, 1, big("kept")).await;
        // A write whose blob reached the disk but whose row never committed.
        let orphan = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let o2 = orphan.clone();
        let failed: Result<(), StoreError> = store
            .write(move |ctx| {
                *o2.lock().unwrap() = ctx.store_doc(&big("orphan"))?.blob_column().unwrap().into();
                Err(StoreError::Encode("test: the row does not commit".into()))
            })
            .await;
        assert!(failed.is_err());
        let orphan = orphan.lock().unwrap().clone();
        assert!(
            store.blobs().contains(&orphan).unwrap(),
            "the blob is on disk"
        );
        (kept, orphan)
    };
    // And a temporary file of a blob write killed before its rename.
    let temp = dir.path().join(BLOB_DIR).join(format!(".tmp-{orphan}-1-1"));
    std::fs::write(&temp, b"half a blob").unwrap();
    let store = blobby(dir.path());
    assert!(!store.blobs().contains(&orphan).unwrap(), "no row names it");
    assert!(!temp.exists(), "temporary files are removed");
    assert!(store.blobs().contains(&kept).unwrap(), "version 1 names it");
    assert!(store.blobs().get(&kept).is_ok());
}

#[tokio::test]
async fn a_read_only_open_reads_beside_the_owner_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let owner = blobby(dir.path());
    put_version(&owner, 1, big("one")).await;
    let reader = Store::open_read_only(StoreConfig::at(dir.path())).unwrap();
    assert!(reader.is_read_only() && !owner.is_read_only());
    let count = |s: &Store| {
        let s = s.clone();
        async move {
            s.read(
                |c| Ok(c.query_row("SELECT count(*) FROM versions", [], |r| r.get::<_, i64>(0))?),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(count(&reader).await, 1);
    // It sees what the owner commits later, and it took no lock.
    put_version(&owner, 2, big("two")).await;
    assert_eq!(count(&reader).await, 2);
    let e = reader.write(|_| Ok(())).await.unwrap_err();
    assert!(matches!(e, StoreError::ReadOnly { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("a host (pid {}", std::process::id())),
        "names the owner: {text}"
    );
    // A directory without a database is refused, not created.
    let empty = tempfile::tempdir().unwrap();
    let e = Store::open_read_only(StoreConfig::at(empty.path())).unwrap_err();
    assert!(e.to_string().contains("no qi.db"), "{e}");
    assert!(!empty.path().join(DB_FILE).exists());
}

#[tokio::test]
async fn a_read_only_open_refuses_a_database_it_would_have_to_migrate() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(StoreConfig::at(dir.path())).unwrap());
    // Back one version, as an older qi-host left it.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", migrations::latest_version() - 1)
        .unwrap();
    drop(conn);
    let e = Store::open_read_only(StoreConfig::at(dir.path())).unwrap_err();
    assert!(matches!(e, StoreError::SchemaTooOld { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("run a host on the data directory once"),
        "{e}"
    );
    // The latest version exactly is read.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", migrations::latest_version())
        .unwrap();
    drop(conn);
    Store::open_read_only(StoreConfig::at(dir.path())).unwrap();
}

#[test]
fn a_store_on_a_directory_another_process_owns_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // What another process holds: its own open file description of the lock file, locked,
    // with its record written.
    let other = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(dir.path().join(LOCK_FILE))
        .unwrap();
    other.lock().unwrap();
    std::fs::write(
        dir.path().join(LOCK_FILE),
        r#"{"pid":4242,"command":"qi-host run task.toml","sinceMs":1796047087000}"#,
    )
    .unwrap();
    let e = Store::open(StoreConfig::at(dir.path())).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Locked { .. }), "{text}");
    assert!(
        text.starts_with(
            "a host (pid 4242, `qi-host run task.toml`, since 2026-11-30 13:58:07 UTC) owns the data directory"
        ),
        "{text}"
    );
    assert!(text.contains("wait for it to finish or stop it"), "{text}");
    assert!(
        !dir.path().join(DB_FILE).exists(),
        "refused before touching the database"
    );
    // Its process gone (the kernel drops its flock), the directory is taken over.
    drop(other);
    let store = Store::open(StoreConfig::at(dir.path())).expect("free once the owner is gone");
    let holder = lock::read_holder(dir.path()).unwrap();
    assert_eq!(
        holder.pid,
        std::process::id(),
        "the record names the new owner"
    );
    drop(store);
}

#[test]
fn a_lock_file_that_is_a_symlink_is_refused_and_nothing_is_written_through_it() {
    let dir = tempfile::tempdir().unwrap();
    // Whoever can write into the data directory plants `lock` pointing at another file.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&victim, data.join(LOCK_FILE)).unwrap();
    let e = Store::open(StoreConfig::at(&data)).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the link's target is neither truncated nor overwritten"
    );
    assert!(!data.join(DB_FILE).exists(), "refused before the database");
    // A dangling link creates nothing at its target either.
    let elsewhere = dir.path().join("created-elsewhere");
    let data = dir.path().join("data2");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join(LOCK_FILE)).unwrap();
    Store::open(StoreConfig::at(&data)).unwrap_err();
    assert!(!elsewhere.exists(), "no file created through the link");
}

#[tokio::test]
async fn a_second_store_of_the_process_removes_no_blob_a_pending_write_has_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = blobby(dir.path());
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::unbounded_channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let writing = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(move |ctx| {
                    let stored = ctx.store_doc(&big("pending"))?;
                    let hash = stored.blob_column().unwrap().to_string();
                    // The blob is on disk, its row not yet committed.
                    stored_tx.send(hash.clone()).unwrap();
                    go_rx.recv().unwrap();
                    ctx.tx().execute(
                        "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                         VALUES ('ctx-1', 1, 1, 'a', '0', 'put', ?1, ?2, 0)",
                        rusqlite::params![stored.doc_column(), stored.blob_column()],
                    )?;
                    Ok(hash)
                })
                .await
                .unwrap()
        }
    });
    let hash = stored_rx.recv().await.unwrap();
    // Another store of this process on the same directory (it shares the lock) opens now.
    drop(blobby(dir.path()));
    go_tx.send(()).unwrap();
    assert_eq!(writing.await.unwrap(), hash);
    store
        .blobs()
        .get(&hash)
        .expect("the committed version's blob is still there");
}

#[tokio::test]
async fn a_read_only_open_leaves_the_database_files_as_it_found_them() {
    let dir = tempfile::tempdir().unwrap();
    let owner = blobby(dir.path());
    put_version(&owner, 1, big("one")).await;
    let reader = Store::open_read_only(StoreConfig::at(dir.path())).unwrap();
    let count = reader
        .read(|c| Ok(c.query_row("SELECT count(*) FROM versions", [], |r| r.get::<_, i64>(0))?))
        .await
        .unwrap();
    assert_eq!(count, 1);
    // The owner goes (as a killed host would leave it: the WAL still holds its commits).
    drop(owner);
    let db = dir.path().join(DB_FILE);
    let wal = dir.path().join(format!("{DB_FILE}-wal"));
    let before = (std::fs::read(&db).unwrap(), std::fs::read(&wal).ok());
    assert!(before.1.as_ref().is_some_and(|w| !w.is_empty()), "WAL kept");
    drop(reader);
    let after = (std::fs::read(&db).unwrap(), std::fs::read(&wal).ok());
    assert!(
        before == after,
        "a read-only open neither checkpoints into {DB_FILE} nor removes its WAL"
    );
}
