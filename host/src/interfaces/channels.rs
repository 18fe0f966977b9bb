//! `qi:agent/channels`: the communication channels of a coordinated run (see
//! [`crate::coord::channels`]).

use super::AgentState;
use super::limits;
use super::qi;
use crate::coord::channels::def::MAX_MESSAGE_BYTES;
use crate::coord::channels::{Caller, ChannelFailure, ChannelHub, MAX_RECEIVE_TIMEOUT_MS};
use crate::sandbox::AgentShared;
use qi::agent::channels::{ChannelError as WitChannelError, Message as WitMessage};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::component::{HasSelf, Linker};

/// Adds `qi:agent/channels` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::channels::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

fn channel_error(e: ChannelFailure) -> WitChannelError {
    match e {
        ChannelFailure::UnknownChannel(m) => WitChannelError::UnknownChannel(m),
        ChannelFailure::Invalid(m) => WitChannelError::Invalid(m),
        ChannelFailure::TooLarge(m) => WitChannelError::TooLarge(m),
        ChannelFailure::Full(m) => WitChannelError::Full(m),
        ChannelFailure::Closed(m) => WitChannelError::Closed(m),
        ChannelFailure::Failed(m) => WitChannelError::Failed(m),
    }
}

fn outcome_word(r: &Result<impl Sized, WitChannelError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(WitChannelError::NotCoordinated) => "not-coordinated",
        Err(WitChannelError::UnknownChannel(_)) => "unknown-channel",
        Err(WitChannelError::Invalid(_)) => "invalid",
        Err(WitChannelError::TooLarge(_)) => "too-large",
        Err(WitChannelError::Full(_)) => "full",
        Err(WitChannelError::Closed(_)) => "closed",
        Err(WitChannelError::AccessDenied(_)) => "access-denied",
        Err(WitChannelError::Failed(_)) => "failed",
    }
}

/// The run's hub and who the caller is, or `not-coordinated`; then the gate on `action`.
fn enter(
    shared: &AgentShared,
    channel: &str,
    action: &str,
) -> Result<(Arc<ChannelHub>, Caller), WitChannelError> {
    let handle = shared
        .sync
        .as_ref()
        .ok_or(WitChannelError::NotCoordinated)?;
    let hub = handle
        .channels
        .clone()
        .ok_or(WitChannelError::NotCoordinated)?;
    shared
        .gate("channel", channel, action)
        .map_err(WitChannelError::AccessDenied)?;
    Ok((
        hub,
        Caller {
            participant: handle.participant.clone(),
            attempt: handle.attempt,
        },
    ))
}

impl qi::agent::channels::Host for AgentState {
    async fn send(
        &mut self,
        channel: String,
        to: Option<String>,
        body: String,
    ) -> Result<u64, WitChannelError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            let call = "channels.send";
            limits::ids(&shared, call, "channel", [&channel])
                .and_then(|()| limits::ids(&shared, call, "to", to.iter()))
                .and_then(|()| {
                    limits::bytes(&shared, call, "body", &body, MAX_MESSAGE_BYTES as usize)
                })
                .map_err(|r| WitChannelError::Invalid(r.into_message()))?;
            let (hub, caller) = enter(&shared, &channel, "send")?;
            // A message is a stored row.
            limits::stored(&shared, call, "body", body.len(), 1)
                .map_err(|r| WitChannelError::Invalid(r.into_message()))?;
            let id = hub
                .send(&caller, &channel, to.as_deref(), &body)
                .await
                .map_err(channel_error)?;
            shared.counters.channel_sent.fetch_add(1, Ordering::Relaxed);
            Ok(id)
        }
        .await;
        shared.record_call(
            "channels.send",
            &channel,
            body.len(),
            start,
            outcome_word(&r),
        );
        r
    }

    async fn receive(
        &mut self,
        channel: String,
        timeout_ms: u32,
    ) -> Result<Option<WitMessage>, WitChannelError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            limits::ids(&shared, "channels.receive", "channel", [&channel])
                .map_err(|r| WitChannelError::Invalid(r.into_message()))?;
            let (hub, caller) = enter(&shared, &channel, "receive")?;
            let wait = Duration::from_millis(u64::from(timeout_ms.min(MAX_RECEIVE_TIMEOUT_MS)));
            // Waiting with its own timeout: not a stall.
            let idle = shared.sync.as_ref().map(|h| h.enter_idle());
            let got = hub.receive(&caller, &channel, wait).await;
            drop(idle);
            let got = got.map_err(channel_error)?;
            if got.is_some() {
                shared
                    .counters
                    .channel_received
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(got.map(|d| WitMessage {
                channel: d.channel,
                id: d.id,
                sender: d.sender,
                body: d.body.to_string(),
                delivery_count: d.delivery_count,
            }))
        }
        .await;
        shared.record_call("channels.receive", &channel, 0, start, outcome_word(&r));
        r
    }

    async fn ack(&mut self, channel: String, id: u64) -> Result<(), WitChannelError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        shared.count_host_call();
        let r = async {
            limits::ids(&shared, "channels.ack", "channel", [&channel])
                .map_err(|r| WitChannelError::Invalid(r.into_message()))?;
            let (hub, caller) = enter(&shared, &channel, "ack")?;
            hub.ack(&caller, &channel, id).await.map_err(channel_error)
        }
        .await;
        shared.record_call("channels.ack", &channel, 8, start, outcome_word(&r));
        r
    }
}
