//! Store tests: group commit, savepoint isolation, hooks, transaction control, typed errors.
//! Values, blobs, migrations, readers and configuration are in `tests_data.rs`.

use super::*;
use std::future::Future as _;
use std::sync::Mutex as StdMutex;

pub(super) fn memory() -> Store {
    Store::open(StoreConfig::in_memory()).expect("open in-memory store")
}

pub(super) async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .read(move |conn| Ok(conn.query_row(sql, [], |r| r.get(0))?))
        .await
        .unwrap()
}

/// Queues a write that holds the writer thread inside its batch and returns once the writer
/// is inside it: writes queued from now on form the next batch. Send on the returned channel
/// (or drop it) to let the writer go on. The held write's answer is not awaited.
pub(super) fn hold_writer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (entered, inside) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let mut held = Box::pin(store.write(move |_| {
        entered.send(()).unwrap();
        gate.recv().ok();
        Ok(())
    }));
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(held.as_mut().poll(&mut noop).is_pending());
    drop(held);
    inside.recv().unwrap();
    release
}

pub(super) fn insert_meta(
    ctx: &mut WriteCtx<'_>,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
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
pub(super) type Op<T> = Box<dyn FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send>;

/// Queues `ops` in order while the writer is busy, so they land in one batch, and returns
/// each one's answer.
pub(super) async fn batch_of<T: Send + 'static>(
    store: &Store,
    ops: Vec<Op<T>>,
) -> Vec<Result<T, StoreError>> {
    batch_with(store, ops.into_iter().map(|op| (op, true)).collect()).await
}

/// [`batch_of`] with each op's [`Job::guarded`]: `false` queues it with
/// [`Store::write_self_guarded`].
pub(super) async fn batch_with<T: Send + 'static>(
    store: &Store,
    ops: Vec<(Op<T>, bool)>,
) -> Vec<Result<T, StoreError>> {
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
        .map(|(op, guarded)| {
            let mode = WriteMode {
                self_guarded: !guarded,
                may_lead: false,
            };
            Box::pin(store.write_with(mode, op))
        })
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
