//! The write entry points of [`Store`]: a write is queued for the writer thread, or, with
//! [`WriteMode::may_lead`] and an idle writer, committed by its caller (see the module docs
//! of `store`, "Leader commits").

use super::writer::{Job, PendingWrite};
use super::{Store, StoreError, WriteCtx, WriteMode, lock};

impl Store {
    /// Runs `op` inside the next group-commit transaction and returns its result once that
    /// transaction has committed (so an `Ok` is durable per
    /// [`Durability`](super::Durability)). An `Err` from `op` (or a panic in it) rolls back
    /// only `op`'s own changes. `op` runs on the writer thread: keep it to SQL and blob
    /// writes, and never block on other async work inside it.
    pub async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with_error(op).await
    }

    /// [`Store::write`] with the caller's own error type: `op` returning `Err` rolls back its
    /// changes and the error comes back unchanged; store failures arrive as `E::from`.
    pub async fn write_with_error<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_with(WriteMode::default(), op).await
    }

    /// [`write_with_error`](Self::write_with_error) without a savepoint opened for `op`:
    /// `op` calls [`WriteCtx::guard`] before the first change it may have to undo. Saves the
    /// savepoint's statements and its copies of changed pages, for a write that can only fail
    /// before it changes anything (checked and worked out beforehand). If `op` returns `Err`
    /// after changing rows without a guard, its batch cannot be committed in part: it is
    /// rolled back whole, and every other write of it fails with
    /// [`StoreError::TransactionAborted`].
    pub async fn write_self_guarded<T, E, F>(&self, op: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let mode = WriteMode {
            self_guarded: true,
            may_lead: false,
        };
        self.write_with(mode, op).await
    }

    /// [`write_with_error`](Self::write_with_error), or with `mode.self_guarded`
    /// [`write_self_guarded`](Self::write_self_guarded), and with `mode.may_lead` committed
    /// by the calling thread itself when the writer is idle: its thread sleeps waiting for
    /// work, no write is queued or being committed, the store's
    /// [`Durability`](super::Durability) is `Process` (a commit waits for no fsync) and the
    /// WAL is under the checkpoint backstop
    /// ([`CHECKPOINT_BACKSTOP`](super::CHECKPOINT_BACKSTOP); a leader's commit never
    /// checkpoints itself, it leaves that to the writer thread). That saves the two thread
    /// hand-offs of a queued write (to the writer thread and back), most of a lone writer's
    /// latency, at the price of running `op`, the commit and the after-commit hooks on the
    /// caller's thread: an async runtime's worker is held for one commit
    /// (`synchronous=NORMAL`, no fsync; blob files written by `op` are still fsynced).
    /// Otherwise the write is queued as usual. Keep `op` free of anything that waits on other
    /// tasks.
    pub async fn write_with<T, E, F>(&self, mode: WriteMode, op: F) -> Result<T, E>
    where
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let guarded = !mode.self_guarded;
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let job: Box<dyn Job> = Box::new(PendingWrite { op, reply, guarded });
        if mode.may_lead
            && let Some(shared) = &self.inner.shared
            && self
                .inner
                .checkpointer
                .as_ref()
                .is_none_or(|c| !c.past_backstop())
            && let Some(mut core) = shared.try_lead()
        {
            let answers = core.lead(job);
            drop(core);
            answers.send();
            return answer
                .try_recv()
                .unwrap_or_else(|_| Err(E::from(StoreError::Closed)));
        }
        self.send(job).await?;
        answer
            .await
            .unwrap_or_else(|_| Err(E::from(StoreError::Closed)))
    }

    /// Sends `job` to the writer thread.
    async fn send<E: From<StoreError>>(&self, job: Box<dyn Job>) -> Result<(), E> {
        let sent = match (&self.inner.jobs, &self.inner.shared) {
            (Some(jobs), Some(shared)) => {
                shared.queuing();
                let sent = jobs.send(job).is_ok();
                if !sent {
                    shared.unqueued();
                }
                sent
            }
            _ if self.is_read_only() => {
                let holder = self.data_dir().and_then(lock::read_holder);
                return Err(E::from(StoreError::ReadOnly { holder }));
            }
            _ => false,
        };
        if sent {
            Ok(())
        } else {
            Err(E::from(StoreError::Closed))
        }
    }
}
