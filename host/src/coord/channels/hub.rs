//! [`ChannelHub`]: the channels of one run, shared by its agents and its executor.

use super::durable::Durable;
use super::state::{ChanState, Msg, Persist, Take};
use super::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// One channel: its definition, its state and the wake-up of its waiting receivers.
struct Channel {
    def: ChannelDef,
    kind: CommunicationProtocol,
    state: Mutex<ChanState>,
    changed: Notify,
    /// Topic sends publish one at a time, so a topic's order is its id order.
    publishing: tokio::sync::Mutex<()>,
}

impl Channel {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The channels of one run (see the module docs).
pub struct ChannelHub {
    channels: BTreeMap<String, Arc<Channel>>,
    durable: Option<Durable>,
    held_bytes: AtomicU64,
    max_bytes: u64,
}

impl std::fmt::Debug for ChannelHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelHub")
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .field("held_bytes", &self.held_bytes.load(Ordering::Relaxed))
            .finish()
    }
}

impl ChannelHub {
    /// The channels `defs` declares (validated by the manifest), of type `protocol` where a
    /// channel names none, holding at most `max_bytes` of bodies together. With a context
    /// store every message is stored under the run `context.1`.
    pub fn new(
        defs: &[ChannelDef],
        protocol: CommunicationProtocol,
        max_bytes: u64,
        context: Option<(ContextService, String)>,
    ) -> Arc<ChannelHub> {
        Arc::new(ChannelHub {
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
                            publishing: tokio::sync::Mutex::new(()),
                        }),
                    )
                })
                .collect(),
            durable: context.map(|(context, run_id)| Durable { context, run_id }),
            held_bytes: AtomicU64::new(0),
            max_bytes,
        })
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
        // A topic keeps its order: one publish at a time.
        let _order = match ch.kind {
            CommunicationProtocol::EventDriven => Some(ch.publishing.lock().await),
            _ => None,
        };
        let id = {
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
            st.reserve(to)
        };
        let msg = Msg {
            id,
            sender: caller.participant.clone(),
            to: to.map(str::to_string),
            body: body.into(),
            deliveries: 0,
        };
        let stored = match &self.durable {
            None => Ok(()),
            Some(d) if ch.kind == CommunicationProtocol::EventDriven => {
                d.publish(channel, &msg).await
            }
            Some(d) => d.store(channel, &msg, "held").await,
        };
        let ok = stored.is_ok();
        if !ok {
            self.held_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        ch.lock().settle_send(ch.kind, to, ok.then_some(msg));
        ch.changed.notify_waiters();
        stored.map(|()| id).map_err(ChannelFailure::Failed)
    }

    /// Waits up to `timeout` for the next message for `caller`; `None` when the time passed.
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
            let (take, dead) = {
                let mut st = ch.lock();
                let take = st.take(
                    &ch.def,
                    ch.kind,
                    &caller.participant,
                    caller.attempt,
                    Instant::now(),
                );
                (take, std::mem::take(&mut st.dead))
            };
            for m in dead {
                self.held_bytes
                    .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    id = m.id,
                    deliveries = m.deliveries,
                    "message dead-lettered after maxDeliveries"
                );
                self.record(ch, &m, "dead").await;
            }
            match take {
                Take::Got(d, persist) => {
                    match persist {
                        Persist::Nothing => {}
                        Persist::Delivered(m) => self.record(ch, &m, "held").await,
                        Persist::Done(m, state) => {
                            self.held_bytes
                                .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
                            self.record(ch, &m, state).await;
                            ch.changed.notify_waiters();
                        }
                    }
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

    /// Records a state change of `m`; a store failure is logged (the message was already
    /// handed out or taken back; a resumed run may then deliver it once more).
    async fn record(&self, ch: &Channel, m: &Msg, state: &str) {
        if let Some(d) = &self.durable
            && let Err(e) = d.store(&ch.def.id, m, state).await
        {
            tracing::warn!(channel = %ch.def.id, id = m.id, error = %e, "recording a channel message");
        }
    }

    /// Acks queue message `id`, which `caller` holds; on other channel types nothing to do.
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
        let m = ch
            .lock()
            .ack(&ch.def, &caller.participant, caller.attempt, id)
            .map_err(ChannelFailure::Invalid)?;
        self.held_bytes
            .fetch_sub(m.body.len() as u64, Ordering::Relaxed);
        self.record(ch, &m, "acked").await;
        ch.changed.notify_waiters();
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
