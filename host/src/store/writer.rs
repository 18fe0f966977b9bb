//! The group-commit writer: one thread commits queued writes in batches on the write
//! connection, which a caller may also take to commit its own write while the thread is idle
//! ([`Shared::try_lead`]).
//!
//! The thread blocks for the first queued write, then drains whatever else is queued (up to
//! `max_batch`) into one `BEGIN IMMEDIATE … COMMIT`. While it commits, new writes queue up and
//! form the next batch, so the commit cost is shared by every writer that arrived meanwhile,
//! without any timer. Each write runs inside its own `SAVEPOINT`: a write that fails (or
//! panics) is rolled back alone and answered with its own error, the others commit. A
//! self-guarded write opens its savepoint only when it asks ([`WriteCtx::guard`]); if it fails
//! after changing rows outside one, the batch is rolled back whole and the other writes get
//! [`StoreError::TransactionAborted`] (the price of skipping two statements and the copies of
//! changed pages per write). WAL checkpoints run elsewhere (`checkpoint.rs`). Callers
//! are answered only after `COMMIT` returns, so an acknowledged write is as durable as the
//! configured [`Durability`](super::Durability).

use super::{BlobStore, StoreError, StoredDoc};
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};

/// How [`Store::write_with`](super::Store::write_with) runs a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteMode {
    /// The write opens its own savepoint ([`WriteCtx::guard`]) before any change it may have
    /// to undo, as with [`Store::write_self_guarded`](super::Store::write_self_guarded).
    /// Default `false`: the writer opens it before running the write.
    pub self_guarded: bool,
    /// The calling thread may commit the write itself when the writer is idle (a
    /// leader-based commit; see [`Store::write_with`](super::Store::write_with)). Default
    /// `false`: the write always goes to the writer thread.
    pub may_lead: bool,
}

/// Answers a write's caller: `None` once its batch committed, or the batch's error.
type Answer = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// A callback registered with [`WriteCtx::after_commit`].
type Hook = Box<dyn FnOnce() + Send>;

/// What a write can do inside its transaction: SQL through [`tx`](WriteCtx::tx), blobs
/// through [`blobs`](WriteCtx::blobs), and callbacks that run once it has committed.
pub struct WriteCtx<'a> {
    conn: &'a Connection,
    blobs: &'a BlobStore,
    hooks: Vec<Hook>,
    batch: u64,
    /// Whether this write runs inside its own savepoint (see [`guard`](WriteCtx::guard)).
    guarded: bool,
    control: &'a AtomicBool,
    /// The writer's `SAVEPOINT` statement ([`Core::control_sql`]).
    savepoint_sql: &'a str,
    /// [`Connection::total_changes`] when the write started.
    changes_before: u64,
    /// The write changed rows before it opened its savepoint ([`guard`](WriteCtx::guard)
    /// called late): the savepoint cannot undo them, so a failure ends the batch.
    changed_unguarded: bool,
}

impl<'a> WriteCtx<'a> {
    /// The write connection, inside the batch's transaction and (unless the write was queued
    /// with [`Store::write_self_guarded`](super::Store::write_self_guarded) and has not called
    /// [`guard`](Self::guard)) this write's savepoint.
    /// Use `prepare_cached` for statements you run often. `BEGIN`, `COMMIT` and `ROLLBACK`
    /// are refused (the writer owns the transaction); nested savepoints of your own are fine.
    pub fn tx(&self) -> &Connection {
        self.conn
    }

    /// The blob tier. Blobs written here are on disk before this write's row commits.
    pub fn blobs(&self) -> &BlobStore {
        self.blobs
    }

    /// Encodes `value` and places it inline or in the blob tier ([`StoredDoc::put`]).
    pub fn store_doc(&self, value: &serde_json::Value) -> Result<StoredDoc, StoreError> {
        StoredDoc::put(self.blobs, value)
    }

