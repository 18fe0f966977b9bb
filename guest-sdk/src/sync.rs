//! Synchronization points of a coordinated run (WIT interface `sync`, see `wit/sync.wit`).
//!
//! Under `qi-host run <manifest>` a task is split into subtasks, each run by its own agent. The
//! manifest declares synchronization points: each has an id, a type (`barrier`, `checkpoint`,
//! `decision`, `aggregation`), its participants (subtask ids), a condition and what happens on
//! timeout. A participant takes part by calling the function of the point's type with the
//! point's id; the call blocks until the point resolves, and every participant gets the same
//! [`SyncOutcome`].
//!
//! A participant that fails, is terminated or finishes without arriving counts as *absent*:
//! the point never waits for it, and it is listed in [`SyncOutcome::absent`]. When the
//! condition can no longer be met the point resolves at once as if it had timed out: with
//! `on-timeout = "proceed"` the outcome has `complete: false`; with `fail` the call returns
//! [`SyncError::Failed`] naming the absent participants.
//!
//! A barrier with more than 64 participants returns a *compact* outcome, so that waking every
//! participant does not copy every participant list to each: [`SyncOutcome::arrived`] holds
//! only the caller (if it arrived) and [`SyncOutcome::absent`] is empty, while
//! [`SyncOutcome::arrived_count`] and [`SyncOutcome::absent_count`] are always the full counts.
//! [`outcome`] fetches the full lists when a participant needs them.
//!
//! ```
//! use qi_guest_sdk::serde_json::json;
//! use qi_guest_sdk::{AgentError, sync};
//!
//! # fn demo() -> Result<(), AgentError> {
//! // Pick up where an earlier attempt left off, if it stored anything.
//! let start = sync::restore("halfway")?.and_then(|state| state["next"].as_u64()).unwrap_or(0);
//!
//! // ... work from `start` ...
//! sync::checkpoint("halfway", &json!({"next": start + 100}))?;
//!
//! // Everyone waits for everyone (or for the ones still alive).
//! let outcome = sync::barrier("analysis-done")?;
//! if outcome.absent_count > 0 {
//!     // A compact outcome lists no one: ask for the full one.
//!     let full = if outcome.is_compact() { sync::outcome("analysis-done")? } else { outcome };
//!     qi_guest_sdk::log::warn!("proceeding without {:?}", full.absent);
//! }
//!
//! // Agree on something; every voter receives the same decision.
//! let outcome = sync::vote("ship-it", "approve")?;
//! let approved = outcome.decision() == Some("approve");
//!
//! // Combine values; the aggregate depends on the point's reducer.
//! let total = sync::contribute("line-count", &1234)?.result;
//! # let _ = (approved, total);
//! # Ok(())
//! # }
//! ```
//!
//! Outside a coordinated run (`qi-host run-agent`) every call returns
//! [`SyncError::NotCoordinated`]. `?` on a [`SyncError`] inside [`Agent::run`] ends the run as
//! [`AgentError::Failed`](crate::AgentError::Failed).
//!
//! [`Agent::run`]: crate::Agent::run

use serde::Serialize;

pub use crate::SyncError;
use crate::wit::qi::agent::sync as raw;

