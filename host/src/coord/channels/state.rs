//! One channel's messages in memory: mailboxes, the queue with its leases, the topic with its
//! readers. No I/O here; [`super::hub`] persists what changes.

use super::*;

/// A message the channel holds.
#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub(super) id: u64,
    pub(super) sender: String,
    /// The recipient, on a `direct` channel.
    pub(super) to: Option<String>,
    pub(super) body: Arc<str>,
    /// Deliveries so far.
    pub(super) deliveries: u32,
}

/// A queue message handed to a consumer and not yet acked.
#[derive(Debug)]
pub(super) struct Lease {
    pub(super) msg: Msg,
    pub(super) holder: String,
    pub(super) attempt: u32,
    pub(super) due: Instant,
}

/// Where a topic consumer is: its attempt, the next index it reads, and how far each of its
/// earlier attempts read (for the delivery count).
#[derive(Debug, Default)]
pub(super) struct Cursor {
    pub(super) attempt: u32,
    pub(super) next: usize,
    pub(super) earlier: Vec<usize>,
}

/// What a receive found.
pub(super) enum Take {
    /// A message for the caller; `persist` says how to record the delivery.
    Got(Delivery, Persist),
    /// Nothing now; wait until `wake` at the latest (a lease falling due), or the call's own
    /// deadline.
    Wait(Option<Instant>),
    /// Nothing will come any more.
    Closed(String),
}

/// A state change that must be recorded in the store.
#[derive(Debug)]
pub(super) enum Persist {
    /// Nothing to record (topics: the bus keeps the messages, cursors are per attempt).
    Nothing,
    /// The message's delivery count changed (it stays held).
    Delivered(Msg),
    /// The message left the channel: received from a mailbox, acked, or dead-lettered.
    Done(Msg, &'static str),
}

/// One channel's state.
#[derive(Debug)]
pub(super) struct ChanState {
    pub(super) next_id: u64,
    /// Sends stored or being stored but not yet added (they count against the depth).
    pub(super) reserved: BTreeMap<String, u64>,
    pub(super) open_producers: BTreeSet<String>,
    pub(super) over_consumers: BTreeSet<String>,
    pub(super) mailboxes: BTreeMap<String, BTreeMap<u64, Msg>>,
    pub(super) ready: BTreeMap<u64, Msg>,
    pub(super) leased: BTreeMap<u64, Lease>,
    pub(super) topic: Vec<Msg>,
    pub(super) cursors: BTreeMap<String, Cursor>,
    /// Queue messages dead-lettered and not yet recorded in the store.
    pub(super) dead: Vec<Msg>,
    pub(super) stats: ChannelReport,
}

/// The key under which a send without a recipient reserves depth.
const ANY: &str = "";

impl ChanState {
    pub(super) fn new(def: &ChannelDef, kind: CommunicationProtocol) -> ChanState {
        ChanState {
            next_id: 1,
            reserved: BTreeMap::new(),
            open_producers: def.producers.iter().cloned().collect(),
            over_consumers: BTreeSet::new(),
            mailboxes: def
                .consumers
                .iter()
                .map(|c| (c.clone(), BTreeMap::new()))
                .collect(),
            ready: BTreeMap::new(),
            leased: BTreeMap::new(),
            topic: Vec::new(),
            cursors: BTreeMap::new(),
            dead: Vec::new(),
            stats: ChannelReport::new(kind),
        }
    }

    fn reserved_for(&self, to: Option<&str>) -> u64 {
        self.reserved.get(to.unwrap_or(ANY)).copied().unwrap_or(0)
    }

    /// Messages counted against `maxDepth` for a send to `to`.
    pub(super) fn depth(&self, kind: CommunicationProtocol, to: Option<&str>) -> u64 {
        let held = match kind {
            CommunicationProtocol::Direct => to
                .and_then(|t| self.mailboxes.get(t))
                .map_or(0, BTreeMap::len),
            CommunicationProtocol::MessageQueue => self.ready.len() + self.leased.len(),
            CommunicationProtocol::EventDriven => self.topic.len(),
        };
        (held as u64).saturating_add(self.reserved_for(to))
    }

    /// Reserves the next id for a send to `to`.
    pub(super) fn reserve(&mut self, to: Option<&str>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        *self
            .reserved
            .entry(to.unwrap_or(ANY).to_string())
            .or_default() += 1;
        id
    }

