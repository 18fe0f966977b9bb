//! Cluster mode: several qi-host processes that point at the same NATS server (with
//! JetStream) form one cluster, the way wasmCloud's lattice does.
//!
//! What this module holds today:
//!
//! - [`Cluster::connect`]: one NATS connection per host (reconnecting forever, with the
//!   client's backoff), and the JetStream streams and KV buckets qi-host uses, created when
//!   missing ([`streams`], [`kv`]).
//! - **Membership** ([`membership`]): each host keeps an entry in the `qi_hosts` bucket
//!   with its name, process and load, refreshed every [`ClusterConfig::heartbeat`]; an entry
//!   not refreshed for [`ClusterConfig::host_ttl`] expires, so `qi-host status --nats URL`
//!   lists the live hosts.
//! - **Shared events** ([`events`], [`forward`], [`subscription`]): every event a host
//!   commits to its own SQLite record is forwarded to the `QI_EVENTS` stream, on
//!   `qi.events.ctx.<context>` (or `qi.events.host.<host>` for events about no context),
//!   acknowledged by the server before the host's forwarding cursor moves. A
//!   [`ClusterSubscription`] on any host reads that stream gap-free and in order, and resumes
//!   after a stream sequence.
//!
//! - **Shared contexts** ([`contexts`]): every context's state is an entry of the
//!   `qi_contexts` KV bucket, changed by compare-and-set on its revision, so `strong` holds
//!   across hosts; a watch keeps each host's hot tier coherent (see
//!   [`crate::context::replica`]).
//!
//! SQLite stays each host's durable record: an event is committed locally first and then
//! forwarded from there (an outbox), so losing NATS pauses forwarding and loses nothing; the
//! host's cursor (`meta.cluster.events.forwarded`) says how far it got. Each message carries
//! `Nats-Msg-Id: <instance>:<seq>:<digest>` (see [`forward::message_id`]), so a
//! resend after a crash or a lost acknowledgement is dropped by the server's duplicate window
//! ([`ClusterConfig::duplicate_window`]), and past it by subscribers.
//!
//! **Encryption.** When the data directory has a master key, every payload qi-host puts on
//! NATS is sealed (XChaCha20-Poly1305) under a key derived from it (`qi-host cluster v1`),
//! with the subject as associated data, and context ids in subjects are replaced by keyed
//! hashes ([`Cluster::context_token`]): NATS sees neither values nor context ids (it does see
//! host names, the data directories' random instance ids, sizes and timing). A message moved
//! to another subject fails to open. Hosts of one cluster therefore need the same master key.
//!
//! Streams are created the way the NATS KV clients lay them out (`KV_<bucket>` with subjects
//! `$KV.<bucket>.>`), directly, because `async-nats`' `create_key_value` fails on NATS
//! 2.9 (its account-info reply does not parse); `get_key_value` then opens them.

pub mod contexts;
pub mod error;
pub mod events;
pub mod forward;
pub mod kv;
pub mod membership;
pub mod node;
pub mod streams;
pub mod subject;
pub mod subscription;
#[cfg(test)]
mod tests;

pub use contexts::{ContextBucket, ContextSync};
pub use error::ClusterError;
pub use events::ClusterEvent;
pub use forward::{EventForwarder, ForwarderStatus};
pub use membership::{HostEntry, HostLoad, Membership};
pub use node::Node;
pub use subscription::{ClusterSubscription, StartAt};

use async_nats::jetstream;
use std::time::Duration;

/// How a host joins a cluster. Built with [`ClusterConfig::new`]; every duration is bounded
/// and checked by [`Cluster::connect`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222` (several, comma-separated, for a
    /// NATS cluster).
    pub url: String,
    /// This host's name in the cluster. Default: the data directory's host id
    /// (`Store::host_id`). 1 to 64 characters from `[A-Za-z0-9_-]`.
    pub host_name: String,
    /// How often a host refreshes its membership entry. Default 2 s; from 100 ms to 60 s.
    pub heartbeat: Duration,
    /// How long a membership entry lives without a refresh. Default 10 s; at least two
    /// heartbeats (so one late heartbeat does not drop a host) and at most 10 min.
    pub host_ttl: Duration,
    /// How long the server remembers a message id to drop a resend. Default 2 min (NATS's
    /// default); from 1 s to 1 h.
    pub duplicate_window: Duration,
    /// How many bytes of events the `QI_EVENTS` stream keeps (oldest dropped past it).
    /// Default 1 GiB; from 1 MiB to 1 TiB.
    pub events_max_bytes: i64,
    /// How long a NATS request (a publish's acknowledgement, a KV operation) may take before
    /// it fails and is retried. Default 5 s; from 100 ms to 60 s.
    pub request_timeout: Duration,
}

