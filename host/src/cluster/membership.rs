//! Which hosts are in the cluster, and their load.
//!
//! Each host keeps one entry in the [`HOSTS_BUCKET`](super::kv::HOSTS_BUCKET) bucket, keyed by
//! its name: a [`HostEntry`] (JSON, sealed like every cluster payload) rewritten every
//! [`ClusterConfig::heartbeat`](super::ClusterConfig::heartbeat). The bucket's `max_age`
//! ([`ClusterConfig::host_ttl`](super::ClusterConfig::host_ttl), set by the first host that
//! created it) drops the entry of a host that stopped refreshing it (killed, or cut off from
//! NATS); a host that stops cleanly deletes its own at once.

use super::{Cluster, ClusterError, kv};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// What a host is doing right now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostLoad {
    /// Agents running on the host now.
    pub running_agents: u64,
    /// Runs (manifests) the host is executing now.
    pub running_runs: u64,
}

/// One host's membership entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostEntry {
    /// The host's name in the cluster.
    pub host: String,
    /// Its operating-system process id.
    pub pid: u32,
    /// The qi-host version it runs.
    pub version: String,
    /// When it joined, unix milliseconds.
    pub started_ms: u64,
    /// When it last refreshed this entry, unix milliseconds (its own clock).
    pub seen_ms: u64,
    /// Its load at that moment.
    pub load: HostLoad,
    /// How far it has forwarded its events to the cluster (its local event seq).
    pub events_forwarded: u64,
}

/// Where a host reads its load from at each heartbeat.
pub type LoadSource = Arc<dyn Fn() -> HostLoad + Send + Sync>;

/// This host's membership: refreshes its entry until [`leave`](Membership::leave) or drop.
pub struct Membership {
    task: tokio::task::JoinHandle<()>,
    cluster: Cluster,
}

impl Membership {
    /// Writes this host's entry now (so it is listed when this returns), then refreshes it
    /// every heartbeat in the background. `forwarded` is the event forwarder's progress
    /// ([`EventForwarder::status`](super::EventForwarder::status)), if one runs. A failed
    /// refresh (NATS down) is logged and tried again at the next heartbeat.
    pub async fn join(
        cluster: &Cluster,
        load: LoadSource,
        forwarded: Option<watch::Receiver<super::ForwarderStatus>>,
    ) -> Result<Membership, ClusterError> {
        let bucket = kv::open(cluster, kv::HOSTS_BUCKET).await?;
        let started_ms = super::now_ms();
        let entry = {
            let cluster = cluster.clone();
            move || HostEntry {
                host: cluster.host_name().to_string(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_ms,
                seen_ms: super::now_ms(),
                load: load(),
                events_forwarded: forwarded.as_ref().map_or(0, |f| f.borrow().forwarded),
            }
        };
        put(cluster, &bucket, &entry()).await?;
        let task = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(cluster.config().heartbeat);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = put(&cluster, &bucket, &entry()).await {
                        tracing::warn!(error = %e, "cluster heartbeat failed; trying again at the next one");
                    }
                }
            })
        };
        Ok(Membership {
            task,
            cluster: cluster.clone(),
        })
    }

    /// Stops the heartbeats and deletes this host's entry, so it leaves the list at once.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.task.abort();
        let bucket = kv::open(&self.cluster, kv::HOSTS_BUCKET).await?;
        bucket
            .purge(self.cluster.host_name())
            .await
            .map_err(|e| ClusterError::nats("membership leave", e))
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn put(
    cluster: &Cluster,
    bucket: &async_nats::jetstream::kv::Store,
    entry: &HostEntry,
) -> Result<(), ClusterError> {
    let key = cluster.host_name();
    let json = serde_json::to_vec(entry).expect("a host entry serializes");
    let payload = cluster.seal(&entry_subject(key), json);
    bucket
        .put(key, payload.into())
        .await
        .map_err(|e| ClusterError::nats("membership heartbeat", e))?;
    Ok(())
}

fn entry_subject(host: &str) -> String {
    format!("$KV.{}.{host}", kv::HOSTS_BUCKET)
}

/// The live hosts of the cluster (entries not yet expired), sorted by name. An entry that
/// cannot be read (another master key, not written by qi-host) is skipped with a warning.
pub async fn hosts(cluster: &Cluster) -> Result<Vec<HostEntry>, ClusterError> {
    let bucket = kv::open(cluster, kv::HOSTS_BUCKET).await?;
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| ClusterError::nats("membership list", e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| ClusterError::nats("membership list", e))?);
    }
    let mut out = Vec::new();
    for name in names {
        let Some(value) = bucket
            .get(&name)
            .await
            .map_err(|e| ClusterError::nats("membership read", e))?
        else {
            continue;
        };
        let opened = cluster
            .open(&entry_subject(&name), &value)
            .and_then(|json| {
                serde_json::from_slice::<HostEntry>(&json).map_err(|e| ClusterError::Decode {
                    subject: entry_subject(&name),
                    message: e.to_string(),
                })
            });
        match opened {
            Ok(entry) => out.push(entry),
            Err(e) => tracing::warn!(error = %e, "skipping a membership entry"),
        }
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
