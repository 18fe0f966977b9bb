//! Leader-based commits ([`Store::write_with`] with `may_lead`): a caller commits its own
//! write on its own thread only when the writer is idle, the durability waits for no fsync
//! and the WAL is under the backstop; otherwise the writer thread takes the write.

use super::tests::{count, insert_meta};
use super::*;
use std::future::Future as _;
use std::thread::ThreadId;

const LEAD: WriteMode = WriteMode {
    self_guarded: false,
    may_lead: true,
};

fn at(config: StoreConfig) -> Store {
    Store::open(config).expect("open store")
}

/// Where the write ran: its thread's id and name.
type RanOn = (ThreadId, Option<String>);

fn here() -> RanOn {
    let t = std::thread::current();
    (t.id(), t.name().map(str::to_string))
}

/// A leading write of `value` under `key`, answering where it ran.
async fn lead(store: &Store, key: &'static str, value: String) -> RanOn {
    store
        .write_with(LEAD, move |ctx| {
            insert_meta(ctx, key, &value)?;
            Ok::<_, StoreError>(here())
        })
        .await
        .expect("write")
}

fn on_writer(ran: &RanOn) -> bool {
    ran.1.as_deref() == Some("qi-store-writer")
}

#[tokio::test]
async fn an_idle_writer_lets_the_caller_commit_its_own_write_hooks_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let hooked = Arc::new(std::sync::OnceLock::new());
    let ran = store
        .write_with(LEAD, {
            let hooked = hooked.clone();
            move |ctx| {
                insert_meta(ctx, "k", "v")?;
                ctx.after_commit(move || {
                    hooked.set(here()).unwrap();
                });
                Ok::<_, StoreError>(here())
            }
        })
        .await
        .unwrap();
    assert_eq!(ran, here(), "the write ran on the caller's thread");
    assert_eq!(
        hooked.get(),
        Some(&here()),
        "its hook ran before the answer"
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta WHERE key = 'k'").await,
        1
    );
    // Without `may_lead` the same write goes to the writer thread.
    let queued = store
        .write_with(WriteMode::default(), |ctx| {
            insert_meta(ctx, "q", "v")?;
            Ok::<_, StoreError>(here())
        })
        .await
        .unwrap();
    assert!(on_writer(&queued), "{queued:?}");
}

#[tokio::test]
async fn a_busy_writer_takes_the_write_instead_and_the_caller_is_never_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    // Hold the writer thread inside a batch.
    let (entered, inside) = std::sync::mpsc::channel::<()>();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let held = store.clone();
    let blocker = tokio::spawn(async move {
        held.write(move |_| {
            entered.send(()).unwrap();
            gate.recv().ok();
            Ok(())
        })
        .await
    });
    // The current-thread runtime runs the blocker's first poll while this test waits.
    tokio::task::yield_now().await;
    inside.recv().unwrap();
    let mut write = Box::pin(lead(&store, "k", "v".into()));
    // Polled once on this thread: had it waited for the connection, this would never return.
    assert!(write.as_mut().poll(&mut noop).is_pending());
    release.send(()).unwrap();
    let ran = write.await;
    assert!(on_writer(&ran), "the writer thread took it: {ran:?}");
    blocker.await.unwrap().unwrap();
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta WHERE key = 'k'").await,
        1
    );
}

#[tokio::test]
async fn under_power_loss_durability_no_caller_leads() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig {
        durability: Durability::PowerLoss,
        ..StoreConfig::at(dir.path())
    });
    let ran = lead(&store, "k", "v".into()).await;
    assert!(on_writer(&ran), "each commit fsyncs: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_never_checkpoints_and_past_the_backstop_the_writer_thread_does() {
    let dir = tempfile::tempdir().unwrap();
    // Threshold 8 pages, backstop 16: one commit of 100 kB (25 pages) is past the backstop,
    // a small one is not.
    let store = at(StoreConfig {
        checkpoint_pages: Some(8),
        ..StoreConfig::at(dir.path())
    });
    let seen = store.checkpoints().unwrap();
    let ran = lead(&store, "big", "x".repeat(100_000)).await;
    assert_eq!(
        ran,
        here(),
        "an idle writer and an empty WAL: the caller leads"
    );
    let after = *seen.borrow();
    assert!(after.wal_pages >= 8 * CHECKPOINT_BACKSTOP, "{after:?}");
    assert_eq!(
        after.on_writer, 0,
        "the leader left the checkpoint: {after:?}"
    );
    // Past the backstop nobody leads: the writer thread commits and checkpoints.
    let ran = lead(&store, "next", "y".into()).await;
    assert!(on_writer(&ran), "{ran:?}");
    // (The leader's commit asked the checkpointer, which may hold the checkpoint lock past
    // the writer's wait for it: then that pass did the copying.)
    let next = *seen.borrow();
    assert!(next.on_writer + next.background >= 1, "{next:?}");
    // The WAL starts over at the next commit (the hook counts it at commit time, before that
    // checkpoint), and callers lead again.
    lead(&store, "restart", "z".into()).await;
    assert!(seen.borrow().wal_pages < 8, "{:?}", *seen.borrow());
    let ran = lead(&store, "again", "z".into()).await;
    assert_eq!(ran, here());
}

#[tokio::test]
async fn a_leader_whose_write_panics_or_fails_fails_alone_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let panicked = store
        .write_with(LEAD, |ctx| -> Result<(), StoreError> {
            insert_meta(ctx, "lost", "v")?;
            panic!("hostile write");
        })
        .await;
    assert!(
        matches!(&panicked, Err(StoreError::OpPanicked { message }) if message.contains("hostile write")),
        "{panicked:?}"
    );
    // A self-guarded write failing after an unguarded change: its batch (itself) rolls back.
    let failed = store
        .write_with(
            WriteMode {
                self_guarded: true,
                may_lead: true,
            },
            |ctx| -> Result<(), StoreError> {
                insert_meta(ctx, "lost2", "v")?;
                insert_meta(ctx, "lost2", "duplicate key")
            },
        )
        .await;
    assert!(matches!(failed, Err(StoreError::Sqlite(_))), "{failed:?}");
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta WHERE key LIKE 'lost%'").await,
        0,
        "nothing of either failed write is stored"
    );
    let ran = lead(&store, "after", "v".into()).await;
    assert_eq!(ran, here(), "the connection was handed back");
    store.integrity_check().await.unwrap();
}
