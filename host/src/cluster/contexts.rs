//! Shared contexts: the `qi_contexts` KV bucket holds every context's authoritative state
//! (one entry per context, [`ReplicatedContext`] as JSON, sealed under the master key when
//! there is one), and each host's [`ContextService`] stores its changes there with a
//! compare-and-set on the entry's revision (see [`crate::context::replica`]). A watch of
//! the bucket installs what the other hosts write into this host's copy.
//!
//! Keys are `c.<token>`: the context id's keyed hash with a master key
//! ([`Cluster::context_token`]), else its subject token with `~` written `=` (KV keys allow
//! `[-/_=.A-Za-z0-9]`), so the mapping stays one to one.
//!
//! A record is at most the server's `max_payload` (1 MiB by default, reported by the server
//! when the host connects) less [`HEADROOM`] bytes for headers; a change that would make a
//! larger one is refused before it is sent, naming the limit
//! ([`ContextError::Cluster`](crate::context::ContextError::Cluster)).

use super::{Cluster, ClusterError};
use crate::context::{ContextReplica, ContextService, ReplicatedContext, Replication, Stored};
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;

/// The bucket of shared contexts.
pub const CONTEXTS_BUCKET: &str = "qi_contexts";

/// Entries kept per context (the most NATS allows): a host that missed some installs them
/// in order from here, so its history has them.
pub const HISTORY: i64 = 64;

/// Most bytes the bucket holds (new entries are refused past it).
pub const CONTEXTS_BUCKET_BYTES: i64 = 8 << 30;

/// Bytes of a message kept for its headers when sizing records.
pub const HEADROOM: usize = 4096;

/// Said of a store that failed after it was sent: the server may have taken it.
const MAYBE: &str = "; nothing was committed on this host, but the bucket may still have taken the change (it then reaches this host through the bucket's watch, with its event): read the context before making the change again";

/// The bucket's stream settings.
pub fn bucket_config(max_value_size: i32) -> async_nats::jetstream::stream::Config {
    super::kv::bucket_config(
        CONTEXTS_BUCKET,
        "qi-host: the shared contexts of the cluster (one entry per context)",
        HISTORY,
        Duration::ZERO,
        max_value_size,
        CONTEXTS_BUCKET_BYTES,
    )
}

/// The key of context `id` in the bucket.
pub fn key(cluster: &Cluster, id: &str) -> String {
    format!("c.{}", cluster.context_token(id).replace('~', "="))
}

/// The bucket, as a [`ContextReplica`].
pub struct ContextBucket {
    cluster: Cluster,
    kv: Store,
}

impl ContextBucket {
    /// Opens the bucket (created with the cluster's streams).
    pub async fn open(cluster: &Cluster) -> Result<ContextBucket, ClusterError> {
        Ok(ContextBucket {
            kv: super::kv::open(cluster, CONTEXTS_BUCKET).await?,
            cluster: cluster.clone(),
        })
    }

