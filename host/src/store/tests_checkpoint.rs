//! WAL checkpoints: on the checkpointer thread past the threshold, on the writer past the
//! backstop, a WAL that stays bounded under continuous writes, and the configuration's bound.

use super::tests::insert_meta;
use super::*;

fn at(dir: &Path, pages: u32) -> Store {
    Store::open(StoreConfig {
        checkpoint_pages: Some(pages),
        ..StoreConfig::at(dir)
    })
    .expect("open store")
}

async fn put(store: &Store, key: String, value: String) {
    store
        .write(move |ctx| insert_meta(ctx, &key, &value))
        .await
        .expect("write");
}

fn stats(store: &Store) -> tokio::sync::watch::Receiver<CheckpointStats> {
    store
        .checkpoints()
        .expect("a data directory's store checkpoints")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_threshold_the_checkpointer_thread_checkpoints_not_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(dir.path(), 8);
    let mut seen = stats(&store);
    let mut n = 0;
    // Small rows: each commit adds a few pages, so the WAL passes 8 pages well before 16.
    while seen.borrow().wal_pages < 8 {
        assert!(
            n < 200,
            "the WAL never reached 8 pages: {:?}",
            *seen.borrow()
        );
        put(&store, format!("k{n}"), "v".into()).await;
        n += 1;
    }
    let reached = *seen.borrow();
    assert!(reached.wal_pages < 8 * CHECKPOINT_BACKSTOP, "{reached:?}");
    let done = *seen.wait_for(|s| s.background >= 1).await.unwrap();
    assert_eq!(done.on_writer, 0, "{done:?}");
    assert_eq!(done.failed, 0, "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_backstop_the_writer_checkpoints_itself_before_answering() {
    let dir = tempfile::tempdir().unwrap();
    // Threshold 1 page, backstop 2: a commit of several pages is past the backstop at once
    // (and the checkpointer is only asked after a commit of exactly one page).
    let store = at(dir.path(), 1);
    let seen = stats(&store);
    assert_eq!(seen.borrow().on_writer, 0);
    put(&store, "big".into(), "x".repeat(20_000)).await;
    let after = *seen.borrow();
    assert!(after.wal_pages >= 2, "{after:?}");
    assert_eq!(after.on_writer, 1, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_continuous_writes_the_wal_stays_bounded_and_every_write_survives() {
    const THRESHOLD: u32 = 16;
    const WRITERS: usize = 32;
    const WRITES: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let store = at(dir.path(), THRESHOLD);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..WRITES {
                put(&store, format!("w{w}-{n}"), "y".repeat(512)).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let done = *stats(&store).borrow();
    assert!(done.background + done.on_writer >= 1, "{done:?}");
    assert_eq!(done.failed, 0, "{done:?}");
    // The WAL file keeps its largest size: frames of 4 KiB pages plus a 24-byte header each.
    let wal = std::fs::metadata(dir.path().join(format!("{DB_FILE}-wal")))
        .map(|m| m.len())
        .unwrap_or(0);
    let frames = wal.saturating_sub(32) / (4096 + 24);
    // The backstop's bound plus what one batch of every writer can add past it.
    let bound = u64::from(THRESHOLD * CHECKPOINT_BACKSTOP) + 64;
    assert!(
        frames <= bound,
        "the WAL grew to {frames} frames (bound {bound}): {done:?}"
    );
    drop(store);
    let store = at(dir.path(), THRESHOLD);
    store.integrity_check().await.unwrap();
    assert_eq!(
        super::tests::count(&store, "SELECT count(*) FROM meta WHERE key LIKE 'w%'").await,
        (WRITERS * WRITES) as i64
    );
}

/// `checkpoint_pages` from 1 to [`CHECKPOINT_PAGES_CEILING`]: each end opens, one past
/// either end is refused naming the field.
#[test]
fn checkpoint_pages_is_bounded_on_both_sides() {
    for (pages, ok) in [
        (0, false),
        (1, true),
        (CHECKPOINT_PAGES_CEILING, true),
        (CHECKPOINT_PAGES_CEILING + 1, false),
        (u32::MAX, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opened = Store::open(StoreConfig {
            checkpoint_pages: Some(pages),
            ..StoreConfig::at(dir.path())
        });
        match opened {
            Ok(store) => {
                assert!(ok, "checkpoint_pages {pages} was accepted");
                assert!(store.checkpoints().is_some());
            }
            Err(err) => {
                assert!(!ok, "checkpoint_pages {pages}: {err}");
                assert!(
                    matches!(
                        &err,
                        StoreError::InvalidConfig {
                            field: "checkpoint_pages",
                            ..
                        }
                    ),
                    "{err}"
                );
            }
        }
    }
}

#[test]
fn in_memory_and_read_only_stores_never_checkpoint() {
    assert!(
        Store::open(StoreConfig::in_memory())
            .unwrap()
            .checkpoints()
            .is_none()
    );
    let dir = tempfile::tempdir().unwrap();
    drop(at(dir.path(), 8));
    let reader = Store::open_read_only(StoreConfig::at(dir.path())).unwrap();
    assert!(reader.checkpoints().is_none());
}

/// Red team: the last handle of a store dropped by an after-commit hook, on the writer thread
/// itself, right after a commit that checkpointed on the writer (the backstop): the
/// checkpointer thread is stopped from there without a deadlock, and the commit survives.
#[test]
fn the_last_handle_dropped_on_the_writer_after_a_backstop_checkpoint_stops_cleanly() {
    use std::future::Future as _;
    let dir = tempfile::tempdir().unwrap();
    let store = at(dir.path(), 1);
    let seen = stats(&store);
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    // Hold the writer until the big write is queued behind it.
    let release = super::tests::hold_writer(&store);
    let last = store.clone();
    let (dropped, on_drop) = std::sync::mpsc::channel::<std::thread::ThreadId>();
    let mut big = Box::pin(store.write(move |ctx| {
        insert_meta(ctx, "big", &"x".repeat(20_000))?;
        ctx.after_commit(move || {
            drop(last);
            dropped.send(std::thread::current().id()).unwrap();
        });
        Ok(())
    }));
    assert!(big.as_mut().poll(&mut noop).is_pending());
    drop(big);
    drop(store);
    release.send(()).unwrap();
    // A deadlock would leave this waiting: fail instead of hanging the suite.
    let on = on_drop
        .recv_timeout(Duration::from_secs(60))
        .expect("the hook that dropped the last handle never returned");
    assert_ne!(on, std::thread::current().id());
    assert!(seen.borrow().on_writer >= 1, "{:?}", *seen.borrow());
    // Taking the lock again needs the old store gone; its commit is there.
    let store = at(dir.path(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        store.integrity_check().await.unwrap();
        assert_eq!(
            super::tests::count(&store, "SELECT count(*) FROM meta WHERE key = 'big'").await,
            1
        );
    });
}

/// Red team: a reader holding a snapshot (a CLI beside the host, a long read) keeps the
/// checkpoints from copying past it, so the WAL grows while it reads; writes go on (the
/// backstop checkpoint is passive and never waits for readers), and once the reader is gone
/// the WAL starts over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_holding_a_snapshot_never_stalls_writes_and_the_wal_starts_over_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(dir.path(), 4);
    put(&store, "first".into(), "v".into()).await;
    let reader = rusqlite::Connection::open_with_flags(
        dir.path().join(DB_FILE),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM meta WHERE key = 'first'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1);
    let seen = stats(&store);
    for n in 0..40 {
        put(&store, format!("held{n}"), "z".repeat(6_000)).await;
    }
    let held = *seen.borrow();
    assert!(held.wal_pages > 4 * CHECKPOINT_BACKSTOP, "{held:?}");
    // The reader still sees its snapshot.
    let n: i64 = reader
        .query_row(
            "SELECT count(*) FROM meta WHERE key LIKE 'held%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // The next commits copy everything and the WAL starts over from its beginning.
    for n in 0..4 {
        put(&store, format!("after{n}"), "v".into()).await;
    }
    let after = *seen.borrow();
    assert!(
        after.wal_pages < held.wal_pages && after.wal_pages <= 4 * CHECKPOINT_BACKSTOP + 4,
        "the WAL never started over: held {held:?}, after {after:?}"
    );
    assert_eq!(after.failed, 0, "{after:?}");
}