    /// The number of the transaction (batch) this write runs in: it grows by one with every
    /// `BEGIN`, so a write seeing a new number knows the previous batch has ended (committed,
    /// or failed if its after-commit hooks never ran).
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Opens this write's savepoint if it has none yet, so that a failure from here on rolls
    /// back only this write's changes. A write queued with
    /// [`Store::write_self_guarded`](super::Store::write_self_guarded) calls it before the
    /// first change it may have to undo; for any other write it does nothing. Called after
    /// the write already changed rows, the savepoint cannot undo those: should the write
    /// fail, its whole batch is rolled back as for a write that never guarded.
    pub fn guard(&mut self) -> Result<(), StoreError> {
        if self.guarded {
            return Ok(());
        }
        if self.conn.is_autocommit() {
            // SQLite ended the batch's transaction (an error someone did not pass on): a
            // savepoint now would open a new transaction and hide that.
            return Err(StoreError::TransactionAborted {
                cause: "the batch's transaction had already ended".into(),
            });
        }
        if self.conn.total_changes() != self.changes_before {
            // Too late to undo those alone; a failure from here on ends the batch.
            self.changed_unguarded = true;
        }
        run_control(self.conn, self.control, self.savepoint_sql)?;
        self.guarded = true;
        Ok(())
    }

    /// Runs `hook` right after the transaction holding this write has committed and before
    /// this write's caller is answered, on the thread that committed it: the writer thread,
    /// or for a led write the caller's own ([`Store::write_with`](super::Store::write_with)).
    /// Hooks run in the order writes (and, within a write, registrations) happened. If this
    /// write rolls back, its hooks are discarded. Keep hooks short and non-blocking: they
    /// delay every later write.
    pub fn after_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.push(Box::new(hook));
    }
}

/// How a write that ran inside the transaction is answered once the batch's fate is known.
pub(crate) struct Ran {
    /// The write returned `Ok`; it commits with the batch.
    pub succeeded: bool,
    /// Answers the caller: `None` once the batch committed (or right away for a failed
    /// write, which carries its own error), `Some(error)` if the batch failed.
    pub answer: Answer,
}

/// One queued write.
pub(crate) trait Job: Send {
    /// Whether the writer opens the write's savepoint before running it (`false`: the write
    /// opens it itself with [`WriteCtx::guard`] when it needs one).
    fn guarded(&self) -> bool {
        true
    }
    /// Runs the write inside its savepoint.
    fn run(self: Box<Self>, ctx: &mut WriteCtx<'_>) -> Ran;
    /// Answers the caller with `error` without running the write.
    fn fail(self: Box<Self>, error: StoreError);
}

/// Set while the writer runs its own transaction-control statements; the authorizer refuses
/// `BEGIN`/`COMMIT`/`ROLLBACK` and our savepoint name otherwise.
pub(crate) type ControlFlag = Arc<AtomicBool>;

/// The savepoint each write runs in.
pub(crate) const SAVEPOINT: &str = "qi_op";

/// The write connection and what runs batches on it. Whoever holds it commits: the writer
/// thread, or a caller leading its own write ([`Shared::try_lead`]).
pub(crate) struct Core {
    conn: Connection,
    flag: ControlFlag,
    blobs: BlobStore,
    /// Transactions begun so far ([`WriteCtx::batch`]).
    batches: u64,
    /// The text of each [`Control`] statement, marked with a random comment: the statements
    /// are prepared (and so authorized) once, while the control flag is set, and kept in the
    /// connection's statement cache, where a write asking for the same text would get them
    /// already authorized. Nobody outside `Core` knows this text.
    control_sql: [String; Control::COUNT],
}

/// What the writer thread and the store's handles share.
pub(crate) struct Shared {
    core: Mutex<Core>,
    /// Writes sent to the writer thread that it has not taken yet.
    queued: AtomicUsize,
    /// The writer thread waits for work: it has no batch in flight and is past its short
    /// poll for a follow-up write (`next_job`). While it is busy a write joins its next
    /// batch rather than lead: under load a leader's batch of one would cost a commit of its
    /// own and hold every queued write behind it (found by a red team: with 64 writers a
    /// third of the writes led, and the commits per write went up 15-fold).
    idle: AtomicBool,
    /// Whether a caller may commit its own write ([`Shared::try_lead`]); set when a commit
    /// does not wait for an fsync (see `Store::open`).
    leading: bool,
    /// [`WriterStats`]' counts.
    led: AtomicU64,
    batched: AtomicU64,
    batches: AtomicU64,
}

/// How writes reached the database so far ([`Store::writer_stats`](super::Store::writer_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Writes their callers committed themselves (leader commits, one per transaction).
    pub led: u64,
    /// Writes the writer thread committed.
    pub batched: u64,
    /// Transactions the writer thread ran for them (`batched / batches` is the mean group
    /// commit).
    pub batches: u64,
}

