//! WAL checkpoints on their own thread, so the writer thread only commits.
//!
//! In WAL mode a commit appends pages to `qi.db-wal`; a *checkpoint* copies them back into
//! `qi.db` and fsyncs both files (under either [`Durability`](super::Durability)). Left to
//! SQLite, the checkpoint runs inside the `COMMIT` that takes the WAL past
//! `wal_autocheckpoint` pages, on the writer thread, so every write queued behind that batch
//! waits for the copy and two fsyncs (measured with `cargo bench -p qi-host --bench storage`:
//! checkpoints were 18 % of the writer thread's time with 64 writers, and they set the p99 of
//! a commit).
//!
//! Here the writer connection's WAL hook (`sqlite3_wal_hook`, which replaces SQLite's
//! automatic checkpoint) only wakes a checkpointer thread once the WAL holds
//! [`threshold`](Checkpointer::start) pages, and again each time it has grown by a quarter of
//! the threshold; that thread runs `PASSIVE` checkpoints on its own connection (a passive
//! checkpoint never blocks the writer or readers).
//!
//! A checkpoint running beside a busy writer copies what was committed when it started, so
//! under continuous writes the WAL could never be rewound to its start (SQLite rewinds it
//! when a write transaction begins and every frame has been copied) and would grow without
//! bound. The backstop: a commit that leaves more than [`BACKSTOP`] × the threshold pages in
//! the WAL checkpoints on the writer thread itself, as SQLite's own automatic checkpoint
//! would. Usually only the frames committed since the checkpointer's last pass are left to
//! copy. A caller committing its own write (`Store::write_with`, leader-based) never runs
//! that checkpoint: its commit only asks the checkpointer, and once the WAL is past the
//! backstop no caller that checks from then on may lead, so a later commit is the writer
//! thread's. So the WAL stays under about `BACKSTOP` × threshold pages plus one batch and one
//! write per caller that was leading right then.

use super::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How many thresholds of pages the WAL may hold before the writer checkpoints itself: 2.
pub const BACKSTOP: u32 = 2;

/// Past the threshold, the checkpointer is asked for another pass each time the WAL has grown
/// by a `1/STEPS` of the threshold (each pass fsyncs, so not after every commit): 4.
const STEPS: u32 = 4;

/// Checkpoints run so far ([`Store::checkpoints`](super::Store::checkpoints)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Passive checkpoints the checkpointer thread completed.
    pub background: u64,
    /// Checkpoints the writer thread ran itself (the [`BACKSTOP`]).
    pub on_writer: u64,
    /// Checkpoints that failed (logged at `warn`); the next request retries.
    pub failed: u64,
    /// Pages in the WAL after the last commit (counted from its start; 0 before any commit).
    pub wal_pages: u32,
}

/// What the WAL hook and the checkpointer thread share.
struct Signal {
    state: Mutex<State>,
    /// Wakes the checkpointer thread (a request, or stop).
    wake: Condvar,
    /// Wakes a writer waiting for the checkpointer's pass to end.
    idle: Condvar,
    stats: watch::Sender<CheckpointStats>,
}

#[derive(Default)]
struct State {
    requested: bool,
    stop: bool,
    /// The checkpointer thread is running a checkpoint.
    running: bool,
}

/// Longest the writer waits for the checkpointer's pass to end before its own backstop
/// checkpoint: 1 s (a pass copies at most the WAL, milliseconds).
const IDLE_WAIT: Duration = Duration::from_secs(1);

impl Signal {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn request(&self) {
        let mut state = self.lock();
        if !state.requested {
            state.requested = true;
            self.wake.notify_one();
        }
    }

    /// Waits (at most [`IDLE_WAIT`]) until the checkpointer thread is not checkpointing.
    fn wait_idle(&self) {
        let state = self.lock();
        let _ = self
            .idle
            .wait_timeout_while(state, IDLE_WAIT, |s| s.running)
            .unwrap_or_else(|p| p.into_inner());
    }

    fn count(&self, ok: bool, background: bool) {
        self.stats.send_modify(|s| match (ok, background) {
            (false, _) => s.failed += 1,
            (true, true) => s.background += 1,
            (true, false) => s.on_writer += 1,
        });
    }
}

