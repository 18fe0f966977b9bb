//! Staging events inside a store write: sequence numbers, rows, retention, and the
//! announcement to live subscribers once the write commits.

use super::{EventBus, EventError, Live, NewEvent, filter, unix_ms};
use crate::events::Event;
use crate::store::{StoreError, WriteCtx, encode_value};
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl EventBus {
    /// Inserts `events` inside a [`Store::write`] op, so they commit atomically with whatever
    /// else the op writes; they are announced to subscribers right after that commit (and
    /// never, if the op rolls back). Assigns seqs and timestamps and returns the events as
    /// they will be delivered. Also deletes the oldest events beyond the retention bound.
    pub fn stage(
        &self,
        ctx: &mut WriteCtx<'_>,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Event>, StoreError> {
        self.stage_keeping(ctx, events, true)
    }

    /// [`stage`](Self::stage) for a caller that does not need the events back: they move to
    /// the subscribers as they are, without a copy.
    pub fn stage_only(
        &self,
        ctx: &mut WriteCtx<'_>,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreError> {
        self.stage_keeping(ctx, events, false).map(drop)
    }

    fn stage_keeping(
        &self,
        ctx: &mut WriteCtx<'_>,
        events: Vec<NewEvent>,
        keep: bool,
    ) -> Result<Vec<Event>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let conn = ctx.tx();
        let stored_last: i64 = conn
            .prepare_cached("SELECT coalesce(max(seq), 0) FROM events")?
            .query_row([], |row| row.get(0))?;
        // The committed last seq guards against reuse should every row have been deleted.
        let mut seq = (stored_last as u64).max(self.inner.last_seq.load(Ordering::Acquire));
        let now = unix_ms();
        let mut insert = conn.prepare_cached(
            "INSERT INTO events(seq, event_type, context_id, agent_id, ts, priority, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let keys = ctx.blobs().keys();
        let mut staged = Vec::with_capacity(events.len());
        for new in events {
            seq += 1;
            let event = Event {
                seq,
                event_type: new.event_type,
                context_id: new.context_id,
                agent_id: new.agent_id,
                timestamp_ms: now,
                priority: new.priority,
                data: new.data,
            };
            let data = encode_value(&event.data);
            let fits = event.live_bytes_with(data.len()) <= self.inner.slot_bytes;
            insert.execute(rusqlite::params![
                event.seq as i64,
                event.event_type.as_str(),
                event.context_id,
                event.agent_id,
                filter::clamp_i64(event.timestamp_ms),
                event.priority,
                // Sealed under the events key with a master key (bound to the seq).
                match keys {
                    Some(keys) => keys.seal_event(event.seq, &data),
                    None => data,
                },
            ])?;
            staged.push((event, fits));
        }
        drop(insert);

        let mut new_oldest = None;
        if seq > self.inner.retention {
            let cutoff = seq - self.inner.retention + 1;
            if cutoff > self.inner.oldest_seq.load(Ordering::Acquire) {
                conn.prepare_cached("DELETE FROM events WHERE seq < ?1")?
                    .execute([cutoff as i64])?;
                new_oldest = Some(cutoff);
            }
        }

        let inner = self.inner.clone();
        let mut kept = Vec::with_capacity(if keep { staged.len() } else { 0 });
        let announce: Vec<Live> = staged
            .into_iter()
            .map(|(e, fits)| {
                let seq = e.seq;
                let event = match (keep, fits) {
                    (true, true) => {
                        let shared = Arc::new(e.clone());
                        kept.push(e);
                        Some(shared)
                    }
                    (true, false) => {
                        kept.push(e);
                        None
                    }
                    (false, fits) => fits.then(|| Arc::new(e)),
                };
                Live { seq, event }
            })
            .collect();
        ctx.after_commit(move || {
            if let Some(oldest) = new_oldest {
                inner.oldest_seq.fetch_max(oldest, Ordering::AcqRel);
            }
            for live in announce {
                let seq = live.seq;
                if live.event.is_none() {
                    inner.announced_by_seq.fetch_add(1, Ordering::Relaxed);
                }
                // No receivers is fine: the event is stored.
                let _ = inner.live.send(live);
                inner.last_seq.fetch_max(seq, Ordering::AcqRel);
                inner.published.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(kept)
    }

    /// Publishes one event in its own write; returns it once committed.
    #[tracing::instrument(name = "qi.events.publish", skip_all, fields(event_type = %event.event_type), err)]
    pub async fn publish(&self, event: NewEvent) -> Result<Event, EventError> {
        let mut events = self.publish_batch(vec![event]).await?;
        Ok(events.remove(0))
    }

    /// Publishes events atomically (all or none) with consecutive seqs; returns them once
    /// committed.
    pub async fn publish_batch(&self, events: Vec<NewEvent>) -> Result<Vec<Event>, EventError> {
        let bus = self.clone();
        Ok(self
            .inner
            .store
            .write(move |ctx| bus.stage(ctx, events))
            .await?)
    }
}
