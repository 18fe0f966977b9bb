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
    /// read. Each context is checked (a refusal is recorded); the subscription is registered (in
    /// memory) so that unregistering or disconnecting the agent ends it.
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
        // Held in memory only: a subscription lives as long as its agent (agent ids never
        // repeat across host processes), and a subscriber resumes after a restart from the
        // seq it last handled, which it holds (`SubscribeFrom::AfterSeq`).
        self.shared
            .runtime()
            .subscriptions
            .entry(agent.to_string())
            .or_default()
            .push(sub.id());
        Ok(sub)
    }

    /// Ends a subscription made with [`subscribe_to`](Self::subscribe_to).
    pub async fn unsubscribe(
        &self,
        agent: &str,
        id: crate::events::SubscriptionId,
    ) -> Result<(), ContextError> {
        self.shared.bus.unsubscribe(id);
        if let Some(v) = self.shared.runtime().subscriptions.get_mut(agent) {
            v.retain(|s| *s != id);
        }
        Ok(())
    }
}