/// The checkpointer thread of a store with a data directory; stops when dropped.
pub(crate) struct Checkpointer {
    signal: Arc<Signal>,
    /// Pages in the WAL at which checkpoints are requested.
    threshold: u32,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens the checkpointer's connection to `db_path`, starts its thread and installs the
    /// WAL hook on `writer` (which disables SQLite's automatic checkpoint there): checkpoints
    /// are requested once the WAL holds `threshold` pages (at least 1).
    pub fn start(
        db_path: &str,
        writer: &mut Connection,
        threshold: u32,
    ) -> Result<Checkpointer, StoreError> {
        let threshold = threshold.max(1);
        let open_err = |source| StoreError::Open {
            path: db_path.to_string(),
            source,
        };
        let mut conn =
            Connection::open_with_flags(db_path, OpenFlags::default()).map_err(open_err)?;
        super::setup::install_authorizer(&mut conn, None).map_err(open_err)?;
        // Opens the WAL on this connection (until it reads, a checkpoint finds no WAL to copy).
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::WalUnavailable { mode });
        }
        let signal = Arc::new(Signal {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
            stats: watch::Sender::new(CheckpointStats::default()),
        });
        // What the opening (migrations, keys) left in the WAL is copied now, so the WAL
        // starts over with the first write and the counts below start from nothing.
        if let Err(e) =
            writer.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE)
        {
            tracing::debug!(error = %e, "the checkpoint at open did not run; the first commits catch up");
        }
        let backstop = threshold.saturating_mul(BACKSTOP);
        let step = (threshold / STEPS).max(1);
        let hook_signal = signal.clone();
        // The WAL's size at the last commit, and the size at which to ask for the next pass.
        let (mut last, mut next) = (0u32, threshold);
        writer.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            let pages = u32::try_from(pages).unwrap_or(0);
            if pages < last {
                // Rewound to its start: every frame had been copied.
                next = threshold;
            }
            last = pages;
            hook_signal.stats.send_modify(|s| s.wal_pages = pages);
            if pages >= backstop && !super::writer::leading() {
                // The checkpointer may hold the checkpoint lock (`SQLITE_BUSY`): wait for its
                // pass to end and copy the rest, so the WAL can start over.
                let mut done = wal.checkpoint();
                if matches!(&done, Err(e) if busy(e)) {
                    hook_signal.wait_idle();
                    done = wal.checkpoint();
                }
                match done {
                    Ok(()) => hook_signal.count(true, false),
                    Err(e) if busy(&e) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, pages, "checkpointing on the writer failed");
                        hook_signal.count(false, false);
                    }
                }
            } else if pages >= next || pages >= backstop {
                hook_signal.request();
                next = pages.saturating_add(step);
            }
            // An error here would fail the statement although its commit happened.
            Ok(())
        }))?;
        let thread_signal = signal.clone();
        let thread = std::thread::Builder::new()
            .name("qi-store-checkpoint".into())
            .spawn(move || run(conn, &thread_signal))
            .map_err(|e| StoreError::io(std::path::PathBuf::from(db_path), e))?;
        Ok(Checkpointer {
            signal,
            threshold,
            thread: Some(thread),
        })
    }

    /// Whether the WAL held at least [`BACKSTOP`] × the threshold's pages after the last
    /// commit: the next commit is the writer thread's, and checkpoints on it.
    pub fn past_backstop(&self) -> bool {
        self.signal.stats.borrow().wal_pages >= self.threshold.saturating_mul(BACKSTOP)
    }

    /// The counts so far, updated as checkpoints complete.
    pub fn stats(&self) -> watch::Receiver<CheckpointStats> {
        self.signal.stats.subscribe()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal.lock().stop = true;
        self.signal.wake.notify_one();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// The checkpointer thread: one passive checkpoint per request, until told to stop.
fn run(conn: Connection, signal: &Signal) {
    loop {
        {
            let mut state = signal.lock();
            while !state.requested && !state.stop {
                state = signal.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.stop {
                return;
            }
            state.requested = false;
            state.running = true;
        }
        let done = conn.wal_checkpoint_v2(None::<&str>, rusqlite::wal::CheckpointMode::PASSIVE);
        signal.lock().running = false;
        signal.idle.notify_all();
        match &done {
            // The writer's backstop checkpoint holds the lock; it copies what this would.
            Err(e) if busy(e) => {}
            Err(e) => {
                tracing::warn!(error = %e, "a background checkpoint failed; a later commit asks again");
                signal.count(false, true);
            }
            Ok(_) => signal.count(true, true),
        }
    }
}

/// Whether a checkpoint found the checkpoint lock taken (by the other side).
fn busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}
