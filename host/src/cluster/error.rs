//! What can go wrong in cluster mode.

/// A cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A setting of [`ClusterConfig`](super::ClusterConfig) is out of range.
    #[error("cluster setting `{field}` {message}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The NATS server could not be reached (the URL is wrong, or no server listens there).
    #[error(
        "cannot connect to the NATS server at {url}: {message} (start one with `nats-server -js`, or check --nats)"
    )]
    Connect {
        /// The URL as given.
        url: String,
        /// The client's error.
        message: String,
    },
    /// The server answered, but JetStream is not enabled on it.
    #[error(
        "the NATS server at {url} has no JetStream ({message}): start it with `nats-server -js` (or `jetstream {{}}` in its config)"
    )]
    NoJetStream {
        /// The URL as given.
        url: String,
        /// The server's answer.
        message: String,
    },
    /// A stream or bucket qi-host needs could not be created or opened.
    #[error("JetStream stream `{stream}`: {message}")]
    Stream {
        /// The stream's name.
        stream: String,
        /// What the server or client said.
        message: String,
    },
    /// A NATS request (publish, KV read or write, consumer) failed.
    #[error("NATS {op} failed: {message}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// What the client said.
        message: String,
    },
    /// Another live host already uses this name in the cluster.
    #[error(
        "a host named `{host}` is already in the cluster (pid {pid}, seen {seen_ms_ago} ms ago): give this one another --cluster-name, or stop that one"
    )]
    NameTaken {
        /// The name.
        host: String,
        /// The other host's process id.
        pid: u32,
        /// How long ago it last refreshed its entry.
        seen_ms_ago: u64,
    },
    /// A subscription asked to resume after events the stream no longer holds.
    #[error(
        "the cluster's events stream no longer holds stream sequence {requested} (its oldest is {oldest}): resume from {oldest}, or raise events_max_bytes"
    )]
    Compacted {
        /// The first stream sequence the subscriber needed.
        requested: u64,
        /// The oldest the stream holds.
        oldest: u64,
    },
    /// A message on a qi-host subject could not be read: not written by qi-host, sealed
    /// under another master key, or modified.
    #[error("a message on `{subject}` cannot be read: {message}")]
    Decode {
        /// The message's subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The local event bus failed.
    #[error(transparent)]
    Events(#[from] crate::events::EventError),
}

impl ClusterError {
    pub(crate) fn nats(op: &'static str, e: impl std::fmt::Display) -> ClusterError {
        ClusterError::Nats {
            op,
            message: e.to_string(),
        }
    }
}
