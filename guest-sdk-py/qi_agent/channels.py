"""Channels of a coordinated run: queues between subtasks with at-least-once delivery
(a message not acked is delivered again), declared in the manifest's ``[[channels]]``.
Outside a coordinated run every call raises ``ChannelError`` of kind ``not-coordinated``.

::

    from qi_agent import channels
    channels.send("jobs", {"file": "a.py"})
    for message in channels.messages("jobs", timeout_ms=1000):
        handle(message.json())
        message.ack()
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from componentize_py_types import Err
from wit_world.imports import channels as _raw

from . import _wire
from .errors import ChannelError, from_wit

__all__ = ["ChannelError", "Message", "send", "send_json", "receive", "ack", "messages"]


def _call(fn: Any, *args: Any) -> Any:
    try:
        return _wire.call(fn, args, lambda m: ChannelError("invalid", m))
    except Err as err:
        raise from_wit(ChannelError, err) from None


@dataclass(frozen=True)
class Message:
    """A received message: ``channel``, ``id`` (ack it with this), ``sender`` (subtask id),
    ``body`` (text) and ``delivery_count`` (1 on first delivery)."""

    channel: str
    id: int
    sender: str
    body: str
    delivery_count: int

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            ChannelError: ``invalid`` when the body is not JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise ChannelError("invalid", f"message {self.id} is not JSON: {error}") from None

    def ack(self) -> None:
        """Acknowledges the message, so it is not delivered again.

        Raises:
            ChannelError: as :func:`ack`.
        """
        ack(self.channel, self.id)


def send(channel: str, body: str, to: Optional[str] = None) -> int:
    """Sends text ``body`` on ``channel`` (to one subtask when ``to`` is given); returns the
    message id.

    Raises:
        ChannelError: ``not-coordinated``, ``unknown-channel``, ``too-large``, ``full``,
            ``closed``, ``access-denied`` (not a declared sender).
    """
    return int(_call(_raw.send, channel, to, body))


def send_json(channel: str, value: Any, to: Optional[str] = None) -> int:
    """:func:`send` with ``value`` serialized as JSON.

    Raises:
        ChannelError: as :func:`send`; ``invalid`` when ``value`` is not JSON-serializable.
    """
    try:
        body = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ChannelError("invalid", f"could not serialize the message as JSON: {error}")
    return send(channel, body, to)


def receive(channel: str, timeout_ms: int = 1000) -> Optional[Message]:
    """Waits up to ``timeout_ms`` for a message; ``None`` when none came (or the channel is
    closed and drained).

    Raises:
        ChannelError: ``not-coordinated``, ``unknown-channel``, ``access-denied``.
    """
    m = _call(_raw.receive, channel, max(0, min(int(timeout_ms), 2**32 - 1)))
    if m is None:
        return None
    return Message(m.channel, m.id, m.sender, m.body, m.delivery_count)


def ack(channel: str, id: int) -> None:
    """Acknowledges message ``id`` of ``channel``.

    Raises:
        ChannelError: ``invalid`` (not delivered to this subtask), ``unknown-channel``.
    """
    _call(_raw.ack, channel, id)


def messages(channel: str, timeout_ms: int = 1000) -> Iterator[Message]:
    """The messages of ``channel`` until a wait of ``timeout_ms`` yields nothing. Ack each.

    Raises:
        ChannelError: as :func:`receive`, from the iteration.
    """
    while True:
        message = receive(channel, timeout_ms)
        if message is None:
            return
        yield message