    /// Ends a reservation; the message is added when `msg` is given (it was stored).
    pub(super) fn settle_send(
        &mut self,
        kind: CommunicationProtocol,
        to: Option<&str>,
        msg: Option<Msg>,
    ) {
        let key = to.unwrap_or(ANY);
        if let Some(n) = self.reserved.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.reserved.remove(key);
            }
        }
        let Some(msg) = msg else { return };
        self.stats.sent += 1;
        self.add(kind, msg);
    }

    /// Adds a stored message (a send, or one loaded on resume).
    pub(super) fn add(&mut self, kind: CommunicationProtocol, msg: Msg) {
        self.next_id = self.next_id.max(msg.id + 1);
        match kind {
            CommunicationProtocol::Direct => {
                let to = msg.to.clone().unwrap_or_default();
                self.mailboxes.entry(to).or_default().insert(msg.id, msg);
            }
            CommunicationProtocol::MessageQueue => {
                self.ready.insert(msg.id, msg);
            }
            CommunicationProtocol::EventDriven => self.topic.push(msg),
        }
    }

    /// Puts the leases that fell due back in the queue.
    pub(super) fn expire(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(l) = self.leased.remove(&id) {
                self.stats.expired += 1;
                self.ready.insert(id, l.msg);
            }
        }
    }

    /// Puts back every lease `holder` took in `attempt` or before (its attempt is over).
    pub(super) fn release(&mut self, holder: &str, attempt: u32) -> usize {
        let ids: Vec<u64> = self
            .leased
            .iter()
            .filter(|(_, l)| l.holder == holder && l.attempt <= attempt)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(l) = self.leased.remove(id) {
                self.ready.insert(*id, l.msg);
            }
        }
        if let Some(c) = self.cursors.get_mut(holder)
            && c.attempt <= attempt
        {
            let reached = std::mem::take(&mut c.next);
            c.earlier.push(reached);
            c.attempt = attempt.saturating_add(1);
        }
        ids.len()
    }

    /// Whether nothing can reach `consumer` any more.
    fn closed_for(&self, kind: CommunicationProtocol, consumer: &str) -> bool {
        if !self.open_producers.is_empty() || !self.reserved.is_empty() {
            return false;
        }
        match kind {
            CommunicationProtocol::Direct => {
                self.mailboxes.get(consumer).is_none_or(BTreeMap::is_empty)
            }
            CommunicationProtocol::MessageQueue => self.ready.is_empty() && self.leased.is_empty(),
            CommunicationProtocol::EventDriven => {
                self.cursors.get(consumer).map_or(0, |c| c.next) >= self.topic.len()
            }
        }
    }

    /// The next message for `consumer` (attempt `attempt`), if any.
    pub(super) fn take(
        &mut self,
        def: &ChannelDef,
        kind: CommunicationProtocol,
        consumer: &str,
        attempt: u32,
        now: Instant,
    ) -> Take {
        let deliver = |m: &Msg, count: u32| Delivery {
            channel: def.id.clone(),
            id: m.id,
            sender: m.sender.clone(),
            body: m.body.clone(),
            delivery_count: count,
        };
        match kind {
            CommunicationProtocol::Direct => {
                if let Some((_, mut m)) = self
                    .mailboxes
                    .get_mut(consumer)
                    .and_then(BTreeMap::pop_first)
                {
                    m.deliveries = 1;
                    self.stats.delivered += 1;
                    let d = deliver(&m, 1);
                    return Take::Got(d, Persist::Done(m, "delivered"));
                }
            }
            CommunicationProtocol::MessageQueue => {
                self.expire(now);
                while let Some((id, mut m)) = self.ready.pop_first() {
                    if m.deliveries >= def.max_deliveries() {
                        self.stats.dead_lettered.push(DeadLetter {
                            id,
                            sender: m.sender.clone(),
                            deliveries: m.deliveries,
                            bytes: m.body.len() as u64,
                        });
                        // Recorded by the hub, which drains `dead`.
                        self.dead.push(m);
                        continue;
                    }
                    m.deliveries = m.deliveries.saturating_add(1);
                    self.stats.delivered += 1;
                    if m.deliveries > 1 {
                        self.stats.redelivered += 1;
                    }
                    let d = deliver(&m, m.deliveries);
                    let due = now
                        .checked_add(Duration::from_millis(def.ack_timeout_ms()))
                        .unwrap_or(now);
                    self.leased.insert(
                        id,
                        Lease {
                            msg: m.clone(),
                            holder: consumer.to_string(),
                            attempt,
                            due,
                        },
                    );
                    return Take::Got(d, Persist::Delivered(m));
                }
            }
            CommunicationProtocol::EventDriven => {
                let c = self.cursors.entry(consumer.to_string()).or_default();
                if c.attempt < attempt {
                    let reached = std::mem::take(&mut c.next);
                    if c.attempt > 0 || reached > 0 {
                        c.earlier.push(reached);
                    }
                    c.attempt = attempt;
                }
                if let Some(m) = self.topic.get(c.next) {
                    let idx = c.next;
                    c.next += 1;
                    let count = 1 + c.earlier.iter().filter(|&&r| r > idx).count() as u32;
                    self.stats.delivered += 1;
                    if count > 1 {
                        self.stats.redelivered += 1;
                    }
                    return Take::Got(deliver(m, count), Persist::Nothing);
                }
            }
        }
        if self.closed_for(kind, consumer) {
            return Take::Closed(format!(
                "channel `{}`: every producer is over and nothing is left for `{consumer}`",
                def.id
            ));
        }
        Take::Wait(self.leased.values().map(|l| l.due).min())
    }

    /// Acks a queue message `consumer` holds in `attempt`.
    pub(super) fn ack(
        &mut self,
        def: &ChannelDef,
        consumer: &str,
        attempt: u32,
        id: u64,
    ) -> Result<Msg, String> {
        match self.leased.get(&id) {
            Some(l) if l.holder == consumer && l.attempt == attempt => {
                let l = self.leased.remove(&id).expect("present");
                self.stats.acked += 1;
                Ok(l.msg)
            }
            _ => Err(format!(
                "channel `{}`: message {id} is not held by `{consumer}` (never delivered to this \
                 attempt, already acked, or its ackTimeoutMs of {} ms passed and it went back to \
                 the queue)",
                def.id,
                def.ack_timeout_ms()
            )),
        }
    }

    /// Messages still held (for the report).
    pub(super) fn left(&self) -> u64 {
        let mailboxes: usize = self.mailboxes.values().map(BTreeMap::len).sum();
        (mailboxes + self.ready.len() + self.leased.len()) as u64
    }
}
