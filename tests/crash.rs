//! Crash test: every write the store acknowledged survives SIGKILL of the writing process.
//!
//! The test re-executes its own binary as a child (selected by `QI_CRASH_CHILD=<dir>` and the
//! test-name filter). The child writes context-sized rows from 8 concurrent tasks and prints
//! `acked <key> <n>` after each acknowledged write. The parent reads those lines until every
//! context has at least 26 acknowledged versions (one in the blob tier), kills the child with
//! SIGKILL mid-stream, reopens the store and checks that every
//! acknowledged row is there with its content and that `PRAGMA integrity_check` passes.

use qi_host::store::{Durability, Store, StoreConfig, StoredDoc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

#[path = "sigkill/mod.rs"]
mod sigkill;

const CHILD_ENV: &str = "QI_CRASH_CHILD";
const CHILD_TEST: &str = "crash_child_writer";
const TASKS: u64 = 8;
/// Contexts each writing task cycles through.
const SLOTS: u64 = 16;
/// How long the parent waits for the next acknowledgement before it calls the child hung.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Small blob threshold so some writes exercise the blob tier too.
const BLOB_THRESHOLD: usize = 2048;

/// The document written for `(key, n)`; every 25th is large enough for the blob tier.
fn document(key: &str, n: u64) -> Value {
    let padding = if n.is_multiple_of(25) { 4096 } else { 64 };
    json!({ "key": key, "n": n, "body": "x".repeat(padding) })
}

fn config(dir: &Path) -> StoreConfig {
    StoreConfig {
        blob_threshold: BLOB_THRESHOLD,
        durability: Durability::Process,
        ..StoreConfig::at(dir)
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // Acknowledgements are read on a thread so the parent can stop at a chosen time.
    let sigkill::Child {
        process: mut child,
        lines,
        reader,
    } = sigkill::spawn_child(CHILD_TEST, &[(CHILD_ENV, dir.path().as_os_str())]);

    let mut acked: HashMap<String, u64> = HashMap::new();
    fn record(acked: &mut HashMap<String, u64>, line: String) {
        if let Some(rest) = line.strip_prefix("acked ") {
            let (key, n) = rest.split_once(' ').expect("`acked <key> <n>`");
            // Writes to one key are sequential, so a later line always has a larger n.
            acked.insert(key.to_string(), n.parse().unwrap());
        }
    }
    // Kill the child once every context has a version in the blob tier (every 25th), so the
    // check below covers both tiers; the count of lines read is the only clock. The timeout
    // is a hang guard for a child that stops writing, never the condition.
    let contexts = (TASKS * SLOTS) as usize;
    let every_context_reached = |acked: &HashMap<String, u64>, n: u64| {
        acked.len() == contexts && acked.values().all(|&v| v >= n)
    };
    while !every_context_reached(&acked, 26) {
        match lines.recv_timeout(HANG_GUARD) {
            Ok(line) => record(&mut acked, line),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "the child acknowledged nothing for {HANG_GUARD:?} ({} writes so far)",
                acked.values().sum::<u64>()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the child exited before it was killed")
            }
        }
    }

    // `Child::kill` sends SIGKILL on Unix: no destructor, no flush, no checkpoint runs.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the child must die by SIGKILL, got {status}"
        );
    }
    // Lines the child printed before dying were acknowledged too.
    reader.join().unwrap();
    for line in lines.try_iter() {
        record(&mut acked, line);
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(config(dir.path())).unwrap();
        store.integrity_check().await.unwrap();
        let blobs = store.blobs().clone();
        let expected = acked.clone();
        let (checked, in_blobs) = store
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached("SELECT version, doc, doc_blob FROM contexts WHERE id = ?1")?;
                let mut in_blobs = 0;
                for (key, n) in &expected {
                    let (version, doc) = stmt.query_row([key], |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            StoredDoc::from_columns(row.get(1)?, row.get(2)?),
                        ))
                    })?;
                    // A later unacknowledged write may have committed too: never older.
                    assert!(version as u64 >= *n, "{key}: version {version} < acked {n}");
                    let doc = doc?.expect("a document");
                    assert_eq!(doc.load(&blobs)?, document(key, version as u64));
                }
                let mut versions = conn.prepare_cached(
                    "SELECT version, doc, doc_blob FROM versions WHERE context_id = ?1 \
                     AND version <= ?2 ORDER BY version",
                )?;
                for (key, n) in &expected {
                    let rows = versions.query_map(rusqlite::params![key, *n as i64], |row| {
                        Ok((
                            row.get::<_, i64>(0)? as u64,
                            StoredDoc::from_columns(row.get(1)?, row.get(2)?),
                        ))
                    })?;
                    let mut kept = 0;
                    for row in rows {
                        let (version, doc) = row?;
                        kept += 1;
                        assert_eq!(version, kept, "{key}: versions 1..={n} without a hole");
                        let doc = doc?.expect("a document");
                        in_blobs += matches!(doc, StoredDoc::Blob(_)) as usize;
                        assert_eq!(doc.load(&blobs)?, document(key, version));
                    }
                    assert_eq!(kept, *n, "{key}: every acknowledged version is kept");
                }
                Ok((expected.len(), in_blobs))
            })
            .await
            .unwrap();
        assert_eq!(checked, acked.len());
        // Every 25th version of each context went to the blob tier, at least one per context.
        assert!(
            in_blobs as u64 >= TASKS * SLOTS,
            "{in_blobs} versions in blobs"
        );
        assert_eq!(in_blobs as u64, acked.values().map(|n| n / 25).sum::<u64>());
        eprintln!(
            "crash test: {} contexts, {} acknowledged versions checked after SIGKILL",
            acked.len(),
            acked.values().sum::<u64>()
        );
    });
}

