//! Synchronization points: barrier, checkpoint, decision and aggregation, resolved by the host.
//!
//! A point has participants (subtask ids), a condition and a timeout policy. A participant
//! arrives by calling the WIT `sync` function of the point's type; the call returns when the
//! point resolves. The rules, in the order they are checked after every arrival, absence and
//! timer tick:
//!
//! 1. **Condition met** → resolved, `complete = true`.
//!    - `all-complete`: every participant arrived.
//!    - `majority-complete`: more than half of the participants arrived (at a decision point:
//!      one choice has the votes of more than half of the participants, or every participant
//!      is accounted for).
//!    - `specific-agents`: every listed participant arrived.
//!    - `timeout`: the timeout elapsed (whoever arrived by then), or every participant is
//!      accounted for (arrived or absent), since nothing more can change.
//! 2. **Condition can no longer be met** (too many participants absent) → resolved as on
//!    timeout, except that `wait` cannot wait for what will never happen and fails.
//! 3. **Timeout** (counted from the first arrival) → by `onTimeout`: `proceed` resolves with
//!    `complete = false`; `fail` fails the point (every waiting call gets `failed`); `wait`
//!    records that it timed out and keeps waiting for rule 1 or 2.
//!
//! A participant is **absent** once its subtask is over without having arrived: it failed, was
//! terminated, was skipped or cancelled, or completed without calling. Absence is reported by
//! the executor, so a dead participant never leaves the others hanging.
//!
//! A retried participant that arrives again replaces its earlier payload while the point is
//! open; once the point resolved, any later call by a participant returns the resolution.

use crate::context::{ContextService, OPERATOR};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Largest payload (state, vote, value) a participant may hand to a point, in bytes.
pub const MAX_SYNC_PAYLOAD_BYTES: usize = 1 << 20;

/// What kind of synchronization a point performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPointType {
    /// Participants wait until the condition holds.
    Barrier,
    /// Participants arrive with a state snapshot that is stored durably first.
    Checkpoint,
    /// Participants vote; every participant receives the tallied outcome.
    Decision,
    /// Participants contribute values; every participant receives the reduced result.
    Aggregation,
}

impl SyncPointType {
    /// The point type's name, as written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncPointType::Barrier => "barrier",
            SyncPointType::Checkpoint => "checkpoint",
            SyncPointType::Decision => "decision",
            SyncPointType::Aggregation => "aggregation",
        }
    }

    /// The WIT function a participant calls at a point of this type.
    pub fn wit_call(self) -> &'static str {
        match self {
            SyncPointType::Barrier => "sync.barrier",
            SyncPointType::Checkpoint => "sync.checkpoint",
            SyncPointType::Decision => "sync.vote",
            SyncPointType::Aggregation => "sync.contribute",
        }
    }
}

/// When a point's condition holds (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConditionRepr", into = "ConditionRepr")]
pub enum SyncCondition {
    /// Every participant arrived.
    AllComplete,
    /// More than half of the participants arrived.
    MajorityComplete,
    /// The listed participants arrived.
    SpecificAgents(Vec<String>),
    /// The timeout elapsed.
    Timeout,
}

impl SyncCondition {
    /// The condition's name, as written in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            SyncCondition::AllComplete => "all-complete",
            SyncCondition::MajorityComplete => "majority-complete",
            SyncCondition::SpecificAgents(_) => "specific-agents",
            SyncCondition::Timeout => "timeout",
        }
    }
}

/// A condition as written: a name, or a table `{ type = "specific-agents", agents = [...] }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum ConditionRepr {
    Name(String),
    Table {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agents: Option<Vec<String>>,
    },
}

impl TryFrom<ConditionRepr> for SyncCondition {
    type Error = String;
    fn try_from(r: ConditionRepr) -> Result<Self, String> {
        let (kind, agents) = match r {
            ConditionRepr::Name(n) => (n, None),
            ConditionRepr::Table { kind, agents } => (kind, agents),
        };
        match (kind.as_str(), agents) {
            ("all-complete", None) => Ok(SyncCondition::AllComplete),
            ("majority-complete", None) => Ok(SyncCondition::MajorityComplete),
            ("timeout", None) => Ok(SyncCondition::Timeout),
            ("specific-agents", Some(a)) if !a.is_empty() => Ok(SyncCondition::SpecificAgents(a)),
            ("specific-agents", _) => Err(
                "`specific-agents` needs the participants it waits for: condition = { type = \"specific-agents\", agents = [\"review-1\"] }"
                    .into(),
            ),
            (k @ ("all-complete" | "majority-complete" | "timeout"), Some(_)) => Err(format!(
                "condition `{k}` takes no `agents`; only `specific-agents` does"
            )),
            (other, _) => Err(format!(
                "unknown condition `{other}`; use all-complete, majority-complete, specific-agents or timeout"
            )),
        }
    }
}

impl From<SyncCondition> for ConditionRepr {
    fn from(c: SyncCondition) -> Self {
        match c {
            SyncCondition::SpecificAgents(agents) => ConditionRepr::Table {
                kind: "specific-agents".into(),
                agents: Some(agents),
            },
            other => ConditionRepr::Name(other.name().into()),
        }
    }
}

/// What a point does when its timeout elapses before the condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Keep waiting (the outcome says it timed out); fails only if the condition becomes
    /// impossible.
    #[default]
    Wait,
    /// Release whoever arrived, with `complete = false`.
    Proceed,
    /// Fail the point: every waiting participant gets `failed`.
    Fail,
}

/// How an aggregation point combines contributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Reducer {
    /// `{"<participant>": value}`.
    #[default]
    Collect,
    /// A list of the values in participant order (lists are flattened one level).
    Concat,
    /// The sum of numbers, or field-wise sums of objects of numbers.
    Sum,
    /// A deep JSON merge of objects in participant order (later participants win).
    Merge,
}

