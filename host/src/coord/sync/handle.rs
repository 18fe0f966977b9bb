//! What an agent inside a coordinated run carries, and the guards that mark it waiting.

use super::*;

/// What an agent inside a coordinated run carries: the run's sync engine and the subtask it
/// runs (its identity at every point).
#[derive(Clone, Debug)]
pub struct SyncHandle {
    /// The run's engine.
    pub engine: Arc<SyncEngine>,
    /// The subtask this agent runs.
    pub participant: String,
    /// Set while the agent is inside a sync call (waiting is not a stall).
    pub waiting: Arc<std::sync::atomic::AtomicBool>,
    /// Microseconds this attempt has spent inside sync calls so far.
    pub waited_us: Arc<std::sync::atomic::AtomicU64>,
    /// The latest due time of a clock the agent subscribed to (`wasi:clocks` sleeps): while
    /// it is blocked in `wasi:io/poll` before then, it waits on that timer, which is not a
    /// stall.
    pub timer_due: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    /// Calls of `wasi:io/poll` (`poll`, `pollable.block`) the agent is blocked in now.
    pub polling: Arc<std::sync::atomic::AtomicU32>,
    /// The run's channels.
    pub channels: Option<Arc<crate::coord::channels::ChannelHub>>,
    /// The attempt this agent runs (from 1): channel leases and topic cursors are per attempt.
    pub attempt: u32,
    /// The run's id (model-call recordings are scoped to `run/<run>/<subtask>`).
    pub run_id: String,
}

impl SyncHandle {
    /// Records that the agent subscribed to a clock due in `after`.
    pub fn note_timer(&self, after: Duration) {
        let now = tokio::time::Instant::now();
        let due = now.checked_add(after).unwrap_or(now);
        let mut slot = self.timer_due.lock().expect("timer lock poisoned");
        *slot = Some(slot.map_or(due, |d| d.max(due)));
    }

    /// Whether the agent is waiting now: inside a sync call or another call with its own
    /// timeout (`events.next`), or blocked in `wasi:io/poll` before a clock it subscribed to
    /// is due (a subscription alone, or one dropped, is not waiting).
    pub fn is_waiting(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.waiting.load(Ordering::Relaxed)
            || (self.polling.load(Ordering::Relaxed) > 0
                && self
                    .timer_due
                    .lock()
                    .expect("timer lock poisoned")
                    .is_some_and(|d| d > tokio::time::Instant::now()))
    }

    /// Counts the agent as blocked in `wasi:io/poll` until the guard is dropped.
    pub fn enter_poll(&self) -> PollGuard<'_> {
        self.polling
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PollGuard(self)
    }

    /// Marks the agent as waiting, without counting the time as a sync wait, until the guard
    /// is dropped: for host calls that wait with their own timeout (`events.next`).
    pub fn enter_idle(&self) -> IdleGuard<'_> {
        self.waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // The scheduler looks again: the concurrency slot this agent held is free while it
        // waits.
        self.engine.idle(&self.participant);
        IdleGuard(self)
    }

    /// Marks the agent as waiting until the guard is dropped (the call returned, or the agent
    /// was terminated inside it), then adds the time to [`waited_us`](Self::waited_us).
    pub fn enter_wait(&self) -> WaitGuard<'_> {
        self.waiting
            .store(true, std::sync::atomic::Ordering::Relaxed);
        WaitGuard {
            handle: self,
            since: tokio::time::Instant::now(),
        }
    }
}

/// See [`SyncHandle::enter_poll`].
pub struct PollGuard<'a>(&'a SyncHandle);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0
            .polling
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// See [`SyncHandle::enter_idle`].
pub struct IdleGuard<'a>(&'a SyncHandle);

impl Drop for IdleGuard<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

/// See [`SyncHandle::enter_wait`].
pub struct WaitGuard<'a> {
    handle: &'a SyncHandle,
    since: tokio::time::Instant,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.handle.waiting.store(false, Ordering::Relaxed);
        let us = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.handle.waited_us.fetch_add(us, Ordering::Relaxed);
    }
}