/// How a point resolved: the same for every participant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyncOutcome {
    /// The point's id.
    pub point: String,
    /// `true` when the condition was met; `false` when the point proceeded without it
    /// (`on-timeout = "proceed"`).
    pub complete: bool,
    /// `true` when the point's timeout elapsed before it resolved.
    pub timed_out: bool,
    /// Participants (subtask ids) that arrived, in arrival order. In a compact outcome (a
    /// barrier with more than 64 participants) only the caller itself, if it arrived: call
    /// [`outcome`] for the full list.
    pub arrived: Vec<String>,
    /// Participants that did not arrive (failed, terminated, finished, or late). Empty in a
    /// compact outcome.
    pub absent: Vec<String>,
    /// How many participants arrived: the length of the full `arrived` list, also in a compact
    /// outcome.
    pub arrived_count: u32,
    /// How many participants did not arrive: the length of the full `absent` list, also in a
    /// compact outcome.
    pub absent_count: u32,
    /// The type-specific result (text that is not JSON is kept as a JSON string):
    /// - barrier: `null`;
    /// - checkpoint: `{"<participant>": <state>, ...}` of every arrived participant;
    /// - decision: `{"decision": "<choice>" | null, "rule": "...", "votes": {...}, "tally":
    ///   {...}}` (see [`SyncOutcome::decision`]);
    /// - aggregation: the reducer's result (`concat`: a list in participant order; `sum`: a
    ///   number; `merge`: an object; `collect`: `{"<participant>": <value>}`).
    pub result: serde_json::Value,
}

impl SyncOutcome {
    /// The choice a decision point settled on: `result["decision"]` when it is a string;
    /// `None` when there was no decision (or the point is not a decision point).
    pub fn decision(&self) -> Option<&str> {
        self.result
            .get("decision")
            .and_then(serde_json::Value::as_str)
    }

    /// `true` when the lists leave participants out (a compact outcome of a barrier with more
    /// than 64 participants): [`outcome`] has them all.
    pub fn is_compact(&self) -> bool {
        self.arrived.len() != self.arrived_count as usize
            || self.absent.len() != self.absent_count as usize
    }
}

impl From<raw::SyncOutcome> for SyncOutcome {
    fn from(o: raw::SyncOutcome) -> Self {
        SyncOutcome {
            point: o.point,
            complete: o.complete,
            timed_out: o.timed_out,
            arrived: o.arrived,
            absent: o.absent,
            arrived_count: o.arrived_count,
            absent_count: o.absent_count,
            result: parse_or_string(o.result),
        }
    }
}

