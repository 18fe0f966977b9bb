//! The JetStream streams of a cluster (KV buckets are in [`kv`](super::kv)).
//!
//! | stream | subjects | retention |
//! |---|---|---|
//! | [`EVENTS_STREAM`] | `qi.events.>` | limits: [`ClusterConfig::events_max_bytes`](super::ClusterConfig::events_max_bytes), oldest dropped |

use super::{Cluster, ClusterError};
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

/// Every host's committed events ([`events`](super::events)).
pub const EVENTS_STREAM: &str = "QI_EVENTS";

/// The subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "qi.events.>";

/// The largest message qi-host puts on a stream, in bytes: 1 MiB, NATS's default
/// `max_payload` (an event whose payload is larger is forwarded without its data, marked
/// `dataOmitted`).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The stream configuration of [`EVENTS_STREAM`].
pub fn events_config(cluster: &Cluster) -> Config {
    Config {
        name: EVENTS_STREAM.into(),
        description: Some("qi-host: every host's committed events".into()),
        subjects: vec![EVENTS_SUBJECTS.into()],
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_bytes: cluster.config().events_max_bytes,
        max_message_size: MAX_MESSAGE_BYTES as i32,
        duplicate_window: cluster.config().duplicate_window,
        storage: StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// Creates the streams that are missing. An existing stream is left as it is (another host
/// or the operator made it); where its settings differ from qi-host's, each difference is
/// logged as a warning (a smaller `max_msg_size` or `max_msgs` changes what is kept, a
/// shorter duplicate window what a resend costs).
pub(super) async fn ensure(cluster: &Cluster) -> Result<(), ClusterError> {
    let wanted = events_config(cluster);
    let stream = cluster
        .jetstream()
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| ClusterError::Stream {
            stream: EVENTS_STREAM.into(),
            message: e.to_string(),
        })?;
    for difference in differences(&wanted, &stream.cached_info().config) {
        tracing::warn!(stream = EVENTS_STREAM, "{difference}");
    }
    Ok(())
}

/// How `found` differs from `wanted` in the settings qi-host relies on.
pub fn differences(wanted: &Config, found: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, w: String, f: String| {
        if w != f {
            out.push(format!(
                "the existing stream has {name} {f}, qi-host would make it {w}"
            ));
        }
    };
    check(
        "subjects",
        format!("{:?}", wanted.subjects),
        format!("{:?}", found.subjects),
    );
    check(
        "retention",
        format!("{:?}", wanted.retention),
        format!("{:?}", found.retention),
    );
    check(
        "discard",
        format!("{:?}", wanted.discard),
        format!("{:?}", found.discard),
    );
    check(
        "max_msg_size",
        wanted.max_message_size.to_string(),
        found.max_message_size.to_string(),
    );
    check(
        "max_msgs",
        wanted.max_messages.to_string(),
        found.max_messages.to_string(),
    );
    check(
        "duplicate_window",
        format!("{:?}", wanted.duplicate_window),
        format!("{:?}", found.duplicate_window),
    );
    out
}