    /// Largest record, in bytes (sealed).
    pub fn max_record_bytes(&self) -> usize {
        self.cluster
            .client()
            .server_info()
            .max_payload
            .saturating_sub(HEADROOM)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<ReplicatedContext, String> {
        let plain = self.cluster.open(key, bytes).map_err(|e| e.to_string())?;
        serde_json::from_slice(&plain)
            .map_err(|e| format!("the bucket's entry `{key}` does not decode: {e}"))
    }
}

impl ContextReplica for ContextBucket {
    fn fetch<'a>(
        &'a self,
        id: &'a str,
    ) -> crate::context::replica::ReplicaFuture<'a, Result<Option<(u64, ReplicatedContext)>, String>>
    {
        Box::pin(async move {
            let key = key(&self.cluster, id);
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| format!("reading `{key}` from bucket {CONTEXTS_BUCKET}: {e}"))?;
            match entry {
                Some(e) if e.operation == Operation::Put => {
                    Ok(Some((e.revision, self.decode(&key, &e.value)?)))
                }
                _ => Ok(None),
            }
        })
    }

    fn history<'a>(
        &'a self,
        id: &'a str,
    ) -> crate::context::replica::ReplicaFuture<'a, Result<Vec<(u64, ReplicatedContext)>, String>>
    {
        Box::pin(async move {
            let key = key(&self.cluster, id);
            let mut history = self
                .kv
                .history(key.clone())
                .await
                .map_err(|e| format!("reading the history of `{key}`: {e}"))?;
            let mut out = Vec::new();
            while let Some(entry) = history.next().await {
                let entry = entry.map_err(|e| format!("reading the history of `{key}`: {e}"))?;
                if entry.operation == Operation::Put
                    && let Ok(record) = self.decode(&key, &entry.value)
                {
                    out.push((entry.revision, record));
                }
                if entry.delta == 0 {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn store<'a>(
        &'a self,
        id: &'a str,
        expected: u64,
        holds: (u64, crate::context::Hlc),
        record: &'a ReplicatedContext,
    ) -> crate::context::replica::ReplicaFuture<'a, Result<Stored, String>> {
        Box::pin(async move {
            let key = key(&self.cluster, id);
            let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
            let sealed = self.cluster.seal(&key, json);
            let max = self.max_record_bytes();
            if sealed.len() > max {
                return Err(format!(
                    "its state would be {} bytes in the cluster's context bucket, which takes at most {max} (the NATS server's max_payload less {HEADROOM} bytes of headers): write less, split the data over several contexts, or raise max_payload in the server's configuration",
                    sealed.len()
                ));
            }
            let bytes = bytes::Bytes::from(sealed);
            if expected == 0 {
                match self.kv.create(&key, bytes).await {
                    Ok(revision) => Ok(Stored::At(revision)),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(Stored::Changed),
                    Err(e) => Err(format!(
                        "creating `{key}` in bucket {CONTEXTS_BUCKET}: {e}{MAYBE}"
                    )),
                }
            } else {
                // The entry at `expected` must be the state this host's copy is: revisions
                // of a bucket made again start over and may match an old one.
                let current =
                    self.kv.entry(key.clone()).await.map_err(|e| {
                        format!("reading `{key}` from bucket {CONTEXTS_BUCKET}: {e}")
                    })?;
                let same = current.is_some_and(|e| {
                    e.revision == expected
                        && e.operation == Operation::Put
                        && self
                            .decode(&key, &e.value)
                            .is_ok_and(|r| (r.version, r.hlc) == holds)
                });
                if !same {
                    return Ok(Stored::Changed);
                }
                match self.kv.update(&key, bytes, expected).await {
                    Ok(revision) => Ok(Stored::At(revision)),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(Stored::Changed),
                    Err(e) => Err(format!(
                        "updating `{key}` in bucket {CONTEXTS_BUCKET}: {e}{MAYBE}"
                    )),
                }
            }
        })
    }

    fn available(&self) -> bool {
        self.cluster.connected()
    }
}

/// A host's shared contexts: its service replicates through the bucket, and a watch
/// installs the other hosts' changes. Stopped when dropped.
pub struct ContextSync {
    watch: JoinHandle<()>,
    installed: tokio::sync::watch::Receiver<u64>,
}

impl ContextSync {
    /// Replicates `service` through the cluster's bucket and starts the watch. Returns once
    /// every entry present when it started is installed (so the host starts coherent).
    pub async fn start(
        cluster: &Cluster,
        service: &ContextService,
    ) -> Result<ContextSync, ClusterError> {
        let bucket = Arc::new(ContextBucket::open(cluster).await?);
        service.replicate(Replication {
            replica: bucket.clone(),
            handle: tokio::runtime::Handle::current(),
            timeout: cluster.config().request_timeout,
            host: cluster.host_name().to_string(),
        });
        let (tx, installed) = tokio::sync::watch::channel(0);
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let watch = tokio::spawn(watch_bucket(bucket, service.clone(), tx, ready_tx));
        // The bucket's entries as they were: the watch reports when it has seen them all.
        let _ = ready.await;
        Ok(ContextSync { watch, installed })
    }

    /// The highest bucket revision the watch has handled.
    pub fn installed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.installed.clone()
    }
}

impl Drop for ContextSync {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Watches every entry (from the latest of each), installing them; restarts after an
/// error from the revision it got to.
async fn watch_bucket(
    bucket: Arc<ContextBucket>,
    service: ContextService,
    installed: tokio::sync::watch::Sender<u64>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut from = 0u64;
    let mut created = bucket_created(&bucket).await;
    let mut check = tokio::time::interval(bucket.cluster.config().heartbeat);
    loop {
        // An empty bucket has nothing to deliver first.
        if ready.is_some() && from == 0 {
            match bucket.kv.status().await {
                Ok(s) if s.values() == 0 => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the cluster's context bucket; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let watch = if from == 0 {
            bucket.kv.watch_with_history(">").await
        } else {
            bucket.kv.watch_all_from_revision(from + 1).await
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the cluster's context bucket; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                _ = check.tick() => {
                    if remade(&bucket, &service, &mut created).await {
                        from = 0;
                        break;
                    }
                    continue;
                }
            };
            let Some(entry) = entry else { break };
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "the cluster's context watch failed; watching again");
                    break;
                }
            };
            if entry.operation == Operation::Put {
                match bucket.decode(&entry.key, &entry.value) {
                    // This host's own entries are its copy already (no writer round).
                    Ok(record)
                        if service
                            .kv_revision(&record.id)
                            .is_some_and(|r| r >= entry.revision) => {}
                    Ok(record) if key(&bucket.cluster, &record.id) == entry.key => {
                        if let Err(e) = service.install_replicated(entry.revision, record).await {
                            tracing::warn!(key = entry.key, error = %e, "cannot install a context written by another host");
                        }
                    }
                    Ok(record) => tracing::warn!(
                        key = entry.key,
                        context = record.id,
                        "the context bucket's entry holds another context's state; skipped"
                    ),
                    Err(e) => {
                        tracing::warn!(key = entry.key, error = %e, "skipped an entry of the context bucket")
                    }
                }
            }
            from = from.max(entry.revision);
            installed.send_replace(from);
            if entry.delta == 0
                && let Some(r) = ready.take()
            {
                let _ = r.send(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the bucket was made again since `created` (a server that lost its storage makes
/// it again, and its revisions start over: the copies' revisions mean nothing there), making
/// it when it is gone; then the copies' revisions are forgotten and `created` moves on.
async fn remade(
    bucket: &ContextBucket,
    service: &ContextService,
    created: &mut Option<String>,
) -> bool {
    let mut now = bucket_created(bucket).await;
    if now.is_none() && bucket.cluster.connected() {
        if let Err(e) = ensure(&bucket.cluster).await {
            tracing::warn!(error = %e, "cannot make the cluster's context bucket again");
        }
        now = bucket_created(bucket).await;
    }
    if created.is_none() {
        *created = now;
        return false;
    }
    if now.is_none() || now == *created {
        return false;
    }
    tracing::warn!(
        "the cluster's context bucket was made again (the NATS server lost its storage); contexts are stored in it again as they change"
    );
    if let Err(e) = service.forget_replica_revisions().await {
        tracing::warn!(error = %e, "cannot reset the contexts' bucket revisions");
    }
    *created = now;
    true
}

/// Creates the bucket when it is missing (its largest value: the server's `max_payload`).
pub(super) async fn ensure(cluster: &Cluster) -> Result<(), ClusterError> {
    let max_value = cluster
        .client()
        .server_info()
        .max_payload
        .min(i32::MAX as usize) as i32;
    cluster
        .jetstream()
        .get_or_create_stream(bucket_config(max_value))
        .await
        .map_err(|e| ClusterError::Stream {
            stream: format!("KV_{CONTEXTS_BUCKET}"),
            message: e.to_string(),
        })?;
    Ok(())
}

/// When the bucket's stream was made (`None` when it cannot be read now).
async fn bucket_created(bucket: &ContextBucket) -> Option<String> {
    let stream = bucket
        .cluster
        .jetstream()
        .get_stream(format!("KV_{CONTEXTS_BUCKET}"))
        .await
        .ok()?;
    let info = stream.get_info().await.ok()?;
    Some(info.created.to_string())
}