/// One synchronization point, as declared in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncPointDef {
    /// Unique id; participants pass it to the `sync` call.
    pub id: String,
    /// Kind of point.
    #[serde(rename = "type")]
    pub point_type: SyncPointType,
    /// For humans.
    #[serde(default)]
    pub description: String,
    /// Participating subtasks (each runs in its own agent).
    #[serde(alias = "participatingAgents")]
    pub participants: Vec<String>,
    /// When the point resolves.
    #[serde(default = "default_condition")]
    pub condition: SyncCondition,
    /// Timeout from the first arrival, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// What happens on timeout.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Aggregation only: how contributions are combined.
    #[serde(default)]
    pub reducer: Option<Reducer>,
    /// Most bytes of payloads (votes, contributions, checkpoint states, as JSON) the point
    /// holds at once, which bounds its result; an arrival that would pass it is refused as an
    /// invalid payload. Default [`DEFAULT_MAX_RESULT_BYTES`], at most
    /// [`crate::coord::manifest::MAX_RESULT_BYTES`].
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: u64,
}

/// Default `maxResultBytes` of a point: 4 MiB.
pub const DEFAULT_MAX_RESULT_BYTES: u64 = 4 << 20;

fn default_max_result_bytes() -> u64 {
    DEFAULT_MAX_RESULT_BYTES
}

fn default_condition() -> SyncCondition {
    SyncCondition::AllComplete
}

/// How a point resolved, as every participant receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncOutcome {
    /// The point.
    pub point: String,
    /// Whether the condition was met.
    pub complete: bool,
    /// Whether the timeout elapsed before it resolved.
    pub timed_out: bool,
    /// Participants that arrived, in arrival order.
    pub arrived: Vec<String>,
    /// Participants that did not arrive.
    pub absent: Vec<String>,
    /// Type-specific result (see `wit/sync.wit`).
    pub result: Value,
    /// Milliseconds from the first arrival to resolution.
    pub waited_ms: u64,
    /// `result` as JSON text, made once and shared by every participant it is handed to.
    #[serde(skip)]
    result_text: std::sync::OnceLock<Arc<str>>,
}

impl SyncOutcome {
    /// [`result`](Self::result) as JSON text, serialized once.
    pub fn result_text(&self) -> Arc<str> {
        self.result_text
            .get_or_init(|| Arc::from(self.result.to_string()))
            .clone()
    }
}

/// Why a sync call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFailure {
    /// No such point.
    #[error("no synchronization point `{0}` in this run")]
    UnknownPoint(String),
    /// Wrong type, not a participant.
    #[error("{0}")]
    Invalid(String),
    /// The point failed (timeout with `fail`, or its condition became impossible).
    #[error("{0}")]
    Failed(String),
    /// A payload was unusable.
    #[error("{0}")]
    InvalidPayload(String),
}

/// What the engine tells the executor.
#[derive(Debug, Clone)]
pub enum SyncNotice {
    /// A participant arrived and now waits (its agent is idle, not computing).
    Waiting {
        /// The participant.
        participant: String,
        /// The point.
        point: String,
    },
    /// A participant's call returned.
    Released {
        /// The participant.
        participant: String,
        /// The point.
        point: String,
        /// When.
        at: Instant,
    },
    /// A point resolved.
    Resolved {
        /// The point.
        point: String,
        /// The outcome, or the failure message.
        outcome: Result<Arc<SyncOutcome>, String>,
        /// When.
        at: Instant,
    },
    /// A point's timeout elapsed while `onTimeout = "wait"` keeps it open.
    TimedOutWaiting {
        /// The point.
        point: String,
    },
}

#[derive(Debug, Clone)]
enum Resolution {
    Done(Arc<SyncOutcome>),
    Failed(String),
}

#[derive(Default)]
struct PointState {
    arrivals: Vec<(String, Value)>,
    /// Participant → index in `arrivals`.
    index: HashMap<String, usize>,
    absent: BTreeSet<String>,
    first_arrival: Option<Instant>,
    timed_out: bool,
    /// Bytes of JSON of the payloads in `arrivals`.
    payload_bytes: u64,
    /// Participants inside an `arrive` call on this point now (a count per participant).
    inside: HashMap<String, usize>,
}

/// A participant inside an `arrive` call, counted in [`PointState::inside`] until dropped.
struct Inside {
    point: Arc<Point>,
    participant: String,
}

