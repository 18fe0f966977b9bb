//! [`ChannelHub`]: the channels of one run, shared by its agents and its executor.

use super::durable::Durable;
use super::state::{ChanState, Msg, Persist, Take};
use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};

/// One channel: its definition, its state and the wake-up of its waiting receivers.
struct Channel {
    def: ChannelDef,
    kind: CommunicationProtocol,
    state: Mutex<ChanState>,
    changed: Notify,
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A store write, done by the hub's writer task in the order the jobs were queued.
enum Job {
    /// Store a sent message (`held`, or a topic event), then add it to the channel (or, if the
    /// store refused it, give back its reservation and bytes) and answer the sender.
    Send {
        ch: Arc<Channel>,
        msg: Msg,
        done: oneshot::Sender<Result<u64, String>>,
    },
    /// Record a state change of a message (a delivery count, `delivered`, `acked`, `dead`).
    Record {
        ch: Arc<Channel>,
        msg: Msg,
        state: &'static str,
        done: Option<oneshot::Sender<()>>,
    },
}

/// The channels of one run (see the module docs).
///
/// Every store write goes through one writer task, in the order the channel's state changed,
/// so the store never sees a message acked before it was stored, and a caller that is
/// cancelled mid-call (its agent terminated) cannot leave a send half done: the writer stores
/// and adds the message, or gives its reservation back, whether or not anyone still waits.
pub struct ChannelHub {
    channels: BTreeMap<String, Arc<Channel>>,
    /// Where a resumed run loads messages from (the writer has its own copy).
    durable: Option<Durable>,
    held_bytes: Arc<AtomicU64>,
    max_bytes: u64,
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for ChannelHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHub")
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .field("held_bytes", &self.held_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

/// The writer task: runs the jobs one by one until the hub is dropped and the queue drained.
async fn writer(
    mut jobs: mpsc::UnboundedReceiver<Job>,
    durable: Option<Durable>,
    held_bytes: Arc<AtomicU64>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Send { ch, msg, done } => {
                let stored = match &durable {
                    None => Ok(()),
                    Some(d) if ch.kind == CommunicationProtocol::EventDriven => {
                        d.publish(&ch.def.id, &msg).await
                    }
                    Some(d) => d.store(&ch.def.id, &msg, "held").await,
                };
                let id = msg.id;
                let to = msg.to.clone();
                if stored.is_err() {
                    held_bytes.fetch_sub(msg.body.len() as u64, Ordering::Relaxed);
                }
                ch.lock()
                    .settle_send(ch.kind, to.as_deref(), stored.is_ok().then_some(msg));
                ch.changed.notify_waiters();
                let _ = done.send(stored.map(|()| id));
            }
            Job::Record {
                ch,
                msg,
                state,
                done,
            } => {
                if let Some(d) = &durable
                    && let Err(e) = d.store(&ch.def.id, &msg, state).await
                {
                    // The message was already handed out or taken back; a resumed run may
                    // deliver it once more (at least once).
                    tracing::warn!(channel = %ch.def.id, id = msg.id, error = %e, "recording a channel message");
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }
}

impl ChannelHub {
    /// The channels `defs` declares (validated by the manifest), of type `protocol` where a
    /// channel names none, holding at most `max_bytes` of bodies together. With a context
    /// store every message is stored under the run `context.1`. Starts the hub's writer task:
    /// call it inside a tokio runtime.
    pub fn new(
        defs: &[ChannelDef],
        protocol: CommunicationProtocol,
        max_bytes: u64,
        context: Option<(ContextService, String)>,
    ) -> Arc<ChannelHub> {
        let (jobs, rx) = mpsc::unbounded_channel();
        let held_bytes = Arc::new(AtomicU64::new(0));
        let durable = context.map(|(context, run_id)| Durable { context, run_id });
        let hub = Arc::new(ChannelHub {
            channels: defs
                .iter()
                .map(|d| {
                    let kind = d.kind_or(protocol);
                    (
                        d.id.clone(),
                        Arc::new(Channel {
                            def: d.clone(),
                            kind,
                            state: Mutex::new(ChanState::new(d, kind)),
                            changed: Notify::new(),
                        }),
                    )
                })
                .collect(),
            durable: durable.clone(),
            held_bytes: held_bytes.clone(),
            max_bytes,
            jobs,
        });
        if !hub.channels.is_empty() {
            tokio::spawn(writer(rx, durable, held_bytes));
        }
        hub
    }

    /// Loads what a previous process of this run stored: held messages (with their delivery
    /// counts) come back, ids continue after the highest used.
    pub async fn load(&self) -> Result<(), String> {
        let Some(durable) = &self.durable else {
            return Ok(());
        };
        for ch in self.channels.values() {
            let (held, last) = durable.load(&ch.def.id, ch.kind, ch.def.max_depth).await?;
            let bytes: u64 = held.iter().map(|m| m.body.len() as u64).sum();
            self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
            let mut st = ch.lock();
            st.next_id = st.next_id.max(last + 1);
            for m in held {
                st.add(ch.kind, m);
            }
        }
        Ok(())
    }

    fn channel(&self, id: &str) -> Result<&Arc<Channel>, ChannelFailure> {
        self.channels.get(id).ok_or_else(|| {
            ChannelFailure::UnknownChannel(if self.channels.is_empty() {
                format!("no channel `{id}`: the manifest declares none ([[strategy.channels]])")
            } else {
                format!(
                    "no channel `{id}`; the run's channels: {}",
                    self.channels.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        })
    }

    fn member(ch: &Channel, who: &str, list: &[String], role: &str) -> Result<(), ChannelFailure> {
        if list.iter().any(|x| x == who) {
            Ok(())
        } else {
            Err(ChannelFailure::Invalid(format!(
                "`{who}` is not one of the {role}s of channel `{}` ({})",
                ch.def.id,
                list.join(", ")
            )))
        }
    }

    /// Sends `body` on `channel` from `caller`; returns the message id once it is stored.
    ///
    /// # Errors
    ///
    /// `UnknownChannel`; `Invalid` (not a producer, `to` missing on `direct` or given on
    /// another type, `to` not a consumer); `TooLarge`; `Full` (depth or `maxChannelBytes`);
    /// `Closed` (the recipient, or every consumer, is over); `Failed` (the store).
    pub async fn send(
        &self,
        caller: &Caller,
        channel: &str,
        to: Option<&str>,
        body: &str,
    ) -> Result<u64, ChannelFailure> {
        let ch = self.channel(channel)?;
        Self::member(ch, &caller.participant, &ch.def.producers, "producer")?;
        match (ch.kind, to) {
            (CommunicationProtocol::Direct, None) => {
                return Err(ChannelFailure::Invalid(format!(
                    "channel `{channel}` is `direct`: name the consumer to send to ({})",
                    ch.def.consumers.join(", ")
                )));
            }
            (CommunicationProtocol::Direct, Some(t)) => {
                Self::member(ch, t, &ch.def.consumers, "consumer")?;
            }
            (kind, Some(_)) => {
                return Err(ChannelFailure::Invalid(format!(
                    "channel `{channel}` is `{}`: its consumers share its messages, so `to` must \
                     be none",
                    kind.as_str()
                )));
            }
            (_, None) => {}
        }
        let len = body.len() as u64;
        if len > ch.def.max_message_bytes {
            return Err(ChannelFailure::TooLarge(format!(
                "the body is {len} bytes; channel `{channel}` takes at most {} \
                 (maxMessageBytes)",
                ch.def.max_message_bytes
            )));
        }
        let (done, answer) = oneshot::channel();
        {
            let mut st = ch.lock();
            let over = |c: &String| st.over_consumers.contains(c);
            match to {
                Some(t) if st.over_consumers.contains(t) => {
                    return Err(ChannelFailure::Closed(format!(
                        "channel `{channel}`: consumer `{t}` is over and will not receive again"
                    )));
                }
                None if ch.def.consumers.iter().all(over) => {
                    return Err(ChannelFailure::Closed(format!(
                        "channel `{channel}`: every consumer is over; nobody will receive it"
                    )));
                }
                _ => {}
            }
            let depth = st.depth(ch.kind, to);
            if depth >= ch.def.max_depth {
                return Err(ChannelFailure::Full(format!(
                    "channel `{channel}`{} holds {depth} messages, its maxDepth; send again once \
                     consumers have taken some",
                    to.map(|t| format!(" (the mailbox of `{t}`)"))
                        .unwrap_or_default()
                )));
            }
            let held = self.held_bytes.fetch_add(len, Ordering::Relaxed);
            if held.saturating_add(len) > self.max_bytes {
                self.held_bytes.fetch_sub(len, Ordering::Relaxed);
                return Err(ChannelFailure::Full(format!(
                    "the run's channels hold {held} bytes of messages; {len} more would pass \
                     strategy.maxChannelBytes ({})",
                    self.max_bytes
                )));
            }
            let msg = Msg {
                id: st.reserve(to),
                sender: caller.participant.clone(),
                to: to.map(str::to_string),
                body: body.into(),
                deliveries: 0,
            };
            // Queued under the channel's lock: the writer stores in id order (a topic's order).
            self.queue(Job::Send {
                ch: ch.clone(),
                msg,
                done,
            });
        }
        match answer.await {
            Ok(r) => r.map_err(ChannelFailure::Failed),
            Err(_) => Err(ChannelFailure::Failed(
                "the run's channel writer stopped".into(),
            )),
        }
    }

    fn queue(&self, job: Job) {
        // The writer lives as long as the hub (it ends when the hub's sender is dropped).
        let _ = self.jobs.send(job);
    }

    /// Queues a record of `m`'s new state.
    fn record(
        &self,
        ch: &Arc<Channel>,
        m: Msg,
        state: &'static str,
        done: Option<oneshot::Sender<()>>,
    ) {
        self.queue(Job::Record {
            ch: ch.clone(),
            msg: m,
            state,
            done,
        });
    }

    /// Waits up to `timeout` for the next message for `caller`; `None` when the time passed.
    /// Nothing is awaited between taking a message and returning it, so a caller cancelled
    /// while it waits loses nothing; the delivery is recorded by the writer.
    ///
    /// # Errors
    ///
    /// `UnknownChannel`; `Invalid` (not a consumer); `Closed` once nothing can come.
    pub async fn receive(
        &self,
        caller: &Caller,
        channel: &str,
        timeout: Duration,
    ) -> Result<Option<Delivery>, ChannelFailure> {
        let ch = self.channel(channel)?;
        Self::member(ch, &caller.participant, &ch.def.consumers, "consumer")?;
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let changed = ch.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let take = {
                let mut st = ch.lock();
                let take = st.take(
                    &ch.def,
                    ch.kind,
                    &caller.participant,
                    caller.attempt,
                    Instant::now(),
                );
                for m in std::mem::take(&mut st.dead) {
                    self.held_bytes
                        .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        channel,
                        id = m.id,
                        deliveries = m.deliveries,
                        "message dead-lettered after maxDeliveries"
                    );
                    self.record(ch, m, "dead", None);
                }
                match take {
                    Take::Got(d, persist) => {
                        match persist {
                            Persist::Nothing => {}
                            Persist::Delivered(m) => self.record(ch, m, "held", None),
                            Persist::Done(m, state) => {
                                self.held_bytes
                                    .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
                                self.record(ch, m, state, None);
                            }
                        }
                        Take::Got(d, Persist::Nothing)
                    }
                    other => other,
                }
            };
            match take {
                Take::Got(d, _) => {
                    ch.changed.notify_waiters();
                    return Ok(Some(d));
                }
                Take::Closed(why) => return Err(ChannelFailure::Closed(why)),
                Take::Wait(lease_due) => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| d <= now) {
                        return Ok(None);
                    }
                    let wake = match (deadline, lease_due) {
                        (Some(d), Some(l)) => Some(d.min(l)),
                        (d, l) => d.or(l),
                    };
                    match wake {
                        Some(w) => {
                            tokio::select! {
                                _ = &mut changed => {}
                                _ = tokio::time::sleep_until(w) => {}
                            }
                        }
                        None => changed.await,
                    }
                }
            }
        }
    }

    /// Acks queue message `id`, which `caller` holds; on other channel types nothing to do.
    /// Returns once the ack is recorded.
    ///
    /// # Errors
    ///
    /// `UnknownChannel`; `Invalid` (not a consumer; a queue message not held by this attempt).
    pub async fn ack(&self, caller: &Caller, channel: &str, id: u64) -> Result<(), ChannelFailure> {
        let ch = self.channel(channel)?;
        Self::member(ch, &caller.participant, &ch.def.consumers, "consumer")?;
        if ch.kind != CommunicationProtocol::MessageQueue {
            // Done once received.
            return Ok(());
        }
        let (done, recorded) = oneshot::channel();
        {
            let mut st = ch.lock();
            let m = st
                .ack(&ch.def, &caller.participant, caller.attempt, id)
                .map_err(ChannelFailure::Invalid)?;
            self.held_bytes
                .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
            self.record(ch, m, "acked", Some(done));
        }
        ch.changed.notify_waiters();
        let _ = recorded.await;
        Ok(())
    }

    /// Attempt `attempt` of `participant` ended (whatever its outcome): its unacked queue
    /// messages go back to the queue at once, and its next attempt reads topics from the
    /// start.
    pub fn attempt_ended(&self, participant: &str, attempt: u32) {
        for ch in self.channels.values() {
            if !ch.def.consumers.iter().any(|c| c == participant) {
                continue;
            }
            let back = ch.lock().release(participant, attempt);
            if back > 0 {
                tracing::debug!(channel = %ch.def.id, participant, back, "unacked messages back in the queue");
            }
            ch.changed.notify_waiters();
        }
    }

    /// `participant`'s subtask is over for good: as a producer it sends no more (its
    /// channels may close), as a consumer it receives no more.
    pub fn participant_over(&self, participant: &str) {
        for ch in self.channels.values() {
            let mut st = ch.lock();
            let mut changed = st.open_producers.remove(participant);
            if ch.def.consumers.iter().any(|c| c == participant) {
                changed |= st.over_consumers.insert(participant.to_string());
            }
            drop(st);
            if changed {
                ch.changed.notify_waiters();
            }
        }
    }

    /// What each channel carried, by id.
    pub fn report(&self) -> BTreeMap<String, ChannelReport> {
        self.channels
            .iter()
            .map(|(id, ch)| {
                let st = ch.lock();
                let mut r = st.stats.clone();
                r.left = st.left();
                (id.clone(), r)
            })
            .collect()
    }

    /// Body bytes the run's channels hold now.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Whether the run declares no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}