impl Shared {
    pub fn new(conn: Connection, flag: ControlFlag, blobs: BlobStore, leading: bool) -> Shared {
        Shared {
            core: Mutex::new(Core {
                conn,
                flag,
                blobs,
                batches: 0,
                control_sql: Control::marked_sql(),
            }),
            queued: AtomicUsize::new(0),
            idle: AtomicBool::new(true),
            leading,
            led: AtomicU64::new(0),
            batched: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            led: self.led.load(Ordering::Relaxed),
            batched: self.batched.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }

    /// Counts a write about to be sent to the writer thread.
    pub fn queuing(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a write that was not sent after all ([`queuing`](Self::queuing)).
    pub fn unqueued(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// The write connection, for a caller to commit its own write on its own thread (a
    /// leader-based commit: no hand-off to the writer thread and back), when leading is
    /// allowed, nothing waits for the writer thread and nobody is committing. `None`
    /// otherwise: the caller queues its write.
    pub fn try_lead(&self) -> Option<MutexGuard<'_, Core>> {
        if !self.leading
            || !self.idle.load(Ordering::Acquire)
            || self.queued.load(Ordering::Acquire) != 0
        {
            return None;
        }
        let core = match self.core.try_lock() {
            Ok(core) => core,
            Err(std::sync::TryLockError::Poisoned(p)) => self.recovered(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        self.led.fetch_add(1, Ordering::Relaxed);
        Some(core)
    }

    /// Takes the connection, begins a transaction, changes a row and panics: what a panic
    /// outside the parts that catch them would leave behind. Tests only.
    #[cfg(test)]
    pub fn panic_inside_a_transaction(&self) {
        let mut core = self.lock();
        core.control(Control::Begin).unwrap();
        core.conn
            .execute("INSERT INTO meta(key, value) VALUES ('poisoned', 'v')", [])
            .unwrap();
        panic!("a panic while holding the connection");
    }

    /// Whether the writer thread sleeps waiting for work ([`Shared::idle`]).
    #[cfg(test)]
    pub fn writer_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(|p| self.recovered(p.into_inner()))
    }

    /// The connection after a panic while someone held it (outside the parts that catch
    /// panics): a transaction it left open is rolled back, so the next batch can begin.
    fn recovered<'a>(&self, mut core: MutexGuard<'a, Core>) -> MutexGuard<'a, Core> {
        self.core.clear_poison();
        if !core.conn.is_autocommit() {
            tracing::error!("a write panicked inside its transaction; rolling the batch back");
            core.roll_back_batch();
        }
        core
    }
}

thread_local! {
    static LEADING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is committing its own write as a leader ([`Core::lead`]), not the
/// writer thread: the WAL hook then leaves its backstop checkpoint to the writer thread.
pub(crate) fn leading() -> bool {
    LEADING.get()
}

/// The writer thread: takes queued writes and commits them in batches.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub max_batch: usize,
}

/// The answers of a batch's committed (or failed-at-commit) writes, in commit order.
#[must_use = "the callers wait for these"]
pub(crate) struct Answers(Vec<(Answer, Option<StoreError>)>);

impl Answers {
    pub fn send(self) {
        for (answer, error) in self.0 {
            answer(error);
        }
    }
}

/// A write that succeeded and waits for the batch to commit.
struct Done {
    answer: Answer,
    hooks: Vec<Hook>,
}

/// How long the writer polls for the next write before it sleeps. A caller answered by the
/// last commit usually queues its next write within microseconds; catching it without a
/// sleep/wake round trip roughly halves the latency of a lone sequential writer. Polling
/// yields the CPU between attempts, so on a busy machine it costs little.
const POLL_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(50);

/// The next queued write, or `None` once every sender is gone. `idle` is set while the
/// thread sleeps for one (see [`Shared::idle`]), cleared once it has one.
fn next_job(jobs: &mpsc::Receiver<Box<dyn Job>>, idle: &AtomicBool) -> Option<Box<dyn Job>> {
    let started = std::time::Instant::now();
    let job = loop {
        match jobs.try_recv() {
            Ok(job) => break Some(job),
            Err(mpsc::TryRecvError::Disconnected) => break None,
            Err(mpsc::TryRecvError::Empty) if started.elapsed() < POLL_BEFORE_SLEEP => {
                std::thread::yield_now();
            }
            Err(mpsc::TryRecvError::Empty) => {
                idle.store(true, Ordering::Release);
                break jobs.recv().ok();
            }
        }
    };
    idle.store(false, Ordering::Release);
    job
}

/// Runs one of the writer's transaction-control statements (`sql`, from
/// [`Core::control_sql`]) with the authorizer's `flag` set, which lets them through only then:
/// when they are prepared, and whenever SQLite re-prepares them.
fn run_control(conn: &Connection, flag: &AtomicBool, sql: &str) -> rusqlite::Result<()> {
    flag.store(true, Ordering::Relaxed);
    let result = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop);
    flag.store(false, Ordering::Relaxed);
    result
}