impl Inside {
    fn enter(point: &Arc<Point>, participant: &str) -> Inside {
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
fn json_bytes(v: &Value) -> u64 {
    serde_json::to_vec(v).map_or(0, |b| b.len() as u64)
}

impl PointState {
    /// The payload bytes the point would hold with `participant`'s payload of `bytes`, or an
    /// error if that passes `cap`.
    fn room_for(
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
    fn put_arrival(&mut self, participant: &str, payload: Value) {
        self.remove_arrival(participant);
        self.payload_bytes = self.payload_bytes.saturating_add(json_bytes(&payload));
        let i = self.arrivals.len();
        self.arrivals.push((participant.to_string(), payload));
        self.index.insert(participant.to_string(), i);
    }

    /// Forgets `participant`'s arrival, if any.
    fn remove_arrival(&mut self, participant: &str) {
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

struct Point {
    def: SyncPointDef,
    state: Mutex<PointState>,
    resolved: watch::Sender<Option<Arc<Resolution>>>,
}

/// Durable storage of what participants gave a point, as context documents written by the
/// operator identity: checkpoints at `run/<run>/checkpoint/<point>/<participant>`, every other
/// arrival (a barrier arrival, a vote, a contribution) at
/// `run/<run>/arrival/<point>/<participant>`. Each is durable before it counts, so a resumed
/// run counts what a participant that will not run again gave.
#[derive(Clone)]
struct Checkpoints {
    context: ContextService,
    run_id: String,
}

impl Checkpoints {
    fn id(&self, point: &str, participant: &str) -> String {
        format!("run/{}/checkpoint/{point}/{participant}", self.run_id)
    }

    async fn save(&self, point: &str, participant: &str, state: &Value) -> Result<(), String> {
        let id = self.id(point, participant);
        let doc = json!({"point": point, "participant": participant, "state": state});
        self.context
            .put_as_operator(&id, "checkpoint", doc)
            .await
            .map_err(|e| format!("storing checkpoint `{id}`: {e}"))
    }

    fn arrival_id(&self, point: &str, participant: &str) -> String {
        format!("run/{}/arrival/{point}/{participant}", self.run_id)
    }

    async fn save_arrival(
        &self,
        point: &str,
        participant: &str,
        payload: &Value,
    ) -> Result<(), String> {
        let id = self.arrival_id(point, participant);
        let doc = json!({"point": point, "participant": participant, "payload": payload});
        self.context
            .put_as_operator(&id, "sync-arrival", doc)
            .await
            .map(drop)
            .map_err(|e| format!("storing the arrival `{id}`: {e}"))
    }

    /// What `participant` gave `point` before, if it is stored.
    async fn load_arrival(
        &self,
        kind: SyncPointType,
        point: &str,
        participant: &str,
    ) -> Option<Value> {
        if kind == SyncPointType::Checkpoint {
            return self.load(point, participant).await;
        }
        let view = self
            .context
            .get(OPERATOR, &self.arrival_id(point, participant))
            .await
            .ok()?;
        view.doc.get("payload").cloned()
    }

    async fn load(&self, point: &str, participant: &str) -> Option<Value> {
        let view = self
            .context
            .get(OPERATOR, &self.id(point, participant))
            .await
            .ok()?;
        view.doc.get("state").cloned()
    }
}

/// The synchronization points of one run.
pub struct SyncEngine {
    points: HashMap<String, Arc<Point>>,
    checkpoints: Option<Checkpoints>,
    notices: Option<mpsc::UnboundedSender<SyncNotice>>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("points", &self.points.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SyncEngine {
    /// An engine for `points` (validated by the manifest). With a context store, checkpoints
    /// are stored durably under the run's id; `notices` receives what happens.
    pub fn new(
        points: &[SyncPointDef],
        context: Option<(ContextService, String)>,
        notices: Option<mpsc::UnboundedSender<SyncNotice>>,
    ) -> Arc<Self> {
        Arc::new(SyncEngine {
            points: points
                .iter()
                .map(|def| {
                    (
                        def.id.clone(),
                        Arc::new(Point {
                            def: def.clone(),
                            state: Mutex::new(PointState::default()),
                            resolved: watch::channel(None).0,
                        }),
                    )
                })
                .collect(),
            checkpoints: context.map(|(context, run_id)| Checkpoints { context, run_id }),
            notices,
        })
    }

    fn notify(&self, n: SyncNotice) {
        if let Some(tx) = &self.notices {
            let _ = tx.send(n);
        }
    }

    /// Ids of the points `participant` takes part in.
    pub fn points_of(&self, participant: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .points
            .values()
            .filter(|p| p.def.participants.iter().any(|x| x == participant))
            .map(|p| p.def.id.clone())
            .collect();
        v.sort();
        v
    }

    /// Whether a point resolved (`Ok`) or failed (`Err` with why), without copying its
    /// outcome; `None` while it is open.
    pub fn status(&self, point: &str) -> Option<Result<(), String>> {
        let p = self.points.get(point)?;
        let r = p.resolved.borrow();
        Some(match r.as_deref()? {
            Resolution::Done(_) => Ok(()),
            Resolution::Failed(m) => Err(m.clone()),
        })
    }

    /// The resolution of a point, if it resolved.
    pub fn outcome(&self, point: &str) -> Option<Result<SyncOutcome, String>> {
        let p = self.points.get(point)?;
        let r = p.resolved.borrow().clone()?;
        Some(match &*r {
            Resolution::Done(o) => Ok((**o).clone()),
            Resolution::Failed(m) => Err(m.clone()),
        })
    }

    /// Marks `point` resolved from an earlier run being resumed.
    pub fn preload(&self, point: &str, outcome: Result<SyncOutcome, String>) {
        if let Some(p) = self.points.get(point) {
            p.resolved.send_replace(Some(Arc::new(match outcome {
                Ok(o) => Resolution::Done(Arc::new(o)),
                Err(m) => Resolution::Failed(m),
            })));
        }
    }

    /// Resuming a run: `point` has no outcome that stands, and the participants in `finished`
    /// will not run again. What each of them gave before the crash counts as its arrival;
    /// one that gave nothing is absent. The point may resolve at once.
    pub async fn resume_point(&self, point_id: &str, finished: &BTreeSet<String>) {
        let Some(point) = self.points.get(point_id) else {
            return;
        };
        let mut given = Vec::new();
        for p in point
            .def
            .participants
            .iter()
            .filter(|p| finished.contains(*p))
        {
            let stored = match &self.checkpoints {
                Some(cp) => cp.load_arrival(point.def.point_type, point_id, p).await,
                None => None,
            };
            given.push((p.clone(), stored));
        }
        let r = {
            let mut st = point.state.lock().expect("sync point lock poisoned");
            if point.resolved.borrow().is_some() {
                return;
            }
            for (p, stored) in given {
                match stored {
                    Some(payload)
                        if st
                            .room_for(
                                point_id,
                                &p,
                                json_bytes(&payload),
                                point.def.max_result_bytes,
                            )
                            .is_ok() =>
                    {
                        st.absent.remove(&p);
                        if !st.index.contains_key(&p) {
                            st.put_arrival(&p, payload);
                        }
                    }
                    Some(_) => {
                        st.absent.insert(p);
                    }
                    None => {
                        st.absent.insert(p);
                    }
                }
            }
            evaluate(&point.def, &st, false)
        };
        if let Some(r) = r {
            self.resolve(point, r);
        }
    }

    /// A participant arrives at `point` with `payload` and waits for the resolution (shared by
    /// every participant).
    pub async fn arrive(
        self: &Arc<Self>,
        point_id: &str,
        participant: &str,
        call: SyncPointType,
        payload: Value,
    ) -> Result<Arc<SyncOutcome>, SyncFailure> {
        let point = self
            .points
            .get(point_id)
            .ok_or_else(|| SyncFailure::UnknownPoint(point_id.to_string()))?
            .clone();
        if point.def.point_type != call {
            return Err(SyncFailure::Invalid(format!(
                "`{point_id}` is a {} point; call {} (not {})",
                point.def.point_type.as_str(),
                point.def.point_type.wit_call(),
                call.wit_call()
            )));
        }
        if !point.def.participants.iter().any(|p| p == participant) {
            return Err(SyncFailure::Invalid(format!(
                "subtask `{participant}` is not a participant of `{point_id}` (participants: {})",
                point.def.participants.join(", ")
            )));
        }
        // Within the point's bound before anything is stored (checked again as it counts,
        // against arrivals made meanwhile).
        let bytes = json_bytes(&payload);
        point
            .state
            .lock()
            .expect("sync point lock poisoned")
            .room_for(point_id, participant, bytes, point.def.max_result_bytes)?;
        // Durable before it counts.
        if point.resolved.borrow().is_none()
            && let Some(cp) = &self.checkpoints
        {
            if call == SyncPointType::Checkpoint {
                cp.save(point_id, participant, &payload).await
            } else {
                cp.save_arrival(point_id, participant, &payload).await
            }
            .map_err(SyncFailure::Failed)?;
        }
        let mut rx = point.resolved.subscribe();
        let resolved_now = {
            let mut st = point.state.lock().expect("sync point lock poisoned");
            if rx.borrow().is_none() {
                let first = st.first_arrival.is_none();
                if first {
                    st.first_arrival = Some(Instant::now());
                }
                st.room_for(point_id, participant, bytes, point.def.max_result_bytes)?;
                st.absent.remove(participant);
                st.put_arrival(participant, payload);
                if first && let Some(ms) = point.def.timeout_ms {
                    self.start_timer(&point, ms);
                }
                evaluate(&point.def, &st, false)
            } else {
                None
            }
        };
        if let Some(r) = resolved_now {
            self.resolve(&point, r);
        }
        let waiting = rx.borrow().is_none();
        // Inside the call until it returns or is dropped (the agent terminated).
        let _inside = Inside::enter(&point, participant);
        if waiting {
            self.notify(SyncNotice::Waiting {
                participant: participant.to_string(),
                point: point_id.to_string(),
            });
        }
        let r = loop {
            if let Some(r) = rx.borrow_and_update().clone() {
                break r;
            }
            if rx.changed().await.is_err() {
                break Arc::new(Resolution::Failed(format!(
                    "point `{point_id}` was dropped"
                )));
            }
        };
        if waiting {
            self.notify(SyncNotice::Released {
                participant: participant.to_string(),
                point: point_id.to_string(),
                at: Instant::now(),
            });
        }
        match &*r {
            Resolution::Done(o) => Ok(o.clone()),
            Resolution::Failed(m) => Err(SyncFailure::Failed(m.clone())),
        }
    }

    /// The state `participant` stored at checkpoint `point` (this run or the run it resumes).
    pub async fn restore(
        &self,
        point_id: &str,
        participant: &str,
    ) -> Result<Option<Value>, SyncFailure> {
        let point = self
            .points
            .get(point_id)
            .ok_or_else(|| SyncFailure::UnknownPoint(point_id.to_string()))?;
        if point.def.point_type != SyncPointType::Checkpoint {
            return Err(SyncFailure::Invalid(format!(
                "`{point_id}` is a {} point; only checkpoints hold state",
                point.def.point_type.as_str()
            )));
        }
        if !point.def.participants.iter().any(|p| p == participant) {
            return Err(SyncFailure::Invalid(format!(
                "subtask `{participant}` is not a participant of `{point_id}`"
            )));
        }
        Ok(match &self.checkpoints {
            Some(cp) => cp.load(point_id, participant).await,
            None => None,
        })
    }

    /// `participant` is over (failed, terminated, skipped, cancelled or done): no open point
    /// waits for it any more. At a barrier it counts as absent even if it had arrived (it died
    /// waiting, so it cannot go on with the others); at a decision, aggregation or checkpoint
    /// what it gave before it ended still counts.
    pub fn mark_absent(&self, participant: &str) {
        for point in self.points.values() {
            if !point.def.participants.iter().any(|p| p == participant) {
                continue;
            }
            let r = {
                let mut st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() {
                    continue;
                }
                if st.index.contains_key(participant) {
                    if point.def.point_type != SyncPointType::Barrier {
                        continue;
                    }
                    st.remove_arrival(participant);
                }
                st.absent.insert(participant.to_string());
                evaluate(&point.def, &st, false)
            };
            if let Some(r) = r {
                self.resolve(point, r);
            }
        }
    }

    /// `participant`'s attempt ended while it may have waited at a barrier that is still open:
    /// its arrival no longer stands (a retry arrives again). It is not absent: it may run
    /// again.
    pub fn withdraw(&self, participant: &str) {
        for point in self.points.values() {
            if point.def.point_type != SyncPointType::Barrier || point.resolved.borrow().is_some() {
                continue;
            }
            let mut st = point.state.lock().expect("sync point lock poisoned");
            st.remove_arrival(participant);
        }
    }

    /// Participant → the open point it waits at now: inside a sync call on a point not
    /// resolved. (An arrival that still counts but whose call ended, e.g. a vote of an attempt
    /// that failed, is not waiting.)
    pub fn waiting_at(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for point in self.points.values() {
            if point.resolved.borrow().is_some() {
                continue;
            }
            let st = point.state.lock().expect("sync point lock poisoned");
            for p in st.inside.keys() {
                out.insert(p.clone(), point.def.id.clone());
            }
        }
        out
    }

    /// Whether an open point someone waits at has a timer still to fire that will end it (its
    /// condition is `timeout`, or its `onTimeout` is `proceed` or `fail`): then a run whose
    /// agents all wait is not stuck yet.
    pub fn timer_pending(&self) -> bool {
        self.points.values().any(|point| {
            if point.resolved.borrow().is_some() {
                return false;
            }
            let st = point.state.lock().expect("sync point lock poisoned");
            !st.inside.is_empty()
                && point.def.timeout_ms.is_some()
                && st.first_arrival.is_some()
                && !st.timed_out
                && (point.def.condition == SyncCondition::Timeout
                    || point.def.on_timeout != OnTimeout::Wait)
        })
    }

    /// Ends every open point someone waits at (inside a sync call on it), because nothing can
    /// ever bring the rest (`reason`): as its `onTimeout` says, at once: `proceed` releases the
    /// arrivals with `complete = false`; `fail` and `wait` (which would wait for ever) fail the
    /// point. A point nobody waits at is left alone.
    pub fn break_deadlock(&self, reason: &str) {
        for point in self.points.values() {
            let r = {
                let st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() || st.inside.is_empty() {
                    continue;
                }
                match point.def.on_timeout {
                    OnTimeout::Proceed => {
                        Resolution::Done(Arc::new(outcome(&point.def, &st, false)))
                    }
                    OnTimeout::Wait | OnTimeout::Fail => {
                        Resolution::Failed(format!("point `{}`: {reason}", point.def.id))
                    }
                }
            };
            self.resolve(point, r);
        }
    }

    /// Fails every open point (the run is being cancelled).
    pub fn cancel_all(&self, reason: &str) {
        for point in self.points.values() {
            if point.resolved.borrow().is_none() {
                self.resolve(point, Resolution::Failed(reason.to_string()));
            }
        }
    }

    fn start_timer(self: &Arc<Self>, point: &Arc<Point>, ms: u64) {
        let weak_engine: Weak<SyncEngine> = Arc::downgrade(self);
        let weak_point = Arc::downgrade(point);
        // From the arrival, not from whenever the timer task is first polled.
        let now = tokio::time::Instant::now();
        // Bounded by the manifest check; a deadline past what `Instant` holds never fires.
        let deadline = now
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30));
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let (Some(engine), Some(point)) = (weak_engine.upgrade(), weak_point.upgrade()) else {
                return;
            };
            let r = {
                let mut st = point.state.lock().expect("sync point lock poisoned");
                if point.resolved.borrow().is_some() {
                    return;
                }
                st.timed_out = true;
                evaluate(&point.def, &st, true)
            };
            match r {
                Some(r) => engine.resolve(&point, r),
                None => engine.notify(SyncNotice::TimedOutWaiting {
                    point: point.def.id.clone(),
                }),
            }
        });
    }

    fn resolve(&self, point: &Point, r: Resolution) {
        let at = Instant::now();
        point.resolved.send_if_modified(|cur| {
            if cur.is_some() {
                return false;
            }
            *cur = Some(Arc::new(r.clone()));
            // Queued while the new value is not yet visible to waiters: the notice of the
            // resolution precedes anything a released participant does next.
            self.notify(SyncNotice::Resolved {
                point: point.def.id.clone(),
                outcome: match r {
                    Resolution::Done(o) => Ok(o),
                    Resolution::Failed(m) => Err(m),
                },
                at,
            });
            true
        });
    }
}

/// Decides whether a point resolves now. `timer` is true when called because the timeout
/// elapsed.
fn evaluate(def: &SyncPointDef, st: &PointState, timer: bool) -> Option<Resolution> {
    let n = def.participants.len();
    let arrived = &st.index;
    let absent = st.absent.len();
    let met = match &def.condition {
        SyncCondition::AllComplete => arrived.len() == n,
        // A decision by majority resolves once one choice has a majority of all participants
        // (or everyone is accounted for), not when any majority has voted: two split votes of
        // three decide nothing yet.
        SyncCondition::MajorityComplete if def.point_type == SyncPointType::Decision => {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for (_, v) in &st.arrivals {
                *counts.entry(v.to_string()).or_default() += 1;
            }
            counts.values().any(|c| c * 2 > n) || arrived.len() + absent >= n
        }
        SyncCondition::MajorityComplete => arrived.len() * 2 > n,
        SyncCondition::SpecificAgents(list) => list.iter().all(|a| arrived.contains_key(a)),
        SyncCondition::Timeout => timer || arrived.len() + absent >= n,
    };
    if met {
        return Some(Resolution::Done(Arc::new(outcome(def, st, true))));
    }
    let impossible = match &def.condition {
        SyncCondition::AllComplete => absent > 0,
        SyncCondition::MajorityComplete if def.point_type == SyncPointType::Decision => false,
        SyncCondition::MajorityComplete => (n - absent) * 2 <= n,
        SyncCondition::SpecificAgents(list) => list.iter().any(|a| st.absent.contains(a)),
        SyncCondition::Timeout => false,
    };
    let missing = || {
        let names: Vec<&str> = def
            .participants
            .iter()
            .map(String::as_str)
            .filter(|p| !arrived.contains_key(*p))
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    if impossible {
        return Some(match def.on_timeout {
            OnTimeout::Proceed => Resolution::Done(Arc::new(outcome(def, st, false))),
            OnTimeout::Wait | OnTimeout::Fail => Resolution::Failed(format!(
                "point `{}`: condition `{}` can no longer be met; absent: {}",
                def.id,
                def.condition.name(),
                missing()
            )),
        });
    }
    if timer {
        return match def.on_timeout {
            OnTimeout::Wait => None,
            OnTimeout::Proceed => Some(Resolution::Done(Arc::new(outcome(def, st, false)))),
            OnTimeout::Fail => Some(Resolution::Failed(format!(
                "point `{}` timed out after {} ms with condition `{}` unmet; absent: {}",
                def.id,
                def.timeout_ms.unwrap_or(0),
                def.condition.name(),
                missing()
            ))),
        };
    }
    None
}

fn outcome(def: &SyncPointDef, st: &PointState, complete: bool) -> SyncOutcome {
    let arrived: Vec<String> = st.arrivals.iter().map(|(p, _)| p.clone()).collect();
    let absent = def
        .participants
        .iter()
        .filter(|p| !st.index.contains_key(*p))
        .cloned()
        .collect();
    // Payloads in participant (manifest) order, for deterministic results.
    let ordered: Vec<(&str, &Value)> = def
        .participants
        .iter()
        .filter_map(|p| {
            st.index
                .get(p)
                .map(|&i| (st.arrivals[i].0.as_str(), &st.arrivals[i].1))
        })
        .collect();
    let result = match def.point_type {
        SyncPointType::Barrier => Value::Null,
        SyncPointType::Checkpoint => Value::Object(
            ordered
                .iter()
                .map(|(p, v)| (p.to_string(), (*v).clone()))
                .collect(),
        ),
        SyncPointType::Decision => tally(def, &ordered),
        SyncPointType::Aggregation => reduce(def.reducer.unwrap_or_default(), &ordered),
    };
    SyncOutcome {
        point: def.id.clone(),
        complete,
        timed_out: st.timed_out,
        arrived,
        absent,
        result,
        waited_ms: st
            .first_arrival
            .map(|t| t.elapsed().as_millis() as u64)
            .unwrap_or(0),
        result_text: Default::default(),
    }
}

/// Tallies the votes. The rule follows the condition:
/// - `all-complete` → **unanimous**: a choice wins when every participant voted for it;
/// - `majority-complete` → **majority**: a choice wins with more than half of all participants;
/// - `specific-agents` → the listed participants decide, unanimously;
/// - `timeout` → **plurality** of the votes cast; a tie decides nothing.
///
/// No winner gives `"decision": null`.
fn tally(def: &SyncPointDef, votes: &[(&str, &Value)]) -> Value {
    let choice = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v.to_string())
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, v) in votes {
        *counts.entry(choice(v)).or_default() += 1;
    }
    let n = def.participants.len();
    let (rule, decision) = match &def.condition {
        SyncCondition::AllComplete => (
            "unanimous",
            counts
                .iter()
                .find(|(_, c)| **c == n)
                .map(|(k, _)| k.clone()),
        ),
        SyncCondition::MajorityComplete => (
            "majority",
            counts
                .iter()
                .find(|(_, c)| **c * 2 > n)
                .map(|(k, _)| k.clone()),
        ),
        SyncCondition::SpecificAgents(list) => {
            let chosen: BTreeSet<String> = list
                .iter()
                .filter_map(|a| votes.iter().find(|(p, _)| p == a).map(|(_, v)| choice(v)))
                .collect();
            let all_voted = list.iter().all(|a| votes.iter().any(|(p, _)| p == a));
            (
                "specific-agents",
                (all_voted && chosen.len() == 1)
                    .then(|| chosen.into_iter().next())
                    .flatten(),
            )
        }
        SyncCondition::Timeout => {
            let max = counts.values().copied().max().unwrap_or(0);
            let top: Vec<&String> = counts
                .iter()
                .filter(|(_, c)| **c == max)
                .map(|(k, _)| k)
                .collect();
            (
                "plurality",
                (max > 0 && top.len() == 1).then(|| top[0].clone()),
            )
        }
    };
    json!({
        "decision": decision,
        "rule": rule,
        "votes": votes.iter().map(|(p, v)| (p.to_string(), Value::String(choice(v)))).collect::<Map<_, _>>(),
        "tally": counts,
    })
}

fn reduce(reducer: Reducer, values: &[(&str, &Value)]) -> Value {
    match reducer {
        Reducer::Collect => Value::Object(
            values
                .iter()
                .map(|(p, v)| (p.to_string(), (*v).clone()))
                .collect(),
        ),
        Reducer::Concat => Value::Array(
            values
                .iter()
                .flat_map(|(_, v)| match v {
                    Value::Array(items) => items.clone(),
                    other => vec![(*other).clone()],
                })
                .collect(),
        ),
        Reducer::Sum => values
            .iter()
            .fold(Value::Null, |acc, (_, v)| sum_values(acc, v)),
        Reducer::Merge => values.iter().fold(Value::Null, |mut acc, (_, v)| {
            merge_into(&mut acc, v);
            acc
        }),
    }
}

/// Numbers add; objects add field-wise; anything else is kept from the first contribution.
fn sum_values(acc: Value, v: &Value) -> Value {
    match (acc, v) {
        (Value::Null, v) => v.clone(),
        (Value::Number(a), Value::Number(b)) => match (a.as_i64(), b.as_i64()) {
            (Some(x), Some(y)) => json!(x.saturating_add(y)),
            _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
        },
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, bv) in b {
                let cur = a.remove(k).unwrap_or(Value::Null);
                a.insert(k.clone(), sum_values(cur, bv));
            }
            Value::Object(a)
        }
        (acc, _) => acc,
    }
}

