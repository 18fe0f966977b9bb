//! Store tests: group commit, savepoint isolation, hooks, blobs, values, migrations.

use super::*;
use serde_json::{Value, json};
use std::future::Future as _;
use std::sync::Mutex as StdMutex;

fn memory() -> Store {
    Store::open(StoreConfig::in_memory()).expect("open in-memory store")
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .read(move |conn| Ok(conn.query_row(sql, [], |r| r.get(0))?))
        .await
        .unwrap()
}

fn insert_meta(ctx: &mut WriteCtx<'_>, key: &str, value: &str) -> Result<(), StoreError> {
    ctx.tx()
        .prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2)")?
        .execute([key, value])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_are_all_acknowledged_and_present() {
    const WRITERS: usize = 64;
    const WRITES: usize = 200;
    let store = memory();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..WRITES {
                let key = format!("w{writer}-{n}");
                store
                    .write(move |ctx| insert_meta(ctx, &key, "v"))
                    .await
                    .expect("write acknowledged");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta").await,
        (WRITERS * WRITES) as i64
    );
    let missing: i64 = store
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT count(*) FROM meta WHERE key = ?1")?;
            let mut missing = 0;
            for writer in 0..WRITERS {
                for n in 0..WRITES {
                    let key = format!("w{writer}-{n}");
                    missing += 1 - stmt.query_row([&key], |r| r.get::<_, i64>(0))?;
                }
            }
            Ok(missing)
        })
        .await
        .unwrap();
    assert_eq!(missing, 0);
}

/// A write as [`Store::write`] takes it, boxed so a test can queue several.
type Op<T> = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send>;