/// The child half of [`acknowledged_writes_survive_sigkill`]; does nothing unless
/// `QI_CRASH_CHILD` names a directory.
#[test]
#[ignore = "child process of acknowledged_writes_survive_sigkill"]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Store::open(config(Path::new(&dir))).unwrap();
        let revisions = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            let revisions = revisions.clone();
            tasks.push(tokio::spawn(async move {
                // Each task cycles through its own contexts, bumping one version at a time.
                let mut versions = [0u64; SLOTS as usize];
                for round in 0u64.. {
                    let slot = (round % versions.len() as u64) as usize;
                    let key = format!("ctx-{task}-{slot}");
                    versions[slot] += 1;
                    let n = versions[slot];
                    let revisions = revisions.clone();
                    let write_key = key.clone();
                    store
                        .write(move |ctx| {
                            let doc = ctx.store_doc(&document(&write_key, n))?;
                            let revision = revisions.fetch_add(1, Ordering::Relaxed) as i64 + 1;
                            ctx.tx().prepare_cached(
                                "INSERT INTO contexts(id, owner, context_type, strategy, resolution, status, \
                                 version, revision, hlc, doc, doc_blob, field_stamps, created_at, updated_at) \
                                 VALUES (?1, 'crash', 'test', 'strong', 'last-write-wins', 'active', ?2, ?3, '0', ?4, ?5, x'80', 0, 0) \
                                 ON CONFLICT(id) DO UPDATE SET version = excluded.version, revision = excluded.revision, \
                                 doc = excluded.doc, doc_blob = excluded.doc_blob",
                            )?
                            .execute(rusqlite::params![write_key, n as i64, revision, doc.doc_column(), doc.blob_column()])?;
                            ctx.tx().prepare_cached(
                                "INSERT INTO versions(context_id, version, revision, agent_id, hlc, op, doc, doc_blob, created_at) \
                                 VALUES (?1, ?2, ?3, 'crash', '0', 'put', ?4, ?5, 0)",
                            )?
                            .execute(rusqlite::params![write_key, n as i64, revision, doc.doc_column(), doc.blob_column()])?;
                            Ok(())
                        })
                        .await
                        .expect("write");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {key} {n}").unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
}
