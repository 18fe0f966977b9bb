//! Writes queued with [`Store::write_self_guarded`]: no savepoint until the write asks for
//! one ([`WriteCtx::guard`]); a failure before any change fails alone, a failure after
//! unguarded changes ends the whole batch.

use super::tests::{Op, batch_with, count, insert_meta, memory};
use super::*;

fn insert(key: &'static str) -> Op<()> {
    Box::new(move |ctx: &mut WriteCtx<'_>| insert_meta(ctx, key, "v"))
}

async fn keys(store: &Store) -> Vec<String> {
    store
        .read(|conn| {
            let mut stmt = conn.prepare("SELECT key FROM meta WHERE key LIKE 'k%' ORDER BY key")?;
            let keys = stmt.query_map([], |r| r.get(0))?;
            Ok(keys.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap()
}

/// Ops 1 and 3 of a five-op batch fail on a duplicate key and by panicking: each gets its own
/// error.
fn assert_own_errors(results: &[Result<(), StoreError>]) {
    assert!(
        matches!(&results[1], Err(StoreError::Sqlite(_))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[3], Err(StoreError::OpPanicked { .. })),
        "{:?}",
        results[3]
    );
}

fn refused() -> StoreError {
    StoreError::InvalidConfig {
        field: "test",
        message: "refused before any change".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_guarded_write_failing_before_any_change_fails_alone() {
    let store = memory();
    let fails: Op<()> = Box::new(|_ctx: &mut WriteCtx<'_>| Err(refused()));
    let results = batch_with(
        &store,
        vec![(insert("k0"), true), (fails, false), (insert("k2"), false)],
    )
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(
            &results[1],
            Err(StoreError::InvalidConfig { field: "test", .. })
        ),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(keys(&store).await, ["k0", "k2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_guarded_write_failing_after_an_unguarded_change_ends_its_batch() {
    let store = memory();
    let hooks = Arc::new(AtomicU64::new(0));
    let earlier: Op<()> = Box::new({
        let hooks = hooks.clone();
        move |ctx: &mut WriteCtx<'_>| {
            insert_meta(ctx, "k0", "v")?;
            ctx.after_commit(move || {
                hooks.fetch_add(1, Ordering::SeqCst);
            });
            Ok(())
        }
    });
    // Inserts a row, then fails on a duplicate key: its row cannot be undone alone.
    let fails: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        insert_meta(ctx, "k1", "v")?;
        insert_meta(ctx, "k1", "again")
    });
    let results = batch_with(
        &store,
        vec![(earlier, true), (fails, false), (insert("k2"), true)],
    )
    .await;
    assert!(
        matches!(&results[0], Err(StoreError::TransactionAborted { cause }) if cause.contains("could not undo alone")),
        "the earlier write of the batch: {:?}",
        results[0]
    );
    assert!(
        matches!(&results[1], Err(StoreError::Sqlite(_))),
        "the failing write gets its own error: {:?}",
        results[1]
    );
    // The next write starts a new transaction.
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(keys(&store).await, ["k2"]);
    assert_eq!(
        hooks.load(Ordering::SeqCst),
        0,
        "an aborted write's hooks never run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_guarded_write_that_guards_first_rolls_back_alone() {
    let store = memory();
    let fails: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        ctx.guard()?;
        ctx.guard()?; // a second call changes nothing
        insert_meta(ctx, "k1", "v")?;
        insert_meta(ctx, "k1", "again")
    });
    let panics: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        ctx.guard()?;
        insert_meta(ctx, "k3", "v")?;
        panic!("op 3 panics after guarding");
    });
    let results = batch_with(
        &store,
        vec![
            (insert("k0"), true),
            (fails, false),
            (insert("k2"), false),
            (panics, false),
            (insert("k4"), true),
        ],
    )
    .await;
    assert_own_errors(&results);
    for n in [0, 2, 4] {
        assert!(results[n].is_ok(), "op {n}: {:?}", results[n]);
    }
    assert_eq!(keys(&store).await, ["k0", "k2", "k4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_on_a_guarded_write_changes_nothing_and_the_op_still_cannot_open_the_savepoint() {
    let store = memory();
    let results = batch_with(
        &store,
        vec![(
            Box::new(|ctx: &mut WriteCtx<'_>| {
                ctx.guard()?;
                insert_meta(ctx, "k0", "v")?;
                // Only the writer may name its savepoint.
                let own = ctx.tx().execute_batch("SAVEPOINT qi_op");
                assert!(own.is_err(), "the op opened the writer's savepoint");
                Ok(())
            }) as Op<()>,
            true,
        )],
    )
    .await;
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta WHERE key = 'k0'").await,
        1
    );
}

/// Red team: a write that changes rows *before* calling [`WriteCtx::guard`] and then fails
/// must not be committed in part. The savepoint opened late holds only what came after it, so
/// rolling back to it alone would keep the earlier change of a write its caller was told
/// failed; the writer has to end the batch instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_guarded_write_guarding_after_a_change_is_never_committed_in_part() {
    let store = memory();
    let late: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        insert_meta(ctx, "k1", "before the guard")?;
        ctx.guard()?;
        insert_meta(ctx, "k1b", "v")?;
        insert_meta(ctx, "k1b", "again")
    });
    let panics: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        insert_meta(ctx, "k3", "before the guard")?;
        ctx.guard()?;
        panic!("op 3 panics after a late guard");
    });
    let results = batch_with(
        &store,
        vec![
            (insert("k0"), true),
            (late, false),
            (insert("k2"), true),
            (panics, false),
            (insert("k4"), true),
        ],
    )
    .await;
    assert_own_errors(&results);
    let stored = keys(&store).await;
    for n in [0, 2] {
        assert!(
            matches!(&results[n], Err(StoreError::TransactionAborted { .. })),
            "op {n} shared a transaction with a write that cannot be undone alone: {:?}",
            results[n]
        );
    }
    assert!(results[4].is_ok(), "{:?}", results[4]);
    assert_eq!(
        stored,
        ["k4"],
        "a failed write's change from before its guard was committed"
    );
}

/// A statement can end the batch's transaction (here a trigger's `RAISE(ROLLBACK)`, standing
/// for the errors after which SQLite rolls back by itself). A write that ignores that error
/// and then asks for its savepoint is refused, rather than opening a new transaction that
/// would hide the rollback; the batch's earlier writes are answered as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_is_refused_once_the_transaction_has_ended() {
    let store = memory();
    store
        .write(|ctx| {
            ctx.tx().execute_batch(
                "CREATE TABLE doomed(x);
                 CREATE TRIGGER doom BEFORE INSERT ON doomed
                 BEGIN SELECT RAISE(ROLLBACK, 'ends the transaction'); END;",
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let swallows: Op<()> = Box::new(|ctx: &mut WriteCtx<'_>| {
        let ended = ctx.tx().execute("INSERT INTO doomed VALUES (1)", []);
        assert!(ended.is_err(), "the trigger did not fire");
        ctx.guard()
    });
    let results = batch_with(
        &store,
        vec![
            (insert("k0"), true),
            (swallows, false),
            (insert("k2"), true),
        ],
    )
    .await;
    assert!(
        matches!(&results[1], Err(StoreError::TransactionAborted { cause }) if cause.contains("already ended")),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(&results[0], Err(StoreError::TransactionAborted { .. })),
        "{:?}",
        results[0]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(keys(&store).await, ["k2"]);
}
