"""The event bus: subscribe to what happens to contexts, and publish custom events.

::

    from qi_agent import events
    with events.subscribe(["board"], ["updated"]) as sub:
        for event in sub.iter(timeout_ms=1000):   # ends after a second without events
            log.info("event", seq=event.seq, type=event.event_type)

A subscription is gap-free: events arrive in ``seq`` order with none skipped; one that falls
behind retention ends with ``history-compacted``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from componentize_py_types import Err
from wit_world.imports import events as _raw

from . import _wire
from .errors import EventError, from_wit

__all__ = ["Event", "EventError", "Subscription", "subscribe", "publish"]


@dataclass(frozen=True)
class Event:
    """One event: ``seq`` (bus-wide order), ``event_type`` (``"created"``, ``"updated"``,
    ``"custom"``, ...), ``context_id``, ``agent_id`` (who caused it), ``timestamp_ms`` (Unix
    milliseconds), ``priority`` (0-255) and ``data`` (parsed JSON)."""

    seq: int
    event_type: str
    context_id: Optional[str]
    agent_id: Optional[str]
    timestamp_ms: int
    priority: int
    data: Any


def _call(fn: Any, *args: Any) -> Any:
    try:
        return _wire.call(fn, args, lambda m: EventError("invalid", m))
    except Err as err:
        raise from_wit(EventError, err) from None


class Subscription:
    """An open subscription. Close it with :meth:`close` or a ``with`` block; the host closes
    it when the agent ends."""

    def __init__(self, handle: int, starts_after: int) -> None:
        self.id: int = handle
        #: The seq after which events are delivered.
        self.starts_after: int = starts_after
        #: The seq of the last event delivered (``starts_after`` before the first).
        self.last_seq: int = starts_after
        self._open = True

    def next(self, timeout_ms: int = 1000) -> Optional[Event]:
        """Waits up to ``timeout_ms`` for the next event; ``None`` when none came.

        Raises:
            EventError: ``history-compacted`` (fell behind retention; the subscription has
                ended), ``unknown-subscription`` (closed).
        """
        e = _call(_raw.next, self.id, max(0, min(int(timeout_ms), 2**32 - 1)))
        if e is None:
            return None
        try:
            data = json.loads(e.data)
        except ValueError:
            data = e.data
        self.last_seq = e.seq
        return Event(e.seq, e.event_type, e.context_id, e.agent_id, e.timestamp_ms, e.priority, data)

    def iter(self, timeout_ms: int = 1000) -> Iterator[Event]:
        """The events as an iterator that ends when a wait of ``timeout_ms`` yields nothing.

        Raises:
            EventError: as :meth:`next`, from the iteration.
        """
        while True:
            event = self.next(timeout_ms)
            if event is None:
                return
            yield event

    def __iter__(self) -> Iterator[Event]:
        return self.iter()

    def close(self) -> None:
        """Ends the subscription (idempotent).

        Raises:
            EventError: ``invalid`` when the subscription's id is not a u64 (one made by hand).
        """
        if self._open:
            self._open = False
            _call(_raw.unsubscribe, self.id)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def subscribe(
    context_ids: Sequence[str],
    event_types: Sequence[str] = (),
    after_seq: Optional[int] = None,
) -> Subscription:
    """Subscribes to events of ``context_ids`` (all types when ``event_types`` is empty),
    starting after ``after_seq`` (default: now).

    Raises:
        EventError: ``access-denied`` (a context the agent cannot read), ``invalid`` (too many
            subscriptions or ids), ``history-compacted`` (``after_seq`` is no longer kept).
    """
    s = _call(_raw.subscribe, list(context_ids), list(event_types), after_seq)
    return Subscription(s.handle, s.starts_after)


def publish(context_id: str, data: Any, priority: int = 0) -> int:
    """Publishes a ``custom`` event about a context the agent can write; returns its seq.

    Raises:
        EventError: ``access-denied``, ``invalid`` (not JSON-serializable, too large, priority
            outside 0-255).
    """
    if not 0 <= priority <= 255:
        raise EventError("invalid", f"priority must be from 0 to 255, got {priority}")
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise EventError("invalid", f"could not serialize the event data as JSON: {error}")
    return int(_call(_raw.publish, context_id, priority, text))
