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
    /// The host's name in the cluster (its key in the bucket).
    pub host: String,
    /// Its data-directory id (`Store::host_id`): tells a restarted host (same id) from
    /// another host given the same name.
    pub instance: String,
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
    listed: watch::Receiver<bool>,
}

impl Membership {
    /// Writes this host's entry now (so it is listed when this returns), then refreshes it
    /// every heartbeat in the background. `forwarded` is the event forwarder's progress
    /// ([`EventForwarder::status`](super::EventForwarder::status)), if one runs. A failed
    /// refresh (NATS down) is logged and tried again at the next heartbeat.
    ///
    /// A name is one host's: joining under the name of a live host with another `instance`
    /// fails with [`ClusterError::NameTaken`] (the same instance, a restart, takes its entry
    /// over).
    pub async fn join(
        cluster: &Cluster,
        instance: &str,
        load: LoadSource,
        forwarded: Option<watch::Receiver<super::ForwarderStatus>>,
    ) -> Result<Membership, ClusterError> {
        let bucket = kv::open(cluster, kv::HOSTS_BUCKET).await?;
        let name = cluster.host_name();
        // The entry this host replaces, by revision: the first write is a compare-and-set,
        // so of two hosts joining under one name at once, one gets NameTaken.
        let current = bucket
            .entry(name)
            .await
            .map_err(|e| ClusterError::nats("membership read", e))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
        if let Some(current) = &current
            && let Ok(other) = decode(cluster, name, &current.value)
            && other.instance != instance
            && live(cluster, &other, super::now_ms())
        {
            return Err(ClusterError::NameTaken {
                host: name.to_string(),
                pid: other.pid,
                seen_ms_ago: super::now_ms().saturating_sub(other.seen_ms),
            });
        }
        let started_ms = super::now_ms();
        let entry = {
            let cluster = cluster.clone();
            let instance = instance.to_string();
            move || HostEntry {
                host: cluster.host_name().to_string(),
                instance: instance.clone(),
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                started_ms,
                seen_ms: super::now_ms(),
                load: load(),
                events_forwarded: forwarded.as_ref().map_or(0, |f| f.borrow().forwarded),
            }
        };
        let first = seal_entry(cluster, &entry());
        let claimed = match &current {
            None => bucket
                .create(name, first.into())
                .await
                .map_err(|e| e.to_string()),
            Some(c) => bucket
                .update(name, first.into(), c.revision)
                .await
                .map_err(|e| e.to_string()),
        };
        let mut revision = match claimed {
            Ok(r) => r,
            Err(e) => {
                // Someone wrote the entry since it was read: another host took the name.
                tracing::debug!(error = %e, "membership claim lost");
                return Err(ClusterError::NameTaken {
                    host: name.to_string(),
                    pid: 0,
                    seen_ms_ago: 0,
                });
            }
        };
        let mine = instance.to_string();
        let (listed_tx, listed) = watch::channel(true);
        let task = {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(cluster.config().heartbeat);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match heartbeat(&cluster, &bucket, &entry(), revision, &mine).await {
                        Beat::Written(r) => revision = r,
                        Beat::Failed(e) => {
                            tracing::warn!(error = %e, "cluster heartbeat failed; trying again at the next one");
                            // The server may have lost the bucket (restarted without its
                            // storage).
                            if let Err(e) = kv::ensure(&cluster).await {
                                tracing::debug!(error = %e, "cannot recreate the membership bucket yet");
                            }
                        }
                        Beat::Lost(other) => {
                            tracing::error!(
                                host = cluster.host_name(),
                                other_pid = other.pid,
                                "another host took this host's cluster name while its entry had expired (a partition or a pause longer than the TTL); this host leaves the membership list"
                            );
                            listed_tx.send_replace(false);
                            return;
                        }
                    }
                }
            })
        };
        Ok(Membership {
            task,
            cluster: cluster.clone(),
            listed,
        })
    }

    /// `true` while this host holds its entry; `false` once another host (another instance)
    /// took the name while this one's entry had expired, after which this host no longer
    /// heartbeats.
    pub fn listed(&self) -> watch::Receiver<bool> {
        self.listed.clone()
    }

    /// Stops the heartbeats and deletes this host's entry, so it leaves the list at once.
    /// A host that lost its name ([`listed`](Self::listed) is `false`) deletes nothing: the
    /// entry is the other host's.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.task.abort();
        if !*self.listed.borrow() {
            return Ok(());
        }
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

