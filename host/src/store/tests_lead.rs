//! Leader-based commits ([`Store::write_with`] with `may_lead`): a caller commits its own
//! write on its own thread only when the writer is idle, the durability waits for no fsync
//! and the WAL is under the backstop; otherwise the writer thread takes the write.

use super::tests::{count, hold_writer, insert_meta};
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
    let release = hold_writer(&store);
    let mut write = Box::pin(lead(&store, "k", "v".into()));
    // Polled once on this thread: had it waited for the connection, this would never return.
    assert!(write.as_mut().poll(&mut noop).is_pending());
    release.send(()).unwrap();
    let ran = write.await;
    assert!(on_writer(&ran), "the writer thread took it: {ran:?}");
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
    store.wait_writer_idle();
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

/// The writer's transaction-control statements must stay its own: an op that asks the
/// connection's statement cache for `COMMIT` (or any other of them) must get a freshly
/// prepared statement, which the authorizer refuses, never the writer's already-authorized
/// one. Otherwise an op can commit half of its batch: here the first write's row is durably
/// stored although every write of the batch is answered with an error.
#[tokio::test]
async fn an_op_cannot_reuse_the_writers_cached_control_statements() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    // One write each way, so that every control statement has run at least once (the
    // savepoint ones in a failing write).
    lead(&store, "warm", "v".into()).await;
    let _ = store
        .write(|ctx| -> Result<(), StoreError> { insert_meta(ctx, "warm", "duplicate") })
        .await;
    for sql in [
        "COMMIT",
        "ROLLBACK",
        "BEGIN IMMEDIATE",
        "RELEASE qi_op",
        "ROLLBACK TO qi_op",
        "SAVEPOINT qi_op",
    ] {
        let ran = Arc::new(AtomicBool::new(false));
        let result = store
            .write({
                let ran = ran.clone();
                move |ctx| {
                    insert_meta(ctx, "half", sql)?;
                    let executed = ctx.tx().prepare_cached(sql).and_then(|mut s| s.execute([]));
                    ran.store(executed.is_ok(), Ordering::SeqCst);
                    Ok::<_, StoreError>(())
                }
            })
            .await;
        assert!(
            !ran.load(Ordering::SeqCst),
            "an op ran the writer's own `{sql}` (write answered {result:?})"
        );
        // Nothing this test wrote stays behind (the writes above were refused or failed).
        store
            .write(|ctx| {
                ctx.tx()
                    .execute("DELETE FROM meta WHERE key = 'half'", [])?;
                Ok::<_, StoreError>(())
            })
            .await
            .unwrap();
    }
}

/// A waker that, when the writer thread answers, tells the test and then holds that thread
/// until the test lets it go: the writer has released the connection and taken everything
/// queued, but it is still answering its batch.
struct HoldingWaker {
    woken: std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl std::task::Wake for HoldingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let Some(woken) = self.woken.lock().unwrap().take() else {
            return;
        };
        woken.send(()).unwrap();
        // A hang guard only: the test releases it as soon as it has looked.
        let _ = self
            .gate
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(30));
    }
}

/// Under load the writer thread answers a batch and at once takes the writes that queued
/// meanwhile (or polls a moment for them). A write issued right then must join its next
/// batch: were it to lead, its batch of one would cost a commit of its own and every write
/// queuing behind it would wait for it (measured on the leader-based commit as first
/// written: 64 writers took 15-20 times as many commits and about twice as long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_issued_while_the_writer_answers_its_batch_does_not_lead() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
    // Hold the writer thread inside a batch, so the next write queues behind it.
    let release = hold_writer(&store);
    let mut queued = Box::pin(lead(&store, "queued", "v".into()));
    let (woken_tx, woken) = std::sync::mpsc::channel();
    let (let_go, held) = std::sync::mpsc::channel();
    let holding = std::task::Waker::from(Arc::new(HoldingWaker {
        woken: std::sync::Mutex::new(Some(woken_tx)),
        gate: std::sync::Mutex::new(held),
    }));
    assert!(
        queued
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&holding))
            .is_pending()
    );
    release.send(()).unwrap();
    // The writer committed the queued write and is answering it.
    woken
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the writer thread answers the queued write");
    let mut next = Box::pin(lead(&store, "next", "v".into()));
    let polled = next.as_mut().poll(&mut noop);
    let_go.send(()).unwrap();
    let ran = match polled {
        std::task::Poll::Ready(ran) => ran,
        std::task::Poll::Pending => next.await,
    };
    assert!(
        on_writer(&ran),
        "the write led while the writer thread was still answering its batch: {ran:?}"
    );
    assert!(on_writer(&queued.await));
}

/// Many concurrent writers share group commits as they did before leaders existed: hardly
/// any write is committed as a batch of its own. (When leaders could take over while the
/// writer thread was about to take the queue, a third of these writes led. On an idle machine
/// under 2 % lead; on a loaded one, where the writer thread sleeps more often, up to about 9 %
/// was seen: the bound is a fifth.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_many_concurrent_writers_hardly_any_write_leads() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let mut tasks = Vec::new();
    for t in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut led = 0;
            for i in 0..50 {
                let key = format!("{t}-{i}");
                let ran = store
                    .write_with(LEAD, move |ctx| {
                        insert_meta(ctx, &key, "v")?;
                        Ok::<_, StoreError>(here())
                    })
                    .await
                    .unwrap();
                led += usize::from(!on_writer(&ran));
            }
            led
        }));
    }
    let mut led = 0;
    for t in tasks {
        led += t.await.unwrap();
    }
    assert!(led * 5 <= 64 * 50, "{led} of {} writes led", 64 * 50);
}

/// A panic while someone held the connection inside a transaction (outside the parts that
/// catch panics) poisons its lock; whoever takes it next rolls that transaction back, so
/// leaders and the writer thread go on committing (they used to fail every later `BEGIN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_holding_the_connection_in_a_transaction_is_rolled_back_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = at(StoreConfig::at(dir.path()));
    let poison = |store: &Store| {
        let shared = store.inner.shared.clone().expect("a writer");
        let panicked = std::thread::spawn(move || shared.panic_inside_a_transaction()).join();
        assert!(panicked.is_err());
    };
    poison(&store);
    store.wait_writer_idle();
    let ran = lead(&store, "led", "v".into()).await;
    assert_eq!(ran, here(), "the leader took the poisoned connection");
    poison(&store);
    let ran = store
        .write(|ctx| {
            insert_meta(ctx, "queued", "v")?;
            Ok(here())
        })
        .await
        .unwrap();
    assert!(on_writer(&ran), "{ran:?}");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM meta WHERE key IN ('led', 'queued')"
        )
        .await,
        2
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM meta WHERE key = 'poisoned'").await,
        0,
        "the panicked transaction was rolled back"
    );
    store.integrity_check().await.unwrap();
}
