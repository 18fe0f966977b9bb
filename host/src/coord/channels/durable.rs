//! Messages kept durably: one context document per `direct` or `message-queue` message, one
//! event per topic message.

use super::state::Msg;
use super::*;
use crate::events::{EventFilter, EventType, NewEvent};
use serde_json::{Value, json};

/// The context type of a stored message.
pub(super) const MESSAGE_TYPE: &str = "channel-message";

/// Where one run's messages live.
#[derive(Clone)]
pub(super) struct Durable {
    pub(super) context: ContextService,
    pub(super) run_id: String,
}

impl Durable {
    fn doc_id(&self, channel: &str, id: u64) -> String {
        format!("run/{}/channel/{channel}/{id}", self.run_id)
    }

    /// The context id a topic's events are about.
    pub(super) fn topic(&self, channel: &str) -> String {
        format!("run/{}/channel/{channel}", self.run_id)
    }

    /// Records `msg` in `state`: `held` keeps the body; `delivered`, `acked` and `dead` drop it
    /// (the history of the document keeps it).
    pub(super) async fn store(&self, channel: &str, msg: &Msg, state: &str) -> Result<(), String> {
        let id = self.doc_id(channel, msg.id);
        let mut doc = json!({
            "channel": channel,
            "id": msg.id,
            "sender": msg.sender,
            "to": msg.to,
            "deliveries": msg.deliveries,
            "state": state,
        });
        if state == "held" {
            doc["body"] = Value::String(msg.body.to_string());
        }
        self.context
            .put_as_operator(&id, MESSAGE_TYPE, doc)
            .await
            .map_err(|e| format!("storing message `{id}`: {e}"))
    }

    /// Publishes a topic message on the bus; returns once it is committed.
    pub(super) async fn publish(&self, channel: &str, msg: &Msg) -> Result<(), String> {
        let ev = NewEvent::new(EventType::Custom)
            .context(self.topic(channel))
            .data(json!({
                "kind": "channel-message",
                "channel": channel,
                "id": msg.id,
                "sender": msg.sender,
                "body": &*msg.body,
            }));
        self.context
            .bus()
            .publish(ev)
            .await
            .map(drop)
            .map_err(|e| format!("publishing on topic `{}`: {e}", self.topic(channel)))
    }

    /// The messages of `channel` a previous process stored: every held one (with its delivery
    /// count) and the highest id ever used.
    pub(super) async fn load(
        &self,
        channel: &str,
        kind: CommunicationProtocol,
        max_depth: u64,
    ) -> Result<(Vec<Msg>, u64), String> {
        let mut held = Vec::new();
        let mut last = 0;
        if kind == CommunicationProtocol::EventDriven {
            let filter = EventFilter {
                context_ids: vec![self.topic(channel)],
                event_types: vec![EventType::Custom],
                ..EventFilter::default()
            };
            // The newest `maxDepth` (a topic never holds more): reading "after 0" would be
            // refused once retention dropped any event of any context.
            let limit = usize::try_from(max_depth).unwrap_or(usize::MAX);
            let events = self
                .context
                .bus()
                .history(&filter, None, limit)
                .await
                .map_err(|e| format!("reading topic `{}`: {e}", self.topic(channel)))?;
            for e in events {
                // Only what the hub published (no agent): an agent may publish about a
                // context it owns, and must not pass for a producer.
                if e.agent_id.is_some() {
                    continue;
                }
                if let Some(m) = parse(&e.data, true) {
                    last = last.max(m.id);
                    held.push(m);
                }
            }
            return Ok((held, last));
        }
        let prefix = format!("run/{}/channel/{channel}/", self.run_id);
        for id in self.context.ids(OPERATOR, Some(MESSAGE_TYPE), None) {
            if !id.starts_with(&prefix) {
                continue;
            }
            let Ok(view) = self.context.get(OPERATOR, &id).await else {
                continue;
            };
            // Only the run's own records (agents cannot create under `run/`; this holds for a
            // store written before that rule, too).
            if view.owner != OPERATOR || view.context_type != MESSAGE_TYPE {
                tracing::warn!(context = %id, owner = %view.owner, "not a message the run stored; skipped");
                continue;
            }
            let Some(m) = parse(&view.doc, false) else {
                tracing::warn!(context = %id, "a stored channel message is unreadable; skipped");
                continue;
            };
            last = last.max(m.id);
            if view.doc.get("state").and_then(Value::as_str) == Some("held") {
                held.push(m);
            }
        }
        held.sort_by_key(|m| m.id);
        Ok((held, last))
    }
}

/// A message from its stored form (a document, or a topic event's data).
fn parse(doc: &Value, topic: bool) -> Option<Msg> {
    Some(Msg {
        id: doc.get("id")?.as_u64()?,
        sender: doc.get("sender")?.as_str()?.to_string(),
        to: if topic {
            None
        } else {
            doc.get("to").and_then(Value::as_str).map(str::to_string)
        },
        body: doc
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        deliveries: doc
            .get("deliveries")
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    })
}
