//! Store tests: values, blobs, migrations, readers and configuration.

use super::tests::{count, insert_meta};
use super::*;
use serde_json::{Value, json};

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

/// `max_batch` from 1 to [`MAX_BATCH_CEILING`]: each end opens and writes, one past either
/// end is refused naming the field (a huge value used to make the writer thread reserve room
/// for that many writes and die, failing every later write).
#[tokio::test]
async fn max_batch_is_bounded_on_both_sides() {
    for (max_batch, ok) in [
        (0, false),
        (1, true),
        (MAX_BATCH_CEILING, true),
        (MAX_BATCH_CEILING + 1, false),
        (usize::MAX, false),
    ] {
        let opened = Store::open(StoreConfig {
            max_batch,
            ..StoreConfig::in_memory()
        });
        match opened {
            Ok(store) => {
                assert!(ok, "max_batch {max_batch} was accepted");
                store.write(|ctx| insert_meta(ctx, "k", "v")).await.unwrap();
            }
            Err(err) => {
                assert!(!ok, "max_batch {max_batch}: {err}");
                assert!(
                    matches!(
                        &err,
                        StoreError::InvalidConfig {
                            field: "max_batch",
                            message,
                        } if message.contains(&MAX_BATCH_CEILING.to_string())
                    ),
                    "{err}"
                );
            }
        }
    }
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
