//! `qi:agent/events`: subscriptions to the event bus and custom events.

use super::AgentState;
use super::context::{context_call, decided};
use super::limits::{self, MAX_EVENT_DATA_BYTES, MAX_SUBSCRIBE_CONTEXTS, MAX_SUBSCRIBE_TYPES};
use super::qi;
use crate::audit::AuditDecision;
use crate::context::{ContextError, Permission};
use crate::events::{EventError, EventType, NewEvent, SubscribeFrom, Subscription};
use crate::sandbox::AgentShared;
use crate::sandbox::gate::GateStamp;
use qi::agent::context::ContextError as WitContextError;
use qi::agent::events::{Event as WitEvent, EventError as WitEventError, Subscribed};
use std::collections::HashMap;
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};

/// Most subscriptions one agent may hold at once.
pub const MAX_SUBSCRIPTIONS_PER_AGENT: usize = 16;
/// Longest a single `events.next` waits, in milliseconds.
pub const MAX_NEXT_TIMEOUT_MS: u32 = 60_000;

/// A subscription of the agent and, per context, the gate decision that last allowed it.
pub(crate) struct Watched {
    sub: Subscription,
    allowed_by: HashMap<String, GateStamp>,
}

impl Watched {
    /// Whether the agent may still receive an event of context `context`: its share (checked
    /// at every delivery, so a revocation, an expiry or a trust drop ends it at once) and the
    /// access gate (decided again only when the policies, the agent's trust or the labels
    /// changed since the last decision). `Err` says why not.
    fn still_allowed(&mut self, shared: &AgentShared, context: Option<&str>) -> Result<(), String> {
        let Some(c) = context else {
            return Err("the event names no context".into());
        };
        let svc = shared
            .context
            .as_ref()
            .ok_or("this host has no context store attached")?;
        // A refusal by the sharing rules is audited as the gate audits its own.
        svc.allowed(&shared.id, c, Permission::Read).map_err(|e| {
            let why = format!("the agent may no longer read context `{c}`: {e}");
            match shared.record_decision("context", c, "read", AuditDecision::Deny, &why) {
                Ok(()) => why,
                Err(unrecorded) => format!("{why} ({unrecorded})"),
            }
        })?;
        if let Some(stamp) = GateStamp::now(shared)
            && self.allowed_by.get(c) != Some(&stamp)
        {
            shared
                .gate("events", c, "subscribe")
                .map_err(|why| format!("the policies no longer allow it: {why}"))?;
            self.allowed_by.insert(c.to_string(), stamp);
        }
        Ok(())
    }
}

/// Adds `qi:agent/events` to `linker`.
pub fn add_to_linker(linker: &mut Linker<AgentState>) -> wasmtime::Result<()> {
    qi::agent::events::add_to_linker::<AgentState, HasSelf<AgentState>>(linker, |s| s)
}

fn event_error(e: EventError) -> WitEventError {
    match e {
        EventError::HistoryCompacted { oldest, .. } => WitEventError::HistoryCompacted(oldest),
        other => WitEventError::Failed(other.to_string()),
    }
}

fn event_call_error(e: WitContextError) -> WitEventError {
    match e {
        WitContextError::AccessDenied(m) => WitEventError::AccessDenied(m),
        WitContextError::Invalid(m)
        | WitContextError::NotFound(m)
        | WitContextError::Refused(m) => WitEventError::Invalid(m),
        WitContextError::Stale(v) => WitEventError::Invalid(format!("stale version {v}")),
        WitContextError::Failed(m) => WitEventError::Failed(m),
    }
}

/// A context store error as the events interface reports it; a refusal by the sharing rules is
/// audited (see [`decided`]).
fn context_event_error(shared: &AgentShared, e: ContextError) -> WitEventError {
    match e {
        ContextError::Events(ev) => event_error(ev),
        other => event_call_error(decided(shared, other)),
    }
}

