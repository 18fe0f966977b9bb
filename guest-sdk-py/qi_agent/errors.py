"""The errors of qi-agent: what an agent raises to fail a task, and what each host interface
raises when a call fails.

An agent fails its task by raising one of:

- :class:`InvalidInput` -- the task input is not what the agent expects; a retry with the same
  input will not help (the host does not retry it);
- :class:`ToolFailed` -- a tool call failed and the agent gave up;
- :class:`Failed` -- any other failure.

Any other exception that escapes ``run`` is reported as :class:`Failed` with its type, message
and traceback (the last 16 KiB of it), so a bug in an agent reaches the run's report as the
agent's failure, never as a trap. A :class:`ToolError` that escapes becomes :class:`ToolFailed`.

Every host interface raises its own error class, each with ``kind`` (the WIT variant's name,
e.g. ``"access-denied"``) and ``message``:

==================  ========================================================================
class               kinds
==================  ========================================================================
ToolError           access-denied, limit-exceeded, not-found, invalid-input, failed
ContextError        access-denied, not-found, stale, refused, invalid, failed
EventError          access-denied, history-compacted, unknown-subscription, invalid, failed
SyncError           not-coordinated, unknown-point, invalid, failed, invalid-payload,
                    access-denied
ChannelError        not-coordinated, unknown-channel, invalid, too-large, full, closed,
                    access-denied, failed
LlmError            access-denied, limit-exceeded, invalid-request, rate-limited,
                    unavailable, provider-error
==================  ========================================================================
"""

from __future__ import annotations

import re
from typing import Any, Optional, TypeVar, cast

__all__ = [
    "AgentError",
    "InvalidInput",
    "ToolFailed",
    "Failed",
    "HostError",
    "ToolError",
    "ContextError",
    "EventError",
    "SyncError",
    "ChannelError",
    "LlmError",
]


class AgentError(Exception):
    """Base of the errors an agent raises to fail its task. ``message`` is what the report
    shows."""

    #: The WIT variant of ``agent-error`` this class becomes.
    kind: str = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message: str = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(AgentError):
    """The task input is not what the agent expects; retrying the same input will not help."""

    kind = "invalid-input"


class ToolFailed(AgentError):
    """A host tool call failed and the agent gave up; the message says which and why."""

    kind = "tool-failed"


class Failed(AgentError):
    """Any other failure; the message says what went wrong."""

    kind = "failed"


class HostError(Exception):
    """Base of the errors host interfaces raise.

    Attributes:
        kind: the WIT variant's name in kebab-case, e.g. ``"access-denied"``.
        message: the host's explanation (for variants without text, a description of the
            payload).
    """

    #: The WIT interface the error comes from, e.g. ``"context"``.
    interface: str = "host"

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind: str = kind
        self.message: str = message


class ToolError(HostError):
    """A failed ``tools.call``. An uncaught one fails the task as :class:`ToolFailed`."""

    interface = "tools"


class ContextError(HostError):
    """A failed context call.

    Attributes:
        current_version: for ``stale``, the context's current version; else ``None``.
    """

    interface = "context"

    def __init__(self, kind: str, message: str, current_version: Optional[int] = None) -> None:
        super().__init__(kind, message)
        self.current_version: Optional[int] = current_version

    @property
    def is_stale(self) -> bool:
        """``True`` when another agent wrote since the base version (re-read and retry)."""
        return self.kind == "stale"


class EventError(HostError):
    """A failed events call.

    Attributes:
        seq: for ``history-compacted``, the oldest seq still kept; for
            ``unknown-subscription``, the handle; else ``None``.
    """

    interface = "events"

    def __init__(self, kind: str, message: str, seq: Optional[int] = None) -> None:
        super().__init__(kind, message)
        self.seq: Optional[int] = seq


class SyncError(HostError):
    """A failed sync-point call (``not-coordinated`` outside ``qi-host run``)."""

    interface = "sync"


class ChannelError(HostError):
    """A failed channel call (``not-coordinated`` outside ``qi-host run``)."""

    interface = "channels"


class LlmError(HostError):
    """A failed model call.

    Attributes:
        retry_after_ms: for ``rate-limited``, how long the provider asked to wait; else
            ``None``.
    """

    interface = "llm"

    def __init__(self, kind: str, message: str, retry_after_ms: Optional[int] = None) -> None:
        super().__init__(kind, message)
        self.retry_after_ms: Optional[int] = retry_after_ms


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def variant_kind(value: Any) -> str:
    """The kebab-case case name of a generated variant instance: ``ContextError_AccessDenied``
    is ``access-denied``."""
    name = type(value).__name__
    case = name.split("_", 1)[1] if "_" in name else name
    return _CAMEL.sub("-", case).lower()


E = TypeVar("E", bound=HostError)


def from_wit(cls: type[E], err: Any) -> E:
    """The SDK error for the payload of a ``componentize_py_types.Err`` raised by a binding.

    Text payloads become ``message``; number payloads become ``current_version`` (context),
    ``seq`` (events) or the message; records (``rate-limit``) are taken apart.
    """
    value = getattr(err, "value", err)
    kind = variant_kind(value)
    payload: Any = getattr(value, "value", None)
    if isinstance(payload, str):
        return cls(kind, payload)
    if isinstance(payload, int) and not isinstance(payload, bool):
        if cls is ContextError:
            return cast(E, ContextError(kind, f"the context is at version {payload}", payload))
        if cls is EventError:
            what = "oldest kept seq" if kind == "history-compacted" else "subscription"
            return cast(E, EventError(kind, f"{what} {payload}", payload))
        return cls(kind, str(payload))
    if cls is LlmError and hasattr(payload, "retry_after_ms"):
        return cast(E, LlmError(kind, payload.message, payload.retry_after_ms))
    if payload is None and kind == "not-coordinated":
        return cls(kind, "the agent is not a subtask of a coordinated run (`qi-host run`)")
    return cls(kind, "" if payload is None else str(payload))