/// The writer's own transaction-control statements.
#[derive(Clone, Copy)]
enum Control {
    Begin,
    Savepoint,
    Release,
    RollbackTo,
    Commit,
    Rollback,
}

impl Control {
    const COUNT: usize = 6;
    const ALL: [Control; Control::COUNT] = [
        Control::Begin,
        Control::Savepoint,
        Control::Release,
        Control::RollbackTo,
        Control::Commit,
        Control::Rollback,
    ];

    /// Each statement's text followed by a comment holding 128 random bits.
    fn marked_sql() -> [String; Control::COUNT] {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the operating system's random source works");
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Control::ALL.map(|c| format!("{} -- qi writer {nonce}", c.sql()))
    }

    fn sql(self) -> &'static str {
        match self {
            Control::Begin => "BEGIN IMMEDIATE",
            Control::Savepoint => "SAVEPOINT qi_op",
            Control::Release => "RELEASE qi_op",
            Control::RollbackTo => "ROLLBACK TO qi_op",
            Control::Commit => "COMMIT",
            Control::Rollback => "ROLLBACK",
        }
    }
}

impl Writer {
    /// The writer thread's body: returns when every [`Store`](super::Store) handle is gone.
    pub fn run(self, jobs: mpsc::Receiver<Box<dyn Job>>) {
        let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(self.max_batch);
        while let Some(first) = next_job(&jobs, &self.shared.idle) {
            batch.push(first);
            // A leading caller may hold the connection: queued writes gather meanwhile.
            let mut core = self.shared.lock();
            while batch.len() < self.max_batch {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            self.shared
                .batched
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.shared.batches.fetch_add(1, Ordering::Relaxed);
            let answers = core.run_batch(batch.drain(..));
            drop(core);
            answers.send();
        }
    }
}

impl Core {
    /// Runs one of the writer's own control statements (the authorizer lets them through
    /// only while the flag is set, when they are prepared and if SQLite re-prepares them).
    fn control(&mut self, control: Control) -> rusqlite::Result<()> {
        run_control(&self.conn, &self.flag, &self.control_sql[control as usize])
    }

