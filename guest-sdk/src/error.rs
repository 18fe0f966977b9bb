//! The error types that cross the WIT boundary: [`AgentError`] (what `run` returns),
//! [`ToolError`] (why a host tool call did not succeed), [`ContextError`] (why a context store
//! call did not succeed), [`EventError`] (why an event bus call did not succeed),
//! [`SyncError`] (why a synchronization point call did not succeed), [`ChannelError`] (why
//! a channel call did not succeed) and [`LlmError`] (why a model call did not succeed).

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::wit::qi::agent::llm::RateLimit;

/// Why a `run` failed, as reported by the agent itself (WIT `types.agent-error`).
///
/// `Display` prints the kind and the message, e.g. `invalid-input: missing field `dir``.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The task input was not what the agent expects; retrying the same input will not help.
    InvalidInput(String),
    /// A host tool call failed and the agent gave up; the message says which and why.
    ToolFailed(String),
    /// Any other failure; the message says what went wrong.
    Failed(String),
}

impl AgentError {
    /// The WIT name of the case: `invalid-input`, `tool-failed` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::InvalidInput(_) => "invalid-input",
            AgentError::ToolFailed(_) => "tool-failed",
            AgentError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            AgentError::InvalidInput(message)
            | AgentError::ToolFailed(message)
            | AgentError::Failed(message) => message,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for AgentError {}

/// A tool call failing ends the agent's run as [`AgentError::ToolFailed`], carrying the tool
/// error's text (kind and message), so `?` works on tool calls inside [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<ToolError> for AgentError {
    fn from(error: ToolError) -> Self {
        AgentError::ToolFailed(error.to_string())
    }
}

/// Why a tool call did not succeed (WIT `tools.tool-error`). A refusal by the host is always one
/// of these values, never a trap, so an agent can handle it.
///
/// `Display` prints the kind and the message, e.g. `limit-exceeded: maxToolCalls (10) reached`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The agent is not allowed to call this tool (not in `allowedTools`, or prohibited).
    AccessDenied(String),
    /// A budget ran out: tool calls, file operations or concurrent operations.
    LimitExceeded(String),
    /// No tool with this name is registered in the host.
    NotFound(String),
    /// The input was rejected before the tool ran (not JSON, wrong shape, too large).
    InvalidInput(String),
    /// The tool ran and failed; the message says why.
    Failed(String),
}

impl ToolError {
    /// The WIT name of the case: `access-denied`, `limit-exceeded`, `not-found`,
    /// `invalid-input` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            ToolError::AccessDenied(_) => "access-denied",
            ToolError::LimitExceeded(_) => "limit-exceeded",
            ToolError::NotFound(_) => "not-found",
            ToolError::InvalidInput(_) => "invalid-input",
            ToolError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            ToolError::AccessDenied(message)
            | ToolError::LimitExceeded(message)
            | ToolError::NotFound(message)
            | ToolError::InvalidInput(message)
            | ToolError::Failed(message) => message,
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ToolError {}

/// Why a context store call did not succeed (WIT `context.context-error`). A refusal by the
/// host is always one of these values, never a trap.
///
/// `Display` prints the kind and the message, e.g.
/// `access-denied: agent `agent-3` may not read context `notes`: ...` or
/// `stale: the context is at version 7; re-read and retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextError {
    /// The agent may not do this; the message says why. The host also records it as an
    /// access-violation conflict of the context.
    AccessDenied(String),
    /// No such context.
    NotFound(String),
    /// Strong strategy: the write was based on an old version; the payload is the current
    /// version. Re-read and retry ([`context::update`](crate::context::update) does).
    Stale(u64),
    /// The write was refused (context in conflict, schema mismatch, bad base version, id
    /// taken).
    Refused(String),
    /// The request was invalid (bad JSON, bad pointer, too large), or a document could not be
    /// serialized or deserialized by the SDK.
    Invalid(String),
    /// The host failed.
    Failed(String),
}

