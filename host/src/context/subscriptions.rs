//! Subscriptions to a context's events.

use super::*;

impl ContextService {
    /// Subscribes `agent` to the events of a context it can read, from now or resuming after a
    /// sequence number.
    pub async fn subscribe(
        &self,
        agent: &str,
        id: &str,
        from: SubscribeFrom,
    ) -> Result<Subscription, ContextError> {
        self.subscribe_to(agent, &[id.to_string()], Vec::new(), from)
            .await
    }

    /// Subscribes `agent` to the events (optionally of some types only) of contexts it can
    /// read. Each context is checked (a refusal is recorded); the subscription is registered so
    /// that unregistering or disconnecting the agent ends it.
    pub async fn subscribe_to(
        &self,
        agent: &str,
        ids: &[String],
        event_types: Vec<EventType>,
        from: SubscribeFrom,
    ) -> Result<Subscription, ContextError> {
        if ids.is_empty() {
            return Err(ContextError::invalid(
                "contextIds",
                "name at least one context",
            ));
        }
        for id in ids {
            self.authorize(agent, id, Permission::Read, "subscribe to")
                .await?;
        }
        let filter = EventFilter {
            context_ids: ids.to_vec(),
            event_types,
            ..EventFilter::default()
        };
        let sub = self.shared.bus.subscribe(filter.clone(), from)?;
        let (sub_id, agent_s) = (sub.id(), agent.to_string());
        let filter_text = serde_json::to_string(&filter).unwrap_or_default();
        let now = self.now_ms();
        let last = sub.last_seq();
        self.run(None, Box::new(move |_sh, inner, ctx| {
            ctx.tx()
                .execute(
                    "INSERT OR REPLACE INTO subscriptions (id, agent_id, filter, last_seq, created_at, active) VALUES (?1, ?2, ?3, ?4, ?5, 1)",
                    rusqlite::params![sub_id.to_string(), agent_s, filter_text, last as i64, now as i64],
                )
                .map_err(StoreError::from)?;
            inner.subscriptions.entry(agent_s).or_default().push(sub_id);
            Ok(())
        }))
        .await?;
        Ok(sub)
    }

    /// Ends a subscription made with [`subscribe_to`](Self::subscribe_to).
    pub async fn unsubscribe(
        &self,
        agent: &str,
        id: crate::events::SubscriptionId,
    ) -> Result<(), ContextError> {
        self.shared.bus.unsubscribe(id);
        let agent = agent.to_string();
        self.run(
            None,
            Box::new(move |_sh, inner, ctx| {
                ctx.tx()
                    .execute("DELETE FROM subscriptions WHERE id = ?1", [id.to_string()])
                    .map_err(StoreError::from)?;
                if let Some(v) = inner.subscriptions.get_mut(&agent) {
                    v.retain(|s| *s != id);
                }
                Ok(())
            }),
        )
        .await
    }
}