    /// Ends the batch's transaction as failed: rotated keys are forgotten and, unless SQLite
    /// already ended it, the transaction is rolled back.
    fn roll_back_batch(&mut self) {
        self.keys_batch_ended(false);
        if !self.conn.is_autocommit() {
            let _ = self.control(Control::Rollback);
        }
    }

    fn rollback_savepoint(&mut self) -> rusqlite::Result<()> {
        self.control(Control::RollbackTo)?;
        self.control(Control::Release)
    }

    /// Runs `job` alone in a transaction on the calling thread (a leading caller's own write;
    /// see [`Shared::try_lead`]). While it runs, [`leading`] is true on this thread.
    pub fn lead(&mut self, job: Box<dyn Job>) -> Answers {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                LEADING.set(false);
            }
        }
        LEADING.set(true);
        let _reset = Reset;
        self.run_batch(std::iter::once(job))
    }

    /// Runs `jobs` in one transaction and answers each (see the module docs).
    /// The answers of the writes that waited for the commit are returned, to be sent once
    /// the connection is released (a caller woken by its answer may then lead at once).
    pub fn run_batch(&mut self, jobs: impl Iterator<Item = Box<dyn Job>>) -> Answers {
        let mut done: Vec<Done> = Vec::new();
        let mut in_tx = false;
        for job in jobs {
            if !in_tx {
                if let Err(e) = self.control(Control::Begin) {
                    job.fail(StoreError::Sqlite(e));
                    continue;
                }
                in_tx = true;
                self.batches += 1;
            }
            let guarded = job.guarded();
            if guarded && let Err(e) = self.control(Control::Savepoint) {
                let cause = e.to_string();
                job.fail(StoreError::Sqlite(e));
                if self.conn.is_autocommit() {
                    self.keys_batch_ended(false);
                    abort(&mut done, &cause);
                    in_tx = false;
                }
                continue;
            }
            let changes_before = self.conn.total_changes();
            let mut ctx = WriteCtx {
                conn: &self.conn,
                blobs: &self.blobs,
                hooks: Vec::new(),
                batch: self.batches,
                guarded,
                control: &self.flag,
                savepoint_sql: &self.control_sql[Control::Savepoint as usize],
                changes_before,
                changed_unguarded: false,
            };
            let ran = job.run(&mut ctx);
            let (hooks, guarded, changed_unguarded) =
                (ctx.hooks, ctx.guarded, ctx.changed_unguarded);
            if self.conn.is_autocommit() {
                self.keys_batch_ended(false);
                // SQLite rolled back the whole transaction (e.g. SQLITE_FULL or an I/O error
                // inside this write): every earlier write of the batch is gone too.
                let cause = "a write in the same batch hit an error that ends the transaction";
                abort(&mut done, cause);
                (ran.answer)(ran.succeeded.then(|| StoreError::TransactionAborted {
                    cause: cause.to_string(),
                }));
                in_tx = false;
                continue;
            }
            // A write that guarded only after changing rows has a savepoint that cannot undo
            // all of it: if it failed, it is handled as an unguarded one.
            if !guarded || (changed_unguarded && !ran.succeeded) {
                self.keys_write_ended(ran.succeeded);
                if ran.succeeded {
                    done.push(Done {
                        answer: ran.answer,
                        hooks,
                    });
                    continue;
                }
                drop(hooks);
                (ran.answer)(None);
                if changed_unguarded || self.conn.total_changes() != changes_before {
                    // Changed rows with no savepoint to undo them alone: the batch ends.
                    let cause = "a write in the same batch failed after changing rows it could not undo alone";
                    self.roll_back_batch();
                    abort(&mut done, cause);
                    in_tx = false;
                }
                continue;
            }
            let outcome = if ran.succeeded {
                self.control(Control::Release)
            } else {
                Ok(())
            };
            self.keys_write_ended(ran.succeeded && outcome.is_ok());
            match outcome {
                Ok(()) if ran.succeeded => done.push(Done {
                    answer: ran.answer,
                    hooks,
                }),
                Ok(()) => {
                    drop(hooks);
                    if let Err(e) = self.rollback_savepoint() {
                        self.abort_tx(&mut done, &e);
                        in_tx = false;
                    }
                    (ran.answer)(None);
                }
                Err(e) => {
                    drop(hooks);
                    let rolled_back = self.rollback_savepoint();
                    (ran.answer)(Some(StoreError::Sqlite(e)));
                    if let Err(e) = rolled_back {
                        self.abort_tx(&mut done, &e);
                        in_tx = false;
                    }
                }
            }
        }
        if !in_tx {
            return Answers(Vec::new());
        }
        let committed = self.control(Control::Commit);
        // Rotated keys become current before anyone learns the batch committed; a failed
        // commit forgets them, so nothing is sealed under a key that was never stored.
        self.keys_batch_ended(committed.is_ok());
        match committed {
            Ok(()) => {
                // Before anyone learns of the commit (so a caller that dropped a blob's last
                // reference finds it gone) and before the next batch (so no write can be about
                // to name a candidate).
                if let Err(e) = super::gc::sweep_candidates(&self.conn, &self.blobs) {
                    tracing::warn!(error = %e, "collecting unreferenced blobs failed; the next open collects them");
                }
                let mut answers = Vec::with_capacity(done.len());
                for Done { answer, hooks } in done {
                    for hook in hooks {
                        if let Err(payload) = catch_unwind(AssertUnwindSafe(hook)) {
                            tracing::error!(
                                error = %StoreError::panicked(payload),
                                "an after-commit hook panicked"
                            );
                        }
                    }
                    answers.push((answer, None));
                }
                Answers(answers)
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.control(Control::Rollback);
                }
                let source = Arc::new(e);
                Answers(
                    done.into_iter()
                        .map(|Done { answer, .. }| {
                            let error = StoreError::Commit {
                                source: source.clone(),
                            };
                            (answer, Some(error))
                        })
                        .collect(),
                )
            }
        }
    }

    fn keys_write_ended(&self, kept: bool) {
        if let Some(keys) = self.blobs.keys() {
            keys.write_ended(kept);
        }
    }

    fn keys_batch_ended(&self, committed: bool) {
        if let Some(keys) = self.blobs.keys() {
            keys.batch_ended(committed);
        }
    }

    /// Ends a transaction that can no longer be trusted and fails every write waiting in it.
    fn abort_tx(&mut self, done: &mut Vec<Done>, error: &rusqlite::Error) {
        self.roll_back_batch();
        abort(done, &error.to_string());
    }
}