impl ContextError {
    /// The WIT name of the case: `access-denied`, `not-found`, `stale`, `refused`, `invalid`
    /// or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            ContextError::AccessDenied(_) => "access-denied",
            ContextError::NotFound(_) => "not-found",
            ContextError::Stale(_) => "stale",
            ContextError::Refused(_) => "refused",
            ContextError::Invalid(_) => "invalid",
            ContextError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind. For [`ContextError::Stale`] it names the current
    /// version.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ContextError::Stale(current) => Cow::Owned(format!(
                "the context is at version {current}; re-read and retry"
            )),
            ContextError::AccessDenied(message)
            | ContextError::NotFound(message)
            | ContextError::Refused(message)
            | ContextError::Invalid(message)
            | ContextError::Failed(message) => Cow::Borrowed(message),
        }
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ContextError {}

/// A context call failing ends the agent's run as [`AgentError::Failed`], saying it was a
/// context call and carrying the error's text (kind and message), so `?` works on context
/// calls inside [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<ContextError> for AgentError {
    fn from(error: ContextError) -> Self {
        AgentError::Failed(format!("context call failed: {error}"))
    }
}

/// Why an event bus call did not succeed (WIT `events.event-error`). A refusal by the host is
/// always one of these values, never a trap.
///
/// `Display` prints the kind and the message, e.g. `history-compacted: events before seq 120
/// were dropped by retention; resume from there or later`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// The agent may not see events of that context.
    AccessDenied(String),
    /// Resuming from a sequence number that retention already dropped; the payload is the
    /// oldest sequence number still kept.
    HistoryCompacted(u64),
    /// No such subscription (never made, or ended).
    UnknownSubscription(u64),
    /// The request was invalid, or data could not be serialized by the SDK.
    Invalid(String),
    /// The host failed.
    Failed(String),
}

impl EventError {
    /// The WIT name of the case: `access-denied`, `history-compacted`,
    /// `unknown-subscription`, `invalid` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            EventError::AccessDenied(_) => "access-denied",
            EventError::HistoryCompacted(_) => "history-compacted",
            EventError::UnknownSubscription(_) => "unknown-subscription",
            EventError::Invalid(_) => "invalid",
            EventError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind. For the cases that carry a number it says what the
    /// number is.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            EventError::HistoryCompacted(oldest) => Cow::Owned(format!(
                "events before seq {oldest} were dropped by retention; resume from there or later"
            )),
            EventError::UnknownSubscription(id) => {
                Cow::Owned(format!("no subscription {id} (never made, or ended)"))
            }
            EventError::AccessDenied(message)
            | EventError::Invalid(message)
            | EventError::Failed(message) => Cow::Borrowed(message),
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for EventError {}

/// An events call failing ends the agent's run as [`AgentError::Failed`], saying it was an
/// events call and carrying the error's text (kind and message), so `?` works on events calls
/// inside [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<EventError> for AgentError {
    fn from(error: EventError) -> Self {
        AgentError::Failed(format!("events call failed: {error}"))
    }
}

/// Why a synchronization point call did not succeed (WIT `sync.sync-error`). A refusal by the
/// host is always one of these values, never a trap.
///
/// `Display` prints the kind and the message, e.g. `unknown-point: no point `merge` in the
/// manifest` or `not-coordinated: the agent is not running inside a coordinated run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// The agent is not running inside a coordinated run (e.g. under `qi-host run-agent`).
    NotCoordinated,
    /// No point with that id in the manifest.
    UnknownPoint(String),
    /// The point exists but is of another type, or the calling subtask is not one of its
    /// participants, or it already arrived; the message says which.
    Invalid(String),
    /// The point timed out with `on-timeout = "fail"`, or its condition became impossible and
    /// it could not proceed; the message names the absent participants.
    Failed(String),
    /// A payload (state, vote or value) was not valid JSON, was over the size limit, or could
    /// not be serialized by the SDK.
    InvalidPayload(String),
    /// The host's access policies refused the call; the message names the rule.
    AccessDenied(String),
}