fn merge_into(acc: &mut Value, v: &Value) {
    match (acc, v) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                merge_into(a.entry(k.clone()).or_insert(Value::Null), bv);
            }
        }
        (acc, v) => *acc = v.clone(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_sync_wait_counts_until_its_call_returns_or_is_dropped() {
        use std::sync::atomic::Ordering;
        let handle = Arc::new(SyncHandle {
            engine: SyncEngine::new(&[], None, None),
            participant: "a".into(),
            waiting: Default::default(),
            waited_us: Default::default(),
            timer_due: Default::default(),
            polling: Default::default(),
        });
        {
            let _w = handle.enter_wait();
            assert!(handle.waiting.load(Ordering::Relaxed));
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        assert!(!handle.waiting.load(Ordering::Relaxed));
        assert_eq!(handle.waited_us.load(Ordering::Relaxed), 5_000_000);
        // A call dropped inside its wait (the agent terminated) stops counting too.
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let h = handle.clone();
        let task = tokio::spawn(async move {
            let _w = h.enter_wait();
            let _ = entered_tx.send(());
            std::future::pending::<()>().await;
        });
        entered.await.unwrap();
        tokio::time::advance(Duration::from_millis(250)).await;
        task.abort();
        let _ = task.await;
        assert!(!handle.waiting.load(Ordering::Relaxed));
        assert_eq!(handle.waited_us.load(Ordering::Relaxed), 5_250_000);
    }

    fn def(kind: SyncPointType, cond: SyncCondition, on_timeout: OnTimeout) -> SyncPointDef {
        SyncPointDef {
            id: "p".into(),
            point_type: kind,
            description: String::new(),
            participants: vec!["a".into(), "b".into(), "c".into()],
            condition: cond,
            timeout_ms: Some(100),
            on_timeout,
            reducer: None,
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
        }
    }

    /// `a` and `b` contribute 10 bytes each to an aggregation bounded at 30 bytes, then `c`
    /// contributes `last`.
    async fn third_contribution(last: Value) -> Result<Arc<SyncOutcome>, SyncFailure> {
        let mut d = def(
            SyncPointType::Aggregation,
            SyncCondition::AllComplete,
            OnTimeout::Fail,
        );
        d.timeout_ms = None;
        d.max_result_bytes = 30;
        let e = SyncEngine::new(&[d], None, None);
        // A 10-byte JSON string: eight characters and the quotes.
        let value = json!("12345678");
        assert_eq!(json_bytes(&value), 10);
        for who in ["a", "b"] {
            let (e, v) = (e.clone(), value.clone());
            tokio::spawn(async move { e.arrive("p", who, SyncPointType::Aggregation, v).await });
        }
        while e.waiting_at().len() < 2 {
            tokio::task::yield_now().await;
        }
        let r = e.arrive("p", "c", SyncPointType::Aggregation, last).await;
        e.cancel_all("test over");
        r
    }

    #[tokio::test]
    async fn a_point_holds_payloads_up_to_its_max_result_bytes() {
        // Exactly 30 bytes: the point resolves.
        let done = third_contribution(json!("12345678")).await.unwrap();
        assert!(done.complete);
        assert_eq!(
            &*done.result_text(),
            r#"{"a":"12345678","b":"12345678","c":"12345678"}"#
        );
        // One byte more is refused, naming the bound.
        let refused = third_contribution(json!("123456789")).await.unwrap_err();
        assert!(
            matches!(&refused, SyncFailure::InvalidPayload(m) if m.contains("would hold 31 bytes") && m.contains("maxResultBytes is 30")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn barrier_releases_everyone_when_all_arrive() {
        let e = SyncEngine::new(
            &[def(
                SyncPointType::Barrier,
                SyncCondition::AllComplete,
                OnTimeout::Fail,
            )],
            None,
            None,
        );
        let tasks: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|p| {
                let e = e.clone();
                tokio::spawn(
                    async move { e.arrive("p", p, SyncPointType::Barrier, Value::Null).await },
                )
            })
            .collect();
        for t in tasks {
            let o = t.await.unwrap().unwrap();
            assert!(o.complete && !o.timed_out);
            assert_eq!(o.arrived.len(), 3);
        }
    }

    #[tokio::test]
    async fn majority_decision_and_absent_participant() {
        let mut d = def(
            SyncPointType::Decision,
            SyncCondition::MajorityComplete,
            OnTimeout::Fail,
        );
        d.timeout_ms = None;
        let e = SyncEngine::new(&[d], None, None);
        e.mark_absent("c");
        let e2 = e.clone();
        let a = tokio::spawn(async move {
            e2.arrive("p", "a", SyncPointType::Decision, json!("yes"))
                .await
        });
        let o = e
            .arrive("p", "b", SyncPointType::Decision, json!("yes"))
            .await
            .unwrap();
        assert_eq!(o.result["decision"], "yes");
        assert_eq!(o.absent, vec!["c".to_string()]);
        assert_eq!(a.await.unwrap().unwrap().result["tally"]["yes"], 2);
    }

    /// Waits until `n` participants wait at a point, or the point resolved.
    async fn until_waiting(rx: &mut mpsc::UnboundedReceiver<SyncNotice>, n: usize) {
        let mut waiting = 0;
        while waiting < n {
            match rx.recv().await.expect("engine alive") {
                SyncNotice::Waiting { .. } => waiting += 1,
                SyncNotice::Resolved { .. } => return,
                _ => {}
            }
        }
    }

    #[tokio::test]
    async fn a_split_majority_vote_waits_for_the_deciding_vote() {
        let mut d = def(
            SyncPointType::Decision,
            SyncCondition::MajorityComplete,
            OnTimeout::Fail,
        );
        d.timeout_ms = None;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let e = SyncEngine::new(&[d], None, Some(tx));
        let (e1, e2) = (e.clone(), e.clone());
        let a = tokio::spawn(async move {
            e1.arrive("p", "a", SyncPointType::Decision, json!("yes"))
                .await
        });
        let b = tokio::spawn(async move {
            e2.arrive("p", "b", SyncPointType::Decision, json!("no"))
                .await
        });
        until_waiting(&mut rx, 2).await;
        assert!(
            e.outcome("p").is_none(),
            "one vote each decides nothing yet"
        );
        let o = e
            .arrive("p", "c", SyncPointType::Decision, json!("no"))
            .await
            .unwrap();
        assert_eq!(o.result["decision"], "no");
        assert_eq!(a.await.unwrap().unwrap().result["decision"], "no");
        assert_eq!(b.await.unwrap().unwrap().arrived.len(), 3);
    }

    /// The timeout counts from the first arrival: 1 ms before it nothing has happened, at it
    /// the policy applies (paused time, so the boundary is exact).
    #[tokio::test(start_paused = true)]
    async fn the_timeout_fires_at_its_boundary_and_not_before() {
        for (policy, resolves) in [
            (OnTimeout::Proceed, true),
            (OnTimeout::Fail, true),
            (OnTimeout::Wait, false),
        ] {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let e = SyncEngine::new(
                &[def(
                    SyncPointType::Barrier,
                    SyncCondition::AllComplete,
                    policy,
                )],
                None,
                Some(tx),
            );
            let e1 = e.clone();
            let a = tokio::spawn(async move {
                e1.arrive("p", "a", SyncPointType::Barrier, Value::Null)
                    .await
            });
            until_waiting(&mut rx, 1).await;
            tokio::time::advance(Duration::from_millis(99)).await;
            tokio::task::yield_now().await;
            assert!(e.outcome("p").is_none(), "{policy:?}: 99 ms of 100");
            assert!(rx.try_recv().is_err(), "{policy:?}: nothing yet");
            tokio::time::advance(Duration::from_millis(1)).await;
            // The timer task runs and reports.
            let notice = rx.recv().await.unwrap();
            match (resolves, notice) {
                (true, SyncNotice::Resolved { outcome, .. }) => match policy {
                    OnTimeout::Proceed => {
                        let o = outcome.unwrap();
                        assert!(o.timed_out && !o.complete);
                        assert_eq!(o.absent, ["b", "c"]);
                    }
                    _ => assert!(outcome.unwrap_err().contains("timed out after 100 ms")),
                },
                (false, SyncNotice::TimedOutWaiting { point }) => {
                    assert_eq!(point, "p");
                    assert!(e.outcome("p").is_none(), "wait keeps the point open");
                    e.mark_absent("b");
                }
                (_, other) => panic!("{policy:?}: unexpected {other:?}"),
            }
            let r = a.await.unwrap();
            if policy == OnTimeout::Wait {
                // b absent makes all-complete impossible: `wait` fails instead of hanging.
                assert!(r.unwrap_err().to_string().contains("can no longer be met"));
            }
        }
    }

    /// Every condition × every timeout policy × (all arrive, `c` dies, `c` is late), as seen by
    /// participant `a`: `Some((complete, timed_out))`, or `None` for a failed point. Paused
    /// time: "late" arrives at 200 ms, after the 60 ms timeout, exactly.
    #[tokio::test(start_paused = true)]
    async fn barrier_matrix() {
        use OnTimeout::*;
        let specific = SyncCondition::SpecificAgents(vec!["a".into(), "b".into()]);
        let conds = [
            SyncCondition::AllComplete,
            SyncCondition::MajorityComplete,
            specific,
            SyncCondition::Timeout,
        ];
        let ok = |t: bool| Some((true, t));
        let expect = |cond: &SyncCondition, policy: OnTimeout, scenario: &str| match (
            cond, policy, scenario,
        ) {
            (_, _, "all") => ok(false),
            (SyncCondition::AllComplete, Proceed, "dies") => Some((false, false)),
            (SyncCondition::AllComplete, _, "dies") => None,
            (SyncCondition::AllComplete, Wait, "late") => ok(true),
            (SyncCondition::AllComplete, Proceed, "late") => Some((false, true)),
            (SyncCondition::AllComplete, Fail, "late") => None,
            (SyncCondition::Timeout, _, "late") => ok(true),
            _ => ok(false),
        };
        let mut cases = tokio::task::JoinSet::new();
        for cond in conds {
            for policy in [Wait, Proceed, Fail] {
                for scenario in ["all", "dies", "late"] {
                    let want = expect(&cond, policy, scenario);
                    let mut d = def(SyncPointType::Barrier, cond.clone(), policy);
                    d.timeout_ms = Some(60);
                    cases.spawn(async move {
                        let (tx, mut rx) = mpsc::unbounded_channel();
                        let e = SyncEngine::new(std::slice::from_ref(&d), None, Some(tx));
                        let arrive = |p: &'static str| {
                            let e = e.clone();
                            tokio::spawn(async move {
                                e.arrive("p", p, SyncPointType::Barrier, Value::Null).await
                            })
                        };
                        let a = arrive("a");
                        let b = arrive("b");
                        match scenario {
                            "all" => drop(arrive("c")),
                            "dies" => {
                                // After a and b are in (waiting, or resolved by their arrival).
                                until_waiting(&mut rx, 2).await;
                                e.mark_absent("c");
                            }
                            _ => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                drop(arrive("c"));
                            }
                        }
                        let got = a.await.unwrap().ok().map(|o| (o.complete, o.timed_out));
                        let _ = b.await;
                        (
                            format!("{} {policy:?} {scenario}", d.condition.name()),
                            got,
                            want,
                        )
                    });
                }
            }
        }
        while let Some(r) = cases.join_next().await {
            let (case, got, want) = r.unwrap();
            assert_eq!(got, want, "{case}");
        }
    }

    #[tokio::test]
    async fn reducers() {
        let a = json!({"x": 1, "y": {"z": 2}});
        let b = json!({"x": 2, "y": {"z": 3}, "w": 1});
        let vals = [("a", &a), ("b", &b)];
        assert_eq!(
            reduce(Reducer::Sum, &vals),
            json!({"x": 3, "y": {"z": 5}, "w": 1})
        );
        assert_eq!(
            reduce(Reducer::Merge, &vals),
            json!({"x": 2, "y": {"z": 3}, "w": 1})
        );
        assert_eq!(reduce(Reducer::Concat, &vals), json!([a, b]));
        assert_eq!(reduce(Reducer::Collect, &vals), json!({"a": a, "b": b}));
        // Arrays are spliced by concat; scalars summed, a non-number kept from the first.
        let (one, two, word) = (json!([1, 2]), json!(3), json!("w"));
        assert_eq!(
            reduce(Reducer::Concat, &[("a", &one), ("b", &two)]),
            json!([1, 2, 3])
        );
        assert_eq!(reduce(Reducer::Sum, &[("a", &two), ("b", &two)]), json!(6));
        assert_eq!(
            reduce(Reducer::Sum, &[("a", &word), ("b", &two)]),
            json!("w")
        );
    }
}