fn abort(done: &mut Vec<Done>, cause: &str) {
    for Done { answer, .. } in done.drain(..) {
        answer(Some(StoreError::TransactionAborted {
            cause: cause.to_string(),
        }));
    }
}

/// A write queued by [`Store::write_with_error`](super::Store::write_with_error).
pub(crate) struct PendingWrite<F, T, E> {
    pub op: F,
    pub reply: tokio::sync::oneshot::Sender<Result<T, E>>,
    /// [`Job::guarded`].
    pub guarded: bool,
}

impl<F, T, E> Job for PendingWrite<F, T, E>
where
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn guarded(&self) -> bool {
        self.guarded
    }

    fn run(self: Box<Self>, ctx: &mut WriteCtx<'_>) -> Ran {
        let PendingWrite { op, reply, .. } = *self;
        let result = catch_unwind(AssertUnwindSafe(|| op(ctx)))
            .unwrap_or_else(|payload| Err(E::from(StoreError::panicked(payload))));
        Ran {
            succeeded: result.is_ok(),
            answer: Box::new(move |batch_error| {
                let answer = match batch_error {
                    None => result,
                    Some(error) => Err(E::from(error)),
                };
                // The caller may have stopped waiting; its write still committed.
                let _ = reply.send(answer);
            }),
        }
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.reply.send(Err(E::from(error)));
    }
}
