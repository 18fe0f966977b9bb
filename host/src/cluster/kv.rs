//! The KV buckets of a cluster.
//!
//! A bucket is a stream laid out the way the NATS KV clients expect (`KV_<bucket>`, subjects
//! `$KV.<bucket>.>`, rollups allowed, deletes through markers, direct gets, new messages
//! refused at the byte limit), created here directly and opened with `get_key_value`:
//! `async-nats`' `create_key_value` fails on NATS 2.9 (its account-info reply does not parse).
//!
//! | bucket | keys | history | entries live |
//! |---|---|---|---|
//! | [`HOSTS_BUCKET`] | host names | 1 | [`ClusterConfig::host_ttl`](super::ClusterConfig::host_ttl) without a refresh |
//! | [`CONTEXTS_BUCKET`](super::contexts::CONTEXTS_BUCKET) | `c.<context token>` | 1 | until replaced |

use super::{Cluster, ClusterError};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
use std::time::Duration;

/// Membership ([`membership`](super::membership)): one entry per live host.
pub const HOSTS_BUCKET: &str = "qi_hosts";

/// The largest membership entry, in bytes.
pub const MAX_HOST_ENTRY_BYTES: i32 = 4096;

/// The stream configuration of a KV bucket named `bucket`.
pub fn bucket_config(
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Duration,
    max_value_size: i32,
    max_bytes: i64,
) -> Config {
    Config {
        name: format!("KV_{bucket}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: history,
        max_bytes,
        max_age,
        max_message_size: max_value_size,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Creates the buckets that are missing.
pub(super) async fn ensure(cluster: &Cluster) -> Result<(), ClusterError> {
    let hosts = bucket_config(
        HOSTS_BUCKET,
        "qi-host: the live hosts of the cluster and their load",
        1,
        cluster.config().host_ttl,
        MAX_HOST_ENTRY_BYTES,
        64 << 20,
    );
    cluster
        .jetstream()
        .get_or_create_stream(hosts)
        .await
        .map_err(|e| ClusterError::Stream {
            stream: format!("KV_{HOSTS_BUCKET}"),
            message: e.to_string(),
        })?;
    super::contexts::ensure(cluster).await?;
    Ok(())
}

/// Opens the bucket `bucket`.
pub async fn open(cluster: &Cluster, bucket: &str) -> Result<Store, ClusterError> {
    cluster
        .jetstream()
        .get_key_value(bucket)
        .await
        .map_err(|e| ClusterError::Stream {
            stream: format!("KV_{bucket}"),
            message: e.to_string(),
        })
}
