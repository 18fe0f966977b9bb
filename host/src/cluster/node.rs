//! A host's part in its cluster: its event forwarder and its membership, started and
//! stopped together (what `qi-host serve --nats` runs).

use super::{
    Cluster, ClusterError, ContextSync, EventForwarder, Membership, membership::LoadSource,
};
use crate::context::ContextService;
use crate::events::EventBus;
use std::time::Duration;

/// A host that has joined a cluster.
pub struct Node {
    cluster: Cluster,
    bus: EventBus,
    forwarder: EventForwarder,
    membership: Membership,
    contexts: ContextSync,
}

impl Node {
    /// Replicates `context`'s contexts through the cluster's bucket (installing what is
    /// there first), starts forwarding its events and joins the membership list (listed
    /// when this returns).
    pub async fn join(
        cluster: Cluster,
        context: &ContextService,
        load: LoadSource,
    ) -> Result<Node, ClusterError> {
        let bus = context.bus().clone();
        let contexts = ContextSync::start(&cluster, context).await?;
        let forwarder = EventForwarder::start(&cluster, &bus).await?;
        let instance = bus.store().host_id().to_string();
        let membership =
            Membership::join(&cluster, &instance, load, Some(forwarder.status())).await?;
        Ok(Node {
            cluster,
            bus,
            forwarder,
            membership,
            contexts,
        })
    }

    /// The cluster connection.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The shared contexts (the watch's progress).
    pub fn contexts(&self) -> &ContextSync {
        &self.contexts
    }

    /// The forwarder (its progress).
    pub fn forwarder(&self) -> &EventForwarder {
        &self.forwarder
    }

    /// Leaves: waits up to `grace` for the events committed so far to be acknowledged by
    /// the server (what is left is forwarded when the host starts again), then deletes this
    /// host's membership entry. Returns how many events were left unforwarded.
    pub async fn leave(self, grace: Duration) -> u64 {
        let last = self.bus.last_seq();
        let _ = tokio::time::timeout(grace, self.forwarder.wait_forwarded(last)).await;
        let forwarded = self.forwarder.status().borrow().forwarded;
        // Writes the cursor where forwarding got (the coalescing writer may be behind).
        self.forwarder.stop().await;
        if let Err(e) = self.membership.leave().await {
            tracing::warn!(error = %e, "cannot delete this host's membership entry; it expires on its own");
        }
        last.saturating_sub(forwarded)
    }
}