impl ClusterConfig {
    /// The defaults above for the server at `url` and the host `host_name`.
    pub fn new(url: impl Into<String>, host_name: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            url: url.into(),
            host_name: host_name.into(),
            heartbeat: Duration::from_secs(2),
            host_ttl: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(120),
            events_max_bytes: 1 << 30,
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Checks every setting against its bounds; the error names the setting.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let bad = |field, message: String| Err(ClusterError::InvalidConfig { field, message });
        if self.url.trim().is_empty() {
            return bad(
                "url",
                "is empty: give the NATS server, e.g. nats://127.0.0.1:4222".into(),
            );
        }
        if !subject::is_name(&self.host_name) {
            return bad(
                "host_name",
                format!(
                    "is {:?}: use 1 to {} characters from A-Z, a-z, 0-9, `_` and `-`",
                    self.host_name,
                    subject::MAX_NAME
                ),
            );
        }
        let within = |field, d: Duration, lo: Duration, hi: Duration| {
            if d < lo || d > hi {
                bad(field, format!("is {d:?}; must be from {lo:?} to {hi:?}"))
            } else {
                Ok(())
            }
        };
        within(
            "heartbeat",
            self.heartbeat,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        within(
            "host_ttl",
            self.host_ttl,
            self.heartbeat * 2,
            Duration::from_secs(600),
        )?;
        within(
            "duplicate_window",
            self.duplicate_window,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        within(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        )?;
        if !((1 << 20)..=(1 << 40)).contains(&self.events_max_bytes) {
            return bad(
                "events_max_bytes",
                format!("is {}; must be from 1 MiB to 1 TiB", self.events_max_bytes),
            );
        }
        Ok(())
    }
}

/// A host's connection to its cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    config: ClusterConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The key cluster payloads are sealed under (`None`: no master key, plaintext).
    seal: Option<std::sync::Arc<zeroize::Zeroizing<[u8; 32]>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.config.url)
            .field("host", &self.config.host_name)
            .field("sealed", &self.seal.is_some())
            .finish()
    }
}

impl Cluster {
    /// Connects to the NATS server of `config` and creates, when missing, the streams and
    /// buckets of [`streams`] and [`kv`]. `master_key` is the data directory's
    /// (`StoreConfig::master_key`): with one, payloads are sealed (see the module docs).
    ///
    /// The first connection must succeed (errors: [`ClusterError::Connect`],
    /// [`ClusterError::NoJetStream`], [`ClusterError::Stream`]); after it, a lost
    /// connection is retried forever in the background and cluster work waits for it.
    pub async fn connect(
        config: ClusterConfig,
        master_key: Option<&crate::store::crypto::MasterKey>,
    ) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("qi-host {}", config.host_name))
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            .max_reconnects(None)
            .connect(config.url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        // The account's JetStream info, read raw: `Context::query_account` fails to parse
        // NATS 2.9's reply. No responder, or an error reply, means no JetStream.
        let no_js = |message: String| ClusterError::NoJetStream {
            url: config.url.clone(),
            message,
        };
        let reply = client
            .request("$JS.API.INFO", bytes::Bytes::new())
            .await
            .map_err(|e| no_js(e.to_string()))?;
        let info: serde_json::Value =
            serde_json::from_slice(&reply.payload).map_err(|e| no_js(e.to_string()))?;
        if let Some(error) = info.get("error") {
            return Err(no_js(error.to_string()));
        }
        let cluster = Cluster {
            seal: master_key.map(|k| std::sync::Arc::new(k.derive(b"qi-host cluster v1"))),
            config,
            client,
            js,
        };
        streams::ensure(&cluster).await?;
        kv::ensure(&cluster).await?;
        Ok(cluster)
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// This host's name in the cluster.
    pub fn host_name(&self) -> &str {
        &self.config.host_name
    }

    /// The NATS client (shared by everything of this host).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Whether the NATS connection is up right now.
    pub fn connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// The subject token of context `context`: with a master key, the first 32 hex digits of
    /// `HMAC-SHA-256(cluster key, "context|" + id)`, so NATS never sees context ids (hosts
    /// holding the key compute the same token, which is what per-context subscriptions
    /// filter on); without one, [`subject::token`] (readable, one to one).
    pub fn context_token(&self, context: &str) -> String {
        match &self.seal {
            Some(key) => {
                use hmac::Mac;
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key[..])
                    .expect("HMAC-SHA-256 takes a key of any length");
                mac.update(b"context|");
                mac.update(context.as_bytes());
                hex::encode(&mac.finalize().into_bytes()[..16])
            }
            None => subject::token(context),
        }
    }

    /// Seals `plaintext` for `subject` (unchanged without a master key).
    pub(crate) fn seal(&self, subject: &str, plaintext: Vec<u8>) -> Vec<u8> {
        match &self.seal {
            Some(key) => crate::store::crypto::seal_with(
                key,
                &crate::store::crypto::aad("cluster", subject, 0, "payload"),
                0,
                &plaintext,
            ),
            None => plaintext,
        }
    }

    /// Opens what [`seal`](Self::seal) made for `subject`.
    pub(crate) fn open(&self, subject: &str, bytes: &[u8]) -> Result<Vec<u8>, ClusterError> {
        let decode = |message: &str| ClusterError::Decode {
            subject: subject.to_string(),
            message: message.to_string(),
        };
        let sealed = crate::store::crypto::sealed_version(bytes).is_some();
        match (&self.seal, sealed) {
            (Some(key), true) => crate::store::crypto::open_with(
                key,
                &crate::store::crypto::aad("cluster", subject, 0, "payload"),
                bytes,
            )
            .map_err(|()| {
                decode("it fails authentication (sealed under another master key, moved from another subject, or modified)")
            }),
            (Some(_), false) => Err(decode(
                "it is not sealed, but this host has a master key: every host of a cluster needs the same master key",
            )),
            (None, true) => Err(decode(
                "it is sealed, but this host has no master key: give it the cluster's master key",
            )),
            (None, false) => Ok(bytes.to_vec()),
        }
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