impl qi::agent::events::Host for AgentState {
    async fn subscribe(
        &mut self,
        context_ids: Vec<String>,
        event_types: Vec<String>,
        after_seq: Option<u64>,
    ) -> Result<Subscribed, WitEventError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "events.subscribe").await.map_err(event_call_error)?;
            let call = "events.subscribe";
            limits::items(&shared, call, "context-ids", &context_ids, MAX_SUBSCRIBE_CONTEXTS)
                .and_then(|()| limits::ids(&shared, call, "context-ids", &context_ids))
                .and_then(|()| limits::items(&shared, call, "event-types", &event_types, MAX_SUBSCRIBE_TYPES))
                .and_then(|()| limits::ids(&shared, call, "event-types", &event_types))
                // The subscription is a stored row (and a refusal an `access-violation` event).
                .and_then(|()| limits::stored(&shared, call, "context-ids", 0, 1))
                .map_err(|r| WitEventError::Invalid(r.into_message()))?;
            let stamp = GateStamp::now(&shared);
            for id in &context_ids {
                shared.gate("events", id, "subscribe").map_err(WitEventError::AccessDenied)?;
            }
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS_PER_AGENT {
                return Err(WitEventError::Invalid(format!("an agent may hold at most {MAX_SUBSCRIPTIONS_PER_AGENT} subscriptions; unsubscribe first")));
            }
            let mut types = Vec::new();
            for t in &event_types {
                types.push(t.parse::<EventType>().map_err(|e| WitEventError::Invalid(e.to_string()))?);
            }
            let from = after_seq.map_or(SubscribeFrom::Now, SubscribeFrom::AfterSeq);
            let sub = svc.subscribe_to(&me, &context_ids, types, from).await.map_err(|e| context_event_error(&shared, e))?;
            let handle = sub.id().0;
            let starts_after = sub.last_seq();
            let allowed_by = stamp
                .map(|s| context_ids.iter().map(|c| (c.clone(), s.clone())).collect())
                .unwrap_or_default();
            self.subscriptions.insert(handle, Watched { sub, allowed_by });
            Ok(Subscribed { handle, starts_after })
        }
        .await;
        self.shared.record_call(
            "events.subscribe",
            "",
            0,
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }

    async fn next(
        &mut self,
        subscription: u64,
        timeout_ms: u32,
    ) -> Result<Option<WitEvent>, WitEventError> {
        self.shared.count_host_call();
        let start = Instant::now();
        let watched = self
            .subscriptions
            .get_mut(&subscription)
            .ok_or(WitEventError::UnknownSubscription(subscription))?;
        let wait = std::time::Duration::from_millis(u64::from(timeout_ms.min(MAX_NEXT_TIMEOUT_MS)));
        let svc = self.shared.context.clone();
        let me = &self.shared.id;
        // Waiting for an event is being alive: a heartbeat now, presence while it waits (the
        // sweep leaves a present agent alone), and a heartbeat again before the delivery is
        // checked, so a passive subscriber is never found disconnected.
        let presence = svc.as_ref().map(|svc| svc.present(me));
        // The shared copy: converting it to the WIT record copies only what the guest gets.
        // Waiting with its own timeout: not a stall of a coordinated agent.
        let idle = self.shared.sync.as_ref().map(|h| h.enter_idle());
        let received = match tokio::time::timeout(wait, watched.sub.next_shared()).await {
            Ok(result) => result.map(Some),
            Err(_) => Ok(None),
        };
        drop(idle);
        drop(presence);
        if let (Some(svc), Ok(Some(_))) = (&svc, &received)
            && let Err(e) = svc.touch(me).await
        {
            tracing::warn!(agent = %me, error = %e, "heartbeat before a delivery");
        }
        let r = match received {
            // A change of shares or policies since the subscription was made ends it at the
            // next event the new rules deny. The check comes before the event counts as
            // delivered: it is given back, so the resume point stands before it.
            Ok(Some(e))
                if let Err(why) = watched.still_allowed(&self.shared, e.context_id.as_deref()) =>
            {
                watched.sub.put_back(e);
                let resume = watched.sub.last_seq();
                self.subscriptions.remove(&subscription);
                if let Some(svc) = &self.shared.context {
                    let _ = svc
                        .unsubscribe(&self.shared.id, crate::events::SubscriptionId(subscription))
                        .await;
                }
                Err(WitEventError::AccessDenied(format!(
                    "subscription {subscription} ended: {why}; nothing after seq {resume} was \
                     delivered (subscribe again with after-seq {resume} once access is restored)"
                )))
            }
            Ok(Some(e)) => Ok(Some(WitEvent {
                seq: e.seq,
                event_type: e.event_type.as_str().to_string(),
                context_id: e.context_id.clone(),
                agent_id: e.agent_id.clone(),
                timestamp_ms: e.timestamp_ms,
                priority: e.priority,
                data: e.data.to_string(),
            })),
            Ok(None) => Ok(None),
            Err(e) => {
                // The subscription is over (unsubscribed, compacted past it): the service
                // forgets it too, as for a refused delivery.
                self.subscriptions.remove(&subscription);
                if let Some(svc) = &self.shared.context {
                    let _ = svc
                        .unsubscribe(&self.shared.id, crate::events::SubscriptionId(subscription))
                        .await;
                }
                Err(event_error(e))
            }
        };
        self.shared.record_call(
            "events.next",
            "",
            0,
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }

    async fn unsubscribe(&mut self, subscription: u64) {
        self.shared.count_host_call();
        if self.subscriptions.remove(&subscription).is_some()
            && let Some(svc) = &self.shared.context
            && let Err(e) = svc
                .unsubscribe(&self.shared.id, crate::events::SubscriptionId(subscription))
                .await
        {
            tracing::warn!(agent = %self.shared.id, error = %e, "unsubscribing");
        }
        self.shared
            .record_call("events.unsubscribe", "", 0, Instant::now(), "ok");
    }

    async fn publish(
        &mut self,
        context_id: String,
        priority: u8,
        data: String,
    ) -> Result<u64, WitEventError> {
        let start = Instant::now();
        let shared = self.shared.clone();
        let r = async {
            let (svc, me) = context_call(&shared, "events.publish")
                .await
                .map_err(event_call_error)?;
            limits::ids(&shared, "events.publish", "context-id", [&context_id])
                .and_then(|()| {
                    limits::bytes(
                        &shared,
                        "events.publish",
                        "data",
                        &data,
                        MAX_EVENT_DATA_BYTES,
                    )
                })
                .and_then(|()| limits::stored(&shared, "events.publish", "data", data.len(), 1))
                .map_err(|r| WitEventError::Invalid(r.into_message()))?;
            shared
                .gate("events", &context_id, "publish")
                .map_err(WitEventError::AccessDenied)?;
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| WitEventError::Invalid(format!("data is not JSON: {e}")))?;
            svc.authorize(&me, &context_id, Permission::Write, "publish events about")
                .await
                .map_err(|e| context_event_error(&shared, e))?;
            let e = svc
                .bus()
                .publish(
                    NewEvent::new(EventType::Custom)
                        .context(&context_id)
                        .agent(&me)
                        .priority(priority)
                        .data(data),
                )
                .await
                .map_err(event_error)?;
            Ok(e.seq)
        }
        .await;
        self.shared.record_call(
            "events.publish",
            &context_id,
            data.len(),
            start,
            if r.is_ok() { "ok" } else { "error" },
        );
        r
    }
}