impl SyncError {
    /// The WIT name of the case: `not-coordinated`, `unknown-point`, `invalid`, `failed`,
    /// `invalid-payload` or `access-denied`.
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::NotCoordinated => "not-coordinated",
            SyncError::UnknownPoint(_) => "unknown-point",
            SyncError::Invalid(_) => "invalid",
            SyncError::Failed(_) => "failed",
            SyncError::InvalidPayload(_) => "invalid-payload",
            SyncError::AccessDenied(_) => "access-denied",
        }
    }

    /// The message, without the kind. [`SyncError::NotCoordinated`] carries none, so it gets a
    /// fixed one.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            SyncError::NotCoordinated => {
                Cow::Borrowed("the agent is not running inside a coordinated run")
            }
            SyncError::UnknownPoint(message)
            | SyncError::Invalid(message)
            | SyncError::Failed(message)
            | SyncError::InvalidPayload(message)
            | SyncError::AccessDenied(message) => Cow::Borrowed(message),
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for SyncError {}

/// A sync call failing ends the agent's run as [`AgentError::Failed`], saying it was a sync
/// call and carrying the error's text (kind and message), so `?` works on sync calls inside
/// [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<SyncError> for AgentError {
    fn from(error: SyncError) -> Self {
        AgentError::Failed(format!("sync call failed: {error}"))
    }
}

/// Why a channel call did not succeed (WIT `channels.channel-error`). A refusal by the host is
/// always one of these values, never a trap.
///
/// `Display` prints the kind and the message, e.g. `full: channel `jobs` holds 1024 messages`
/// or `closed: every producer of `jobs` is over`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// The agent is not running inside a coordinated run (e.g. under `qi-host run-agent`).
    NotCoordinated,
    /// No channel with that id in the manifest.
    UnknownChannel(String),
    /// The call does not fit the channel: the caller is not one of its producers (send) or
    /// consumers (receive, ack), `to` is missing on a `direct` channel or given on another,
    /// `to` is not a consumer, the acked message is not one this consumer holds, or (from the
    /// SDK) a body could not be serialized or parsed.
    Invalid(String),
    /// The body is longer than the channel's `maxMessageBytes`.
    TooLarge(String),
    /// The channel (for `direct`: the recipient's mailbox) holds `maxDepth` messages; send again
    /// once consumers have taken some.
    Full(String),
    /// Every producer is over and nothing is left to receive: no more messages will come.
    Closed(String),
    /// The host's access policies refused the call; the message names the rule.
    AccessDenied(String),
    /// The host could not store or read the message; the message says why.
    Failed(String),
}

impl ChannelError {
    /// The WIT name of the case: `not-coordinated`, `unknown-channel`, `invalid`, `too-large`,
    /// `full`, `closed`, `access-denied` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelError::NotCoordinated => "not-coordinated",
            ChannelError::UnknownChannel(_) => "unknown-channel",
            ChannelError::Invalid(_) => "invalid",
            ChannelError::TooLarge(_) => "too-large",
            ChannelError::Full(_) => "full",
            ChannelError::Closed(_) => "closed",
            ChannelError::AccessDenied(_) => "access-denied",
            ChannelError::Failed(_) => "failed",
        }
    }

    /// The message, without the kind. [`ChannelError::NotCoordinated`] carries none, so it
    /// gets a fixed one.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            ChannelError::NotCoordinated => {
                Cow::Borrowed("the agent is not running inside a coordinated run")
            }
            ChannelError::UnknownChannel(message)
            | ChannelError::Invalid(message)
            | ChannelError::TooLarge(message)
            | ChannelError::Full(message)
            | ChannelError::Closed(message)
            | ChannelError::AccessDenied(message)
            | ChannelError::Failed(message) => Cow::Borrowed(message),
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ChannelError {}

