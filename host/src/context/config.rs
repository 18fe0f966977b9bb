//! Configuration of the context store.

/// Configuration of the context store. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    /// An agent that has not heartbeated for this long is marked disconnected and its
    /// subscriptions are cleaned up. Default 30 s.
    pub heartbeat_timeout_ms: u64,
    /// Versions kept per context when the context does not say (None: all). Default all.
    pub default_history_limit: Option<u64>,
    /// Largest document accepted, in bytes of JSON. Default 16 MiB.
    pub max_document_bytes: usize,
    /// Bytes of documents the hot tier keeps in memory (a document counts its JSON-encoded
    /// length plus its field stamps and the competing values of its pending conflict). Beyond it, the least recently used contexts keep only
    /// their metadata and their documents are read back from the store when next needed.
    /// Default 256 MiB.
    pub hot_tier_bytes: usize,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            heartbeat_timeout_ms: 30_000,
            default_history_limit: None,
            max_document_bytes: 16 << 20,
            hot_tier_bytes: 256 << 20,
        }
    }
}
