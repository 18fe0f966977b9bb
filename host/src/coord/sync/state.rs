//! The state of one open point: arrivals with their payloads and bytes, absences, who is
//! inside a sync call on it now.

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Resolution {
    Done(Arc<SyncOutcome>),
    Failed(String),
}

#[derive(Default)]
pub(super) struct PointState {
    pub(super) arrivals: Vec<(String, Value)>,
    /// Participant → index in `arrivals`.
    pub(super) index: HashMap<String, usize>,
    pub(super) absent: BTreeSet<String>,
    pub(super) first_arrival: Option<Instant>,
    pub(super) timed_out: bool,
    /// Bytes of JSON of the payloads in `arrivals`.
    pub(super) payload_bytes: u64,
    /// Participants inside an `arrive` call on this point now (a count per participant).
    pub(super) inside: HashMap<String, usize>,
}

/// A participant inside an `arrive` call, counted in [`PointState::inside`] until dropped.
pub(super) struct Inside {
    pub(super) point: Arc<Point>,
    pub(super) participant: String,
}

impl Inside {
    pub(super) fn enter(point: &Arc<Point>, participant: &str) -> Inside {
        *point
            .state
            .lock()
            .expect("sync point lock poisoned")
            .inside
            .entry(participant.to_string())
            .or_default() += 1;
        Inside {
            point: point.clone(),
            participant: participant.to_string(),
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        let mut st = self.point.state.lock().expect("sync point lock poisoned");
        if let Some(n) = st.inside.get_mut(&self.participant) {
            *n -= 1;
            if *n == 0 {
                st.inside.remove(&self.participant);
            }
        }
    }
}

/// Bytes of `v` as JSON.
pub(super) fn json_bytes(v: &Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

impl PointState {
    /// The payload bytes the point would hold with `participant`'s payload of `bytes`, or an
    /// error if that passes `cap`.
    /// Bytes of `participant`'s payload here, 0 if it has none.
    pub(super) fn payload_of(&self, participant: &str) -> u64 {
        self.index
            .get(participant)
            .map_or(0, |&i| json_bytes(&self.arrivals[i].1))
    }

    pub(super) fn room_for(
        &self,
        point: &str,
        participant: &str,
        bytes: u64,
        cap: u64,
    ) -> Result<(), SyncFailure> {
        let replaced = self
            .index
            .get(participant)
            .map_or(0, |&i| json_bytes(&self.arrivals[i].1));
        let total = self
            .payload_bytes
            .saturating_sub(replaced)
            .saturating_add(bytes);
        if total > cap {
            return Err(SyncFailure::InvalidPayload(format!(
                "point `{point}` would hold {total} bytes of payloads with this one ({bytes} \
                 bytes); its maxResultBytes is {cap}"
            )));
        }
        Ok(())
    }

    /// Records `participant`'s arrival with `payload` (replacing an earlier one).
    pub(super) fn put_arrival(&mut self, participant: &str, payload: Value) {
        self.remove_arrival(participant);
        self.payload_bytes = self.payload_bytes.saturating_add(json_bytes(&payload));
        let i = self.arrivals.len();
        self.arrivals.push((participant.to_string(), payload));
        self.index.insert(participant.to_string(), i);
    }

    /// Forgets `participant`'s arrival, if any.
    pub(super) fn remove_arrival(&mut self, participant: &str) {
        if let Some(i) = self.index.remove(participant) {
            let (_, payload) = self.arrivals.remove(i);
            self.payload_bytes = self.payload_bytes.saturating_sub(json_bytes(&payload));
            for k in self.index.values_mut() {
                if *k > i {
                    *k -= 1;
                }
            }
        }
    }
}

pub(super) struct Point {
    pub(super) def: SyncPointDef,
    pub(super) state: Mutex<PointState>,
    pub(super) resolved: watch::Sender<Option<Arc<Resolution>>>,
}
