//! Joining a cluster from the command line (`serve --nats`, `run --nats`).

use crate::cluster::{Cluster, ClusterConfig, ClusterError, Node, membership::LoadSource};
use crate::context::ContextService;
use crate::error::Error;

/// Connects to the NATS server at `url` and joins its cluster as `name` (default: the data
/// directory's host id), forwarding `context`'s events. Errors name `--nats` or
/// `--cluster-name`.
pub async fn join(
    context: &ContextService,
    url: &str,
    name: Option<&str>,
    load: LoadSource,
) -> Result<Node, Error> {
    let store = context.store();
    let name = name.unwrap_or(store.host_id());
    let config = ClusterConfig::new(url, name);
    let cluster = Cluster::connect(config, store.config().master_key.as_ref())
        .await
        .map_err(flag_error)?;
    Node::join(cluster, context, load).await.map_err(flag_error)
}

/// Leaves the cluster, giving the host's events up to `grace` to reach the stream; says on
/// stderr how many did not (they are forwarded at the next start on this data directory).
pub async fn leave(node: Node, grace: std::time::Duration, command: &str) {
    let left = node.leave(grace).await;
    if left > 0 {
        eprintln!(
            "qi-host {command}: {left} event(s) not yet on the cluster's stream; they are forwarded at the next start on this data directory"
        );
    }
}

fn flag_error(e: ClusterError) -> Error {
    match e {
        ClusterError::InvalidConfig {
            field: "host_name",
            message,
        } => Error::field("--cluster-name", message),
        ClusterError::InvalidConfig { message, .. } => Error::field("--nats", message),
        other => Error::field("--nats", other.to_string()),
    }
}