/// A channel call failing ends the agent's run as [`AgentError::Failed`], saying it was a
/// channel call and carrying the error's text (kind and message), so `?` works on channel
/// calls inside [`Agent::run`].
///
/// [`Agent::run`]: crate::Agent::run
impl From<ChannelError> for AgentError {
    fn from(error: ChannelError) -> Self {
        AgentError::Failed(format!("channel call failed: {error}"))
    }
}

/// Why a model call did not succeed (WIT `llm.llm-error`). A refusal by the host is always one
/// of these values, never a trap; messages never contain the provider's key.
///
/// `Display` prints the kind and the message, e.g. `limit-exceeded: maxLlmCalls (3) reached`
/// or `rate-limited: 429 Too Many Requests (retry after 20000 ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmError {
    /// The model is not in `allowedModels`, or the access policies refused `llm/<model>`.
    AccessDenied(String),
    /// A budget is spent (`maxLlmCalls`, `maxInputTokens`, `maxOutputTokens`, `maxCostUsd`);
    /// the message names it. Further calls will be refused too.
    LimitExceeded(String),
    /// The request is malformed or too large (the message names the field), or names a model
    /// the host does not know.
    InvalidRequest(String),
    /// The provider kept answering 429 and the wait it asked for does not fit the agent's time
    /// left (the host already retried within it).
    RateLimited(RateLimit),
    /// The provider could not be reached, kept failing (5xx), timed out, or, under
    /// `--llm-replay`, there is no recording of this request.
    Unavailable(String),
    /// The provider refused the request (4xx) or answered something the host could not use:
    /// malformed, larger than allowed, or not following the requested schema. From the SDK:
    /// an answer that is not the JSON the caller asked for ([`llm::chat_json`]).
    ///
    /// [`llm::chat_json`]: crate::llm::chat_json
    ProviderError(String),
}

impl LlmError {
    /// The WIT name of the case: `access-denied`, `limit-exceeded`, `invalid-request`,
    /// `rate-limited`, `unavailable` or `provider-error`.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::AccessDenied(_) => "access-denied",
            LlmError::LimitExceeded(_) => "limit-exceeded",
            LlmError::InvalidRequest(_) => "invalid-request",
            LlmError::RateLimited(_) => "rate-limited",
            LlmError::Unavailable(_) => "unavailable",
            LlmError::ProviderError(_) => "provider-error",
        }
    }

    /// The message, without the kind. For [`LlmError::RateLimited`] it names the wait the
    /// provider asked for.
    pub fn message(&self) -> Cow<'_, str> {
        match self {
            LlmError::RateLimited(limit) => Cow::Owned(format!(
                "{} (retry after {} ms)",
                limit.message, limit.retry_after_ms
            )),
            LlmError::AccessDenied(message)
            | LlmError::LimitExceeded(message)
            | LlmError::InvalidRequest(message)
            | LlmError::Unavailable(message)
            | LlmError::ProviderError(message) => Cow::Borrowed(message),
        }
    }

    /// How long the provider asked to wait, for [`LlmError::RateLimited`]; `None` otherwise.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited(limit) => Some(Duration::from_millis(limit.retry_after_ms)),
            _ => None,
        }
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for LlmError {}