/// How one heartbeat ended.
enum Beat {
    /// Written; the entry's new revision.
    Written(u64),
    /// Not written (NATS unreachable, the bucket gone): try again at the next one.
    Failed(String),
    /// Another instance holds the name now.
    Lost(HostEntry),
}

/// Rewrites this host's entry, by compare-and-set on `revision` (the entry's revision as this
/// host last wrote it). When someone else wrote it since: if it is this instance (a second
/// `join` of the same data directory), or the entry is gone (expired, or the bucket was made
/// again), this host writes it again; if it is another instance, the name is lost.
async fn heartbeat(
    cluster: &Cluster,
    bucket: &async_nats::jetstream::kv::Store,
    entry: &HostEntry,
    revision: u64,
    instance: &str,
) -> Beat {
    let key = cluster.host_name();
    let payload = bytes::Bytes::from(seal_entry(cluster, entry));
    match bucket.update(key, payload.clone(), revision).await {
        Ok(r) => return Beat::Written(r),
        Err(e) if e.kind() != async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
            return Beat::Failed(e.to_string());
        }
        Err(_) => {}
    }
    let current = match bucket.entry(key).await {
        Ok(c) => c.filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put),
        Err(e) => return Beat::Failed(e.to_string()),
    };
    match current {
        None => match bucket.create(key, payload).await {
            Ok(r) => Beat::Written(r),
            Err(e) => Beat::Failed(e.to_string()),
        },
        Some(c) => match decode(cluster, key, &c.value) {
            Ok(other) if other.instance != instance => Beat::Lost(other),
            _ => match bucket.update(key, payload, c.revision).await {
                Ok(r) => Beat::Written(r),
                Err(e) => Beat::Failed(e.to_string()),
            },
        },
    }
}

fn seal_entry(cluster: &Cluster, entry: &HostEntry) -> Vec<u8> {
    let json = serde_json::to_vec(entry).expect("a host entry serializes");
    cluster.seal(&entry_subject(&entry.host), json)
}

fn entry_subject(host: &str) -> String {
    format!("$KV.{}.{host}", kv::HOSTS_BUCKET)
}

/// Reads the entry stored under `key`.
fn decode(cluster: &Cluster, key: &str, value: &[u8]) -> Result<HostEntry, ClusterError> {
    let subject = entry_subject(key);
    let json = cluster.open(&subject, value)?;
    let entry: HostEntry = serde_json::from_slice(&json).map_err(|e| ClusterError::Decode {
        subject: subject.clone(),
        message: e.to_string(),
    })?;
    let printable = |s: &str| s.len() <= 64 && !s.chars().any(char::is_control);
    if entry.host != key || !printable(&entry.version) || !printable(&entry.instance) {
        return Err(ClusterError::Decode {
            subject,
            message: "the entry is not for its key, or has unprintable fields".into(),
        });
    }
    Ok(entry)
}

/// Whether `entry` was refreshed within the host TTL (by the reader's clock).
fn live(cluster: &Cluster, entry: &HostEntry, now_ms: u64) -> bool {
    let ttl = cluster.config().host_ttl.as_millis() as u64;
    entry.seen_ms.saturating_add(ttl) >= now_ms
}

/// The live hosts of the cluster, sorted by name: entries refreshed within
/// [`ClusterConfig::host_ttl`](super::ClusterConfig::host_ttl) by this reader's clock (the
/// bucket's own expiry removes them too, unless someone made the bucket without it). An entry
/// that cannot be read (another master key, not written by qi-host, a key that is not a host
/// name, a name that is not its key, unprintable fields) is skipped with a warning.
pub async fn hosts(cluster: &Cluster) -> Result<Vec<HostEntry>, ClusterError> {
    let bucket = kv::open(cluster, kv::HOSTS_BUCKET).await?;
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| ClusterError::nats("membership list", e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| ClusterError::nats("membership list", e))?;
        if super::subject::is_name(&key) {
            names.push(key);
        } else {
            tracing::warn!(key, "skipping a membership key that is not a host name");
        }
        if names.len() > MAX_HOSTS {
            break;
        }
    }
    let now = super::now_ms();
    let mut out = Vec::new();
    for name in names.into_iter().take(MAX_HOSTS) {
        let Ok(Some(value)) = bucket.get(&name).await else {
            continue;
        };
        match decode(cluster, &name, &value) {
            Ok(entry) if live(cluster, &entry, now) => out.push(entry),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping a membership entry"),
        }
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}

/// The most entries [`hosts`] reads.
pub const MAX_HOSTS: usize = 10_000;