/// Queues `ops` in order while the writer is busy, so they land in one batch, and returns
/// each one's answer.
async fn batch_of<T: Send + 'static>(store: &Store, ops: Vec<Op<T>>) -> Vec<Result<T, StoreError>> {
    // Hold the writer inside an op until every other op is queued behind it.
    let (entered, inside) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .write(move |_| {
                    entered.send(()).unwrap();
                    gate.recv().ok();
                    Ok(())
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || inside.recv().unwrap())
        .await
        .unwrap();
    // Polling a write once queues it; doing so in order fixes the order within the batch.
    let mut writes: Vec<_> = ops
        .into_iter()
        .map(|op| Box::pin(store.write(op)))
        .collect();
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    for write in &mut writes {
        assert!(write.as_mut().poll(&mut noop).is_pending());
    }
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    let mut results = Vec::new();
    for write in writes {
        results.push(write.await);
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_rolls_back_alone() {
    let store = memory();
    let mut ops: Vec<Op<_>> = Vec::new();
    for n in 0..10 {
        ops.push(Box::new(move |ctx: &mut WriteCtx<'_>| {
            insert_meta(ctx, &format!("k{n}"), "v")?;
            if n == 4 {
                // Wrote a row, then fails: the row must vanish with it.
                insert_meta(ctx, "k0", "duplicate")?;
            }
            if n == 7 {
                insert_meta(ctx, "extra-7", "v")?;
                panic!("op 7 panics");
            }
            Ok(())
        }));
    }
    let results = batch_of(&store, ops).await;
    for (n, result) in results.iter().enumerate() {
        match n {
            4 => assert!(
                matches!(result, Err(StoreError::Sqlite(_))),
                "op 4: {result:?}"
            ),
            7 => assert!(
                matches!(result, Err(StoreError::OpPanicked { message }) if message == "op 7 panics"),
                "op 7: {result:?}"
            ),
            _ => assert!(result.is_ok(), "op {n}: {result:?}"),
        }
    }
    let keys: Vec<String> = store
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT key FROM meta ORDER BY key")?;
            let keys = stmt.query_map([], |r| r.get(0))?;
            Ok(keys.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(keys, ["k0", "k1", "k2", "k3", "k5", "k6", "k8", "k9"]);
    // The writer survived the panic.
    store
        .write(|ctx| insert_meta(ctx, "after", "v"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commit_hooks_run_in_order_and_not_for_rolled_back_writes() {
    let store = memory();
    let log = Arc::new(StdMutex::new(Vec::<String>::new()));
    let mut ops: Vec<Op<_>> = Vec::new();
    for n in 0..6usize {
        let log = log.clone();
        ops.push(Box::new(move |ctx: &mut WriteCtx<'_>| {
            let first = log.clone();
            ctx.after_commit(move || first.lock().unwrap().push(format!("{n}a")));
            let second = log.clone();
            ctx.after_commit(move || second.lock().unwrap().push(format!("{n}b")));
            // Hooks run after COMMIT: the row is visible to a fresh connection by then.
            if n == 3 {
                return Err(StoreError::CorruptRow("op 3 fails".into()));
            }
            Ok(n)
        }));
    }
    let results = batch_of(&store, ops).await;
    assert!(matches!(results[3], Err(StoreError::CorruptRow(_))));
    assert_eq!(results[5].as_ref().unwrap(), &5);
    assert_eq!(
        *log.lock().unwrap(),
        ["0a", "0b", "1a", "1b", "2a", "2b", "4a", "4b", "5a", "5b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_fails_every_write_of_the_batch() {
    let store = memory();
    // A deferred foreign key is only checked at COMMIT: a way to make COMMIT itself fail.
    store
        .write(|ctx| {
            ctx.tx().execute_batch(
                "CREATE TABLE parent(id INTEGER PRIMARY KEY);
                 CREATE TABLE child(parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = hook_ran.clone();
    let ops: Vec<Op<()>> = vec![
        Box::new(move |ctx: &mut WriteCtx<'_>| {
            ctx.after_commit(move || flag.store(true, Ordering::SeqCst));
            insert_meta(ctx, "innocent", "v")
        }),
        Box::new(|ctx: &mut WriteCtx<'_>| {
            ctx.tx()
                .execute("INSERT INTO child(parent) VALUES (42)", [])?;
            Ok(())
        }),
        Box::new(|ctx: &mut WriteCtx<'_>| insert_meta(ctx, "also-innocent", "v")),
    ];
    let results = batch_of(&store, ops).await;
    for result in &results {
        assert!(
            matches!(result, Err(StoreError::Commit { .. })),
            "{result:?}"
        );
    }
    assert!(!hook_ran.load(Ordering::SeqCst));
    assert_eq!(count(&store, "SELECT count(*) FROM meta").await, 0);
    assert_eq!(count(&store, "SELECT count(*) FROM child").await, 0);
    // The writer recovered: the next batch commits.
    store
        .write(|ctx| insert_meta(ctx, "later", "v"))
        .await
        .unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM meta").await, 1);
}

#[tokio::test]
async fn hooks_run_before_the_caller_is_answered() {
    let store = memory();
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    store
        .write(move |ctx| {
            ctx.after_commit(move || flag.store(true, Ordering::SeqCst));
            Ok(())
        })
        .await
        .unwrap();
    assert!(ran.load(Ordering::SeqCst));
}

#[tokio::test]
async fn transaction_control_and_attach_are_refused() {
    let store = memory();
    for sql in [
        "COMMIT",
        "ROLLBACK",
        "BEGIN",
        "RELEASE qi_op",
        "ATTACH DATABASE ':memory:' AS other",
    ] {
        let result = store
            .write(move |ctx| Ok(ctx.tx().execute_batch(sql)?))
            .await;
        assert!(result.is_err(), "`{sql}` was allowed");
    }
    // An op's own savepoints are fine.
    store
        .write(|ctx| {
            ctx.tx().execute_batch("SAVEPOINT mine; RELEASE mine")?;
            Ok(())
        })
        .await
        .unwrap();
    let attach = store
        .read(|conn| Ok(conn.execute_batch("ATTACH DATABASE ':memory:' AS other")?))
        .await;
    assert!(attach.is_err());
    let write_on_reader = store
        .read(|conn| Ok(conn.execute("INSERT INTO meta VALUES ('x', 'y')", [])?))
        .await;
    assert!(
        write_on_reader.is_err(),
        "read connections must refuse writes"
    );
}

#[tokio::test]
async fn typed_errors_come_back_unchanged() {
    #[derive(Debug, PartialEq)]
    enum Domain {
        Stale(u64),
        Store(String),
    }
    impl From<StoreError> for Domain {
        fn from(e: StoreError) -> Self {
            Domain::Store(e.to_string())
        }
    }
    let store = memory();
    let result: Result<(), Domain> = store
        .write_with_error(|ctx| {
            insert_meta(ctx, "stale", "v")?;
            Err(Domain::Stale(7))
        })
        .await;
    assert_eq!(result, Err(Domain::Stale(7)));
    assert_eq!(count(&store, "SELECT count(*) FROM meta").await, 0);
}

#[test]
fn values_round_trip_through_messagepack() {
    let values = [
        json!(null),
        json!(true),
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
        json!(f64::MIN_POSITIVE),
        json!(1.0),
        json!("héllo"),
        json!([]),
        json!({}),
        json!({"a": {"b": [1, 2.5, "x", null, {"c": [u64::MAX, i64::MIN]}]}, "": "empty key"}),
    ];
    for value in values {
        let bytes = encode_value(&value);
        let back = decode_value(&bytes).unwrap();
        assert_eq!(back, value, "round trip of {value}");
        // Number kinds survive too (1.0 stays a float, 7 stays an integer).
        assert_eq!(back.to_string(), value.to_string());
    }
    assert!(matches!(decode_value(&[0xc1]), Err(StoreError::Decode(_))));
}

#[tokio::test]
async fn documents_over_the_threshold_go_to_the_blob_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        blob_threshold: 1024,
        ..StoreConfig::at(dir.path())
    };
    let store = Store::open(config).unwrap();
    let small = json!({"n": 1});
    let large = json!({"text": "x".repeat(4096), "n": u64::MAX});
    let (small_doc, large_doc) = store
        .write({
            let (small, large) = (small.clone(), large.clone());
            move |ctx| {
                let s = ctx.store_doc(&small)?;
                let l = ctx.store_doc(&large)?;
                // Idempotent: the same document again is the same blob.
                assert_eq!(ctx.store_doc(&large)?, l);
                for (id, doc) in [("small", &s), ("large", &l)] {
                    ctx.tx().execute(
                        "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                         VALUES (?1, 1, ?2, 'a', '0', 'put', ?3, ?4, 0)",
                        rusqlite::params![id, if id == "small" { 1 } else { 2 }, doc.doc_column(), doc.blob_column()],
                    )?;
                }
                Ok((s, l))
            }
        })
        .await
        .unwrap();
    assert!(matches!(small_doc, StoredDoc::Inline(_)));
    let StoredDoc::Blob(hash) = &large_doc else {
        panic!("large document stayed inline: {large_doc:?}");
    };
    let blob_path = dir.path().join("blobs").join(hash);
    assert!(blob_path.is_file());
    assert_eq!(
        std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
        1
    );

    let blobs = store.blobs().clone();
    let loaded: Vec<Value> = store
        .read(move |conn| {
            let mut stmt = conn.prepare("SELECT doc, doc_blob FROM versions ORDER BY revision")?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let doc = StoredDoc::from_row(row, "doc", "doc_blob")?.expect("a document");
                out.push(doc.load(&blobs)?);
            }
            Ok(out)
        })
        .await
        .unwrap();
    assert_eq!(loaded, [small, large]);

    // A damaged blob is reported, not decoded.
    std::fs::write(&blob_path, b"tampered").unwrap();
    assert!(matches!(
        large_doc.load(store.blobs()),
        Err(StoreError::BlobCorrupt { .. })
    ));
    std::fs::remove_file(&blob_path).unwrap();
    assert!(matches!(
        large_doc.load(store.blobs()),
        Err(StoreError::BlobMissing { .. })
    ));
    assert!(matches!(
        store.blobs().get("../qi.db"),
        Err(StoreError::InvalidBlobHash(_))
    ));
}

#[test]
fn in_memory_blobs_round_trip_and_the_threshold_is_the_largest_inline_size() {
    let blobs = BlobStore::in_memory(8);
    let doc = StoredDoc::put(&blobs, &json!({"long": "enough to pass eight bytes"})).unwrap();
    let StoredDoc::Blob(hash) = &doc else {
        panic!("expected a blob: {doc:?}");
    };
    assert!(blobs.contains(hash).unwrap());
    assert_eq!(
        doc.load(&blobs).unwrap(),
        json!({"long": "enough to pass eight bytes"})
    );
    assert!(matches!(
        StoredDoc::from_columns(Some(vec![0xc0]), Some(hash.clone())),
        Err(StoreError::CorruptRow(_))
    ));
    assert_eq!(StoredDoc::from_columns(None, None).unwrap(), None);
    // The threshold is the largest inline encoding: a one-byte header plus the string.
    let at = json!("seven!!");
    assert_eq!(encode_value(&at).len(), 8);
    assert!(matches!(
        StoredDoc::put(&blobs, &at).unwrap(),
        StoredDoc::Inline(_)
    ));
    let past = json!("eight!!!");
    assert_eq!(encode_value(&past).len(), 9);
    assert!(matches!(
        StoredDoc::put(&blobs, &past).unwrap(),
        StoredDoc::Blob(_)
    ));
}

#[tokio::test]
async fn migrations_are_idempotent_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::at(dir.path())).unwrap();
    store
        .write(|ctx| insert_meta(ctx, "kept", "yes"))
        .await
        .unwrap();
    let schema = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .read(|conn| {
                    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
                    let mut stmt = conn.prepare(
                        "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name",
                    )?;
                    let rows = stmt.query_map([], |r| {
                        Ok(format!("{}:{}:{}", r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
                    })?;
                    Ok((version, rows.collect::<Result<Vec<_>, _>>()?))
                })
                .await
                .unwrap()
        }
    };
    let (version, first) = schema(&store).await;
    assert_eq!(version, Store::schema_version());
    let mode: String = store
        .read(|conn| Ok(conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    for table in [
        "contexts",
        "versions",
        "shares",
        "agents",
        "subscriptions",
        "events",
        "conflicts",
        "meta",
        "audit",
        "context_keys",
    ] {
        assert!(
            first
                .iter()
                .any(|s| s.starts_with(&format!("table:{table}:"))),
            "{table} missing"
        );
    }
    drop(store);
    for _ in 0..2 {
        let store = Store::open(StoreConfig::at(dir.path())).unwrap();
        let (again_version, again) = schema(&store).await;
        assert_eq!((again_version, &again), (version, &first));
        assert_eq!(
            count(&store, "SELECT count(*) FROM meta WHERE key = 'kept'").await,
            1
        );
        store.integrity_check().await.unwrap();
    }
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreConfig::at(dir.path())).unwrap();
    drop(store);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", Store::schema_version() + 1)
        .unwrap();
    drop(conn);
    let err = Store::open(StoreConfig::at(dir.path())).unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found, supported } if found == supported + 1),
        "{err}"
    );
}

#[tokio::test]
async fn readers_see_committed_state_while_a_write_is_open() {
    for config in [
        StoreConfig::in_memory(),
        StoreConfig::at(tempfile::tempdir().unwrap().keep()),
    ] {
        let store = Store::open(config).unwrap();
        store.write(|ctx| insert_meta(ctx, "a", "1")).await.unwrap();
        let (entered, inside) = std::sync::mpsc::channel::<()>();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let writer = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |ctx| {
                        insert_meta(ctx, "b", "2")?;
                        entered.send(()).unwrap();
                        gate.recv().unwrap();
                        Ok(())
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || inside.recv().unwrap())
            .await
            .unwrap();
        // The write transaction is open and holds an uncommitted row.
        if store.data_dir().is_some() {
            // WAL: the reader sees the last commit without waiting.
            assert_eq!(count(&store, "SELECT count(*) FROM meta").await, 1);
        } else {
            // memdb has no WAL: a read started while the write is open never fails and
            // never sees the open transaction's row half-done; once the write ends, it sees
            // the commit. (How long it waited is not observable without a clock, and a clock
            // is not what this test is about.)
            let read = tokio::spawn({
                let store = store.clone();
                async move { count(&store, "SELECT count(*) FROM meta").await }
            });
            tokio::task::yield_now().await;
            release.send(()).unwrap();
            assert_eq!(read.await.unwrap(), 2);
            writer.await.unwrap().unwrap();
            continue;
        }
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(count(&store, "SELECT count(*) FROM meta").await, 2);
        if let Some(dir) = store.data_dir().map(Path::to_path_buf) {
            drop(store);
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}

#[tokio::test]
async fn max_batch_zero_is_refused() {
    let err = Store::open(StoreConfig {
        max_batch: 0,
        ..StoreConfig::in_memory()
    })
    .unwrap_err();
    assert!(matches!(
        err,
        StoreError::InvalidConfig {
            field: "max_batch",
            ..
        }
    ));
}

#[test]
fn default_data_dir_follows_the_environment_order() {
    let dir_with = |vars: &[(&str, &str)]| {
        StoreConfig::data_dir_from(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| std::ffi::OsString::from(value))
        })
    };
    let all = [
        ("QI_HOST_DATA_DIR", "/explicit"),
        ("XDG_DATA_HOME", "/xdg"),
        ("HOME", "/home/u"),
    ];
    assert_eq!(dir_with(&all), Some(PathBuf::from("/explicit")));
    assert_eq!(dir_with(&all[1..]), Some(PathBuf::from("/xdg/qi-host")));
    assert_eq!(
        dir_with(&all[2..]),
        Some(PathBuf::from("/home/u/.local/share/qi-host"))
    );
    // An empty variable counts as unset.
    assert_eq!(
        dir_with(&[
            ("QI_HOST_DATA_DIR", ""),
            ("XDG_DATA_HOME", ""),
            ("HOME", "/h")
        ]),
        Some(PathBuf::from("/h/.local/share/qi-host"))
    );
    assert_eq!(dir_with(&[("HOME", "")]), None);
    assert_eq!(dir_with(&[]), None);
}

#[tokio::test]
async fn store_errors_convert_to_system_errors() {
    let error: crate::Error = StoreError::Closed.into();
    assert_eq!(error.category(), crate::ErrorCategory::System);
    assert!(error.to_string().contains("open the store again"));
}
