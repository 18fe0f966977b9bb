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

mod aggregation;
mod decision;
mod durable;
mod engine;
mod handle;
mod resolve;
mod state;
#[cfg(test)]
mod tests;

use aggregation::reduce;
use decision::tally;
use durable::Checkpoints;
pub use engine::SyncEngine;
pub use handle::{IdleGuard, PollGuard, SyncHandle, WaitGuard};
use resolve::{evaluate, outcome};
use state::{Inside, Point, PointState, Resolution, json_bytes};

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
    /// A participant waits in a call with its own timeout (`channels.receive`,
    /// `events.next`): not at a point, but not computing either.
    Idle {
        /// The participant.
        participant: String,
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
