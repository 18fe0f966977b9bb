//! Configuration of the context store.

/// Configuration of the context store. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct ContextConfig {
    /// An agent that has not heartbeated for this long is marked disconnected and its
    /// subscriptions are cleaned up. Default 30 s.
    pub heartbeat_timeout_ms: u64,
    /// Versions kept per context when the context does not say (None: all). Default all.
    pub default_history_limit: Option<u64>,
    /// Largest document accepted, in bytes of JSON, checked on the result of every change (put,
    /// patch, merge patch, pointer patch, resolve, rollback, merge); a pending conflict's
    /// competing values count with the document. Default 16 MiB.
    pub max_document_bytes: usize,
    /// Bytes of documents the hot tier keeps in memory (a document counts its JSON-encoded
    /// length plus its field stamps and the competing values of its pending conflict). Beyond it, the least recently used contexts keep only
    /// their metadata and their documents are read back from the store when next needed.
    /// Default 256 MiB.
    pub hot_tier_bytes: usize,
    /// Conflict records kept per context; recording one more removes the oldest, except those
    /// a context in `conflict` state still waits on. Default 1,000.
    pub max_conflicts_per_context: u64,
}

impl Default for ContextConfig {
    fn default() -> Self {
        ContextConfig {
            heartbeat_timeout_ms: 30_000,
            default_history_limit: None,
            max_document_bytes: 16 << 20,
            hot_tier_bytes: 256 << 20,
            max_conflicts_per_context: 1_000,
        }
    }
}