/// JSON text as a value; text that is not JSON is kept as a JSON string.
fn parse_or_string(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

fn to_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<String, SyncError> {
    serde_json::to_string(value).map_err(|error| {
        SyncError::InvalidPayload(format!("could not serialize the {what} as JSON: {error}"))
    })
}

/// Arrives at the barrier `point` and waits until it resolves.
///
/// # Errors
///
/// [`SyncError::NotCoordinated`], [`SyncError::UnknownPoint`], [`SyncError::Invalid`] (not a
/// barrier, not a participant, already arrived), [`SyncError::Failed`] (timed out or
/// impossible with `on-timeout = "fail"`).
pub fn barrier(point: &str) -> Result<SyncOutcome, SyncError> {
    raw::barrier(point).map(SyncOutcome::from)
}

/// Arrives at the checkpoint `point` with `state` (serialized as JSON) and waits until it
/// resolves. The host stores the state durably before counting the arrival, so a later
/// attempt of this subtask, or a resumed run, gets it back from [`restore`].
///
/// # Errors
///
/// As [`barrier`], plus [`SyncError::InvalidPayload`] when `state` cannot be serialized or is
/// over the size limit.
pub fn checkpoint<T: Serialize + ?Sized>(point: &str, state: &T) -> Result<SyncOutcome, SyncError> {
    let state = to_json("checkpoint state", state)?;
    raw::checkpoint(point, &state).map(SyncOutcome::from)
}

/// The state this subtask stored at the checkpoint `point` in an earlier attempt, or in an
/// earlier run that is being resumed; `None` when there is none. Does not arrive at the point.
///
/// # Errors
///
/// [`SyncError::NotCoordinated`], [`SyncError::UnknownPoint`], [`SyncError::Invalid`].
pub fn restore(point: &str) -> Result<Option<serde_json::Value>, SyncError> {
    raw::restore(point).map(|state| state.map(parse_or_string))
}

/// Casts `choice` (a short word such as `approve`) at the decision point `point` and waits for
/// the outcome; [`SyncOutcome::decision`] is the choice the point settled on.
///
/// # Errors
///
/// As [`barrier`], plus [`SyncError::InvalidPayload`] for a choice the host refuses.
pub fn vote(point: &str, choice: &str) -> Result<SyncOutcome, SyncError> {
    raw::vote(point, choice).map(SyncOutcome::from)
}

/// Contributes `value` (serialized as JSON) to the aggregation point `point` and waits for the
/// aggregate, which is [`SyncOutcome::result`].
///
/// # Errors
///
/// As [`checkpoint`].
pub fn contribute<T: Serialize + ?Sized>(point: &str, value: &T) -> Result<SyncOutcome, SyncError> {
    let value = to_json("contributed value", value)?;
    raw::contribute(point, &value).map(SyncOutcome::from)
}

/// The full outcome of the point `point`, which has resolved: every participant listed, even
/// for a barrier whose [compact](SyncOutcome::is_compact) outcome left them out. Does not
/// arrive at the point; any participant of the point may ask, once or many times.
///
/// # Errors
///
/// [`SyncError::NotCoordinated`], [`SyncError::UnknownPoint`], [`SyncError::Invalid`] (the
/// point is still open, or the caller is not one of its participants).
pub fn outcome(point: &str) -> Result<SyncOutcome, SyncError> {
    raw::outcome(point).map(SyncOutcome::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw_outcome(result: &str) -> raw::SyncOutcome {
        raw::SyncOutcome {
            point: "p".into(),
            complete: true,
            timed_out: false,
            arrived: vec!["a".into(), "b".into()],
            absent: vec!["c".into()],
            arrived_count: 2,
            absent_count: 1,
            result: result.into(),
        }
    }

    #[test]
    fn outcome_result_is_parsed_and_non_json_kept() {
        let o = SyncOutcome::from(raw_outcome(
            r#"{"decision":"approve","votes":{"a":"approve"}}"#,
        ));
        assert_eq!(o.decision(), Some("approve"));
        assert_eq!(o.absent, vec!["c".to_string()]);
        assert_eq!(
            serde_json::to_value(&o).unwrap()["result"]["votes"],
            json!({"a": "approve"})
        );

        let o = SyncOutcome::from(raw_outcome(r#"{"decision":null}"#));
        assert_eq!(o.decision(), None);
        let o = SyncOutcome::from(raw_outcome("null"));
        assert_eq!(o.decision(), None);

        let o = SyncOutcome::from(raw_outcome("not json"));
        assert_eq!(o.result, json!("not json"));
    }

    #[test]
    fn outcome_serializes_with_snake_case_fields() {
        let value = serde_json::to_value(SyncOutcome::from(raw_outcome("3"))).unwrap();
        assert_eq!(
            value,
            json!({
                "point": "p",
                "complete": true,
                "timed_out": false,
                "arrived": ["a", "b"],
                "absent": ["c"],
                "arrived_count": 2,
                "absent_count": 1,
                "result": 3,
            })
        );
    }

    #[test]
    fn compact_outcomes_are_recognized() {
        let full = SyncOutcome::from(raw_outcome("null"));
        assert!(!full.is_compact());

        // 100 participants: the caller sees itself only, and the counts.
        let compact = SyncOutcome::from(raw::SyncOutcome {
            arrived: vec!["a".into()],
            absent: Vec::new(),
            arrived_count: 97,
            absent_count: 3,
            ..raw_outcome("null")
        });
        assert!(compact.is_compact());
        assert_eq!(compact.arrived_count, 97);

        // A caller that did not arrive (and so is not listed) with no one absent.
        let empty = SyncOutcome::from(raw::SyncOutcome {
            arrived: Vec::new(),
            absent: Vec::new(),
            arrived_count: 65,
            absent_count: 0,
            ..raw_outcome("null")
        });
        assert!(empty.is_compact());
    }
}
