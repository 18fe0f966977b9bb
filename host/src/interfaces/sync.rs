//! `qi:agent/sync`: the synchronization points of a coordinated run.

use super::AgentState;
use super::limits::{self, MAX_SYNC_PAYLOAD_BYTES, MAX_VOTE_BYTES};
use super::qi;
use crate::coord::sync::{SyncFailure, SyncPointType};
use crate::sandbox::AgentShared;
use qi::agent::sync::{SyncError as WitSyncError, SyncOutcome as WitSyncOutcome};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/sync` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::sync::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

/// A barrier with more participants than this hands each of them a compact outcome: the
/// counts and the caller's own arrival, not the lists (which would copy the whole list into
/// every participant: 1,000 participants × 1,000 names). `sync.outcome` gives the full one.
pub const COMPACT_BARRIER_OVER: usize = 64;

/// The outcome as the guest gets it: compact for a barrier of more than
/// [`COMPACT_BARRIER_OVER`] participants unless `full`.
fn sync_outcome(
    o: Arc<crate::coord::sync::SyncOutcome>,
    call: Option<SyncPointType>,
    caller: &str,
) -> WitSyncOutcome {
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let compact = call == Some(SyncPointType::Barrier)
        && o.arrived.len().saturating_add(o.absent.len()) > COMPACT_BARRIER_OVER;
    let (arrived, absent) = if compact {
        let me: Vec<String> = o.arrived.iter().filter(|a| *a == caller).cloned().collect();
        (me, Vec::new())
    } else {
        (o.arrived.clone(), o.absent.clone())
    };
    WitSyncOutcome {
        point: o.point.clone(),
        complete: o.complete,
        timed_out: o.timed_out,
        arrived_count: count(o.arrived.len()),
        absent_count: count(o.absent.len()),
        arrived,
        absent,
        // Serialized once per point, copied per participant.
        result: o.result_text().to_string(),
    }
}

fn sync_error(e: SyncFailure) -> WitSyncError {
    match e {
        SyncFailure::UnknownPoint(p) => WitSyncError::UnknownPoint(p),
        SyncFailure::Invalid(m) => WitSyncError::Invalid(m),
        SyncFailure::Failed(m) => WitSyncError::Failed(m),
        SyncFailure::InvalidPayload(m) => WitSyncError::InvalidPayload(m),
    }
}

fn sync_payload(
    shared: &AgentShared,
    call: &str,
    argument: &str,
    text: &str,
) -> Result<serde_json::Value, WitSyncError> {
    limits::bytes(shared, call, argument, text, MAX_SYNC_PAYLOAD_BYTES)
        .and_then(|()| limits::stored(shared, call, argument, text.len(), 1))
        .map_err(|r| WitSyncError::InvalidPayload(r.into_message()))?;
    serde_json::from_str(text)
        .map_err(|e| WitSyncError::InvalidPayload(format!("{call}: payload is not JSON: {e}")))
}

impl AgentState {
    /// One sync call: counted, recorded when monitored, refused outside a coordinated run.
    async fn sync_call(
        &mut self,
        call: SyncPointType,
        point: String,
        payload: Result<serde_json::Value, WitSyncError>,
        arg_bytes: usize,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            limits::ids(&shared, call.wit_call(), "point", [&point])
                .map_err(|r| WitSyncError::Invalid(r.into_message()))?;
            // Arguments first: an oversized payload is refused the same way in and out of a
            // coordinated run.
            let payload = payload?;
            let handle = shared.sync.clone().ok_or(WitSyncError::NotCoordinated)?;
            let action = call.wit_call().trim_start_matches("sync.");
            shared
                .gate("sync", &point, action)
                .map_err(WitSyncError::AccessDenied)?;
            let waiting = handle.enter_wait();
            let r = handle
                .engine
                .arrive(&point, &handle.participant, call, payload)
                .await;
            drop(waiting);
            r.map(|o| sync_outcome(o, Some(call), &handle.participant))
                .map_err(sync_error)
        }
        .await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(WitSyncError::NotCoordinated) => "not-coordinated",
            Err(WitSyncError::UnknownPoint(_)) => "unknown-point",
            Err(WitSyncError::Invalid(_)) => "invalid",
            Err(WitSyncError::Failed(_)) => "failed",
            Err(WitSyncError::InvalidPayload(_)) => "invalid-payload",
            Err(WitSyncError::AccessDenied(_)) => "access-denied",
        };
        shared.record_call(call.wit_call(), &point, arg_bytes, start, outcome);
        r
    }
}

impl qi::agent::sync::Host for AgentState {
    async fn barrier(&mut self, point: String) -> Result<WitSyncOutcome, WitSyncError> {
        self.sync_call(
            SyncPointType::Barrier,
            point,
            Ok(serde_json::Value::Null),
            0,
        )
        .await
    }

    async fn checkpoint(
        &mut self,
        point: String,
        state: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = sync_payload(&self.shared, "sync.checkpoint", "state", &state);
        self.sync_call(SyncPointType::Checkpoint, point, payload, state.len())
            .await
    }

    async fn restore(&mut self, point: String) -> Result<Option<String>, WitSyncError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            limits::ids(&shared, "sync.restore", "point", [&point])
                .map_err(|r| WitSyncError::Invalid(r.into_message()))?;
            let handle = shared.sync.clone().ok_or(WitSyncError::NotCoordinated)?;
            shared
                .gate("sync", &point, "restore")
                .map_err(WitSyncError::AccessDenied)?;
            handle
                .engine
                .restore(&point, &handle.participant)
                .await
                .map(|v| v.map(|v| v.to_string()))
                .map_err(sync_error)
        }
        .await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        shared.record_call("sync.restore", &point, 0, start, outcome);
        r
    }

    async fn vote(
        &mut self,
        point: String,
        choice: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = if choice.is_empty() {
            Err(WitSyncError::InvalidPayload(
                "sync.vote: `choice` is empty; pass a short choice such as `approve`".into(),
            ))
        } else if let Err(r) =
            limits::bytes(&self.shared, "sync.vote", "choice", &choice, MAX_VOTE_BYTES)
        {
            Err(WitSyncError::InvalidPayload(r.into_message()))
        } else {
            Ok(serde_json::Value::String(choice.clone()))
        };
        self.sync_call(SyncPointType::Decision, point, payload, choice.len())
            .await
    }

    async fn outcome(&mut self, point: String) -> Result<WitSyncOutcome, WitSyncError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            limits::ids(&shared, "sync.outcome", "point", [&point])
                .map_err(|r| WitSyncError::Invalid(r.into_message()))?;
            let handle = shared.sync.clone().ok_or(WitSyncError::NotCoordinated)?;
            match handle.engine.is_participant(&point, &handle.participant) {
                None => return Err(WitSyncError::UnknownPoint(point.clone())),
                Some(false) => {
                    return Err(WitSyncError::Invalid(format!(
                        "`{}` is not a participant of `{point}`",
                        handle.participant
                    )));
                }
                Some(true) => {}
            }
            shared
                .gate("sync", &point, "outcome")
                .map_err(WitSyncError::AccessDenied)?;
            match handle.engine.outcome_shared(&point) {
                None => Err(WitSyncError::Invalid(format!(
                    "`{point}` has not resolved yet; call it after the point's own call returns"
                ))),
                Some(Err(m)) => Err(WitSyncError::Failed(m)),
                Some(Ok(o)) => Ok(sync_outcome(o, None, &handle.participant)),
            }
        }
        .await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        shared.record_call("sync.outcome", &point, 0, start, outcome);
        r
    }

    async fn contribute(
        &mut self,
        point: String,
        value: String,
    ) -> Result<WitSyncOutcome, WitSyncError> {
        let payload = sync_payload(&self.shared, "sync.contribute", "value", &value);
        self.sync_call(SyncPointType::Aggregation, point, payload, value.len())
            .await
    }
}