/// A model call failing ends the agent's run as [`AgentError::Failed`], saying it was a model
/// call and carrying the error's text (kind and message), so `?` works on model calls inside
/// [`Agent::run`]. (`tool-failed` is kept for calls of host tools.)
///
/// [`Agent::run`]: crate::Agent::run
impl From<LlmError> for AgentError {
    fn from(error: LlmError) -> Self {
        AgentError::Failed(format!("llm call failed: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        let error = ToolError::LimitExceeded("maxToolCalls (3) reached".into());
        assert_eq!(
            error.to_string(),
            "limit-exceeded: maxToolCalls (3) reached"
        );
        assert_eq!(
            AgentError::from(error),
            AgentError::ToolFailed("limit-exceeded: maxToolCalls (3) reached".into())
        );
    }

    #[test]
    fn context_and_event_errors_name_their_kind() {
        let stale = ContextError::Stale(7);
        assert_eq!(stale.kind(), "stale");
        assert_eq!(
            stale.to_string(),
            "stale: the context is at version 7; re-read and retry"
        );
        let denied = ContextError::AccessDenied("not shared".into());
        assert_eq!(denied.to_string(), "access-denied: not shared");
        assert_eq!(
            AgentError::from(denied),
            AgentError::Failed("context call failed: access-denied: not shared".into())
        );

        let compacted = EventError::HistoryCompacted(120);
        assert_eq!(compacted.kind(), "history-compacted");
        assert!(compacted.to_string().contains("seq 120"), "{compacted}");
        assert_eq!(
            AgentError::from(EventError::Invalid("bad type".into())),
            AgentError::Failed("events call failed: invalid: bad type".into())
        );
    }

    #[test]
    fn sync_errors_name_their_kind() {
        assert_eq!(
            SyncError::NotCoordinated.to_string(),
            "not-coordinated: the agent is not running inside a coordinated run"
        );
        let unknown = SyncError::UnknownPoint("no point `p`".into());
        assert_eq!(unknown.kind(), "unknown-point");
        assert_eq!(unknown.to_string(), "unknown-point: no point `p`");
        assert_eq!(
            SyncError::InvalidPayload("x".into()).kind(),
            "invalid-payload"
        );
        assert_eq!(
            AgentError::from(SyncError::Failed("absent: b".into())),
            AgentError::Failed("sync call failed: failed: absent: b".into())
        );
    }

    #[test]
    fn channel_errors_name_their_kind() {
        assert_eq!(
            ChannelError::NotCoordinated.to_string(),
            "not-coordinated: the agent is not running inside a coordinated run"
        );
        let closed = ChannelError::Closed("every producer of `jobs` is over".into());
        assert_eq!(closed.kind(), "closed");
        assert_eq!(
            closed.to_string(),
            "closed: every producer of `jobs` is over"
        );
        for (error, kind) in [
            (ChannelError::UnknownChannel("x".into()), "unknown-channel"),
            (ChannelError::Invalid("x".into()), "invalid"),
            (ChannelError::TooLarge("x".into()), "too-large"),
            (ChannelError::Full("x".into()), "full"),
            (ChannelError::AccessDenied("x".into()), "access-denied"),
            (ChannelError::Failed("x".into()), "failed"),
        ] {
            assert_eq!(error.kind(), kind);
            assert_eq!(error.to_string(), format!("{kind}: x"));
        }
        assert_eq!(
            AgentError::from(ChannelError::Full("mailbox of `b` holds 4".into())),
            AgentError::Failed("channel call failed: full: mailbox of `b` holds 4".into())
        );
    }

    #[test]
    fn llm_errors_name_their_kind() {
        let spent = LlmError::LimitExceeded("maxLlmCalls (3) reached".into());
        assert_eq!(spent.kind(), "limit-exceeded");
        assert_eq!(spent.to_string(), "limit-exceeded: maxLlmCalls (3) reached");
        assert_eq!(spent.retry_after(), None);
        for (error, kind) in [
            (LlmError::AccessDenied("x".into()), "access-denied"),
            (LlmError::InvalidRequest("x".into()), "invalid-request"),
            (LlmError::Unavailable("x".into()), "unavailable"),
            (LlmError::ProviderError("x".into()), "provider-error"),
        ] {
            assert_eq!(error.kind(), kind);
            assert_eq!(error.to_string(), format!("{kind}: x"));
        }
        let limited = LlmError::RateLimited(RateLimit {
            retry_after_ms: 20_000,
            message: "429 Too Many Requests".into(),
        });
        assert_eq!(
            limited.to_string(),
            "rate-limited: 429 Too Many Requests (retry after 20000 ms)"
        );
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(20)));
        assert_eq!(
            AgentError::from(spent),
            AgentError::Failed("llm call failed: limit-exceeded: maxLlmCalls (3) reached".into())
        );
    }
}
