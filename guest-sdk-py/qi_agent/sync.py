"""Synchronization points of a coordinated run (``qi-host run <manifest>``): barriers,
checkpoints, decisions (votes) and aggregations. Outside a coordinated run every call raises
``SyncError`` of kind ``not-coordinated``.

::

    from qi_agent import sync
    outcome = sync.vote("verdict", "approve")
    if outcome.decision == "approve": ...
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from componentize_py_types import Err
from wit_world.imports import sync as _raw

from . import _wire
from .errors import SyncError, from_wit

__all__ = [
    "SyncError",
    "SyncOutcome",
    "barrier",
    "checkpoint",
    "restore",
    "vote",
    "contribute",
    "outcome",
]


@dataclass(frozen=True)
class SyncOutcome:
    """How a point resolved, the same for every participant.

    - ``point``; ``complete`` (the condition was met); ``timed_out``;
    - ``arrived`` / ``absent``: participants (subtask ids); in a compact outcome (a barrier
      of more than 64) only the caller, see :attr:`is_compact`;
    - ``arrived_count`` / ``absent_count``: the full counts;
    - ``result``: barrier ``None``; checkpoint ``{participant: state}``; decision
      ``{"decision", "rule", "votes", "tally"}``; aggregation the reducer's result.
    """

    point: str
    complete: bool
    timed_out: bool
    arrived: List[str]
    absent: List[str]
    arrived_count: int
    absent_count: int
    result: Any

    @property
    def decision(self) -> Optional[str]:
        """The choice a decision point settled on, or ``None``."""
        choice = self.result.get("decision") if isinstance(self.result, dict) else None
        return choice if isinstance(choice, str) else None

    @property
    def is_compact(self) -> bool:
        """``True`` when the lists leave participants out (call :func:`outcome`)."""
        return len(self.arrived) != self.arrived_count or len(self.absent) != self.absent_count

    def as_dict(self) -> Dict[str, Any]:
        """The outcome as a JSON-ready dict."""
        return {
            "point": self.point,
            "complete": self.complete,
            "timed_out": self.timed_out,
            "arrived": self.arrived,
            "absent": self.absent,
            "arrived_count": self.arrived_count,
            "absent_count": self.absent_count,
            "result": self.result,
        }


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise SyncError("invalid-payload", f"could not serialize the {what} as JSON: {error}")


def _invalid(message: str) -> SyncError:
    return SyncError("invalid", message)


def _outcome(fn: Any, *args: Any) -> SyncOutcome:
    try:
        o = _wire.call(fn, args, _invalid)
    except Err as err:
        raise from_wit(SyncError, err) from None
    return SyncOutcome(
        o.point,
        o.complete,
        o.timed_out,
        list(o.arrived),
        list(o.absent),
        o.arrived_count,
        o.absent_count,
        _parse(o.result),
    )


def barrier(point: str) -> SyncOutcome:
    """Arrives at barrier ``point`` and waits until it resolves.

    Raises:
        SyncError: ``not-coordinated``, ``unknown-point``, ``invalid`` (not a barrier, not a
            participant, already arrived), ``failed`` (timed out with ``onTimeout = "fail"``).
    """
    return _outcome(_raw.barrier, point)


def checkpoint(point: str, state: Any) -> SyncOutcome:
    """Records ``state`` (JSON) at checkpoint ``point`` and waits for the others.

    Raises:
        SyncError: as :func:`barrier`; ``invalid-payload`` when ``state`` is not JSON.
    """
    return _outcome(_raw.checkpoint, point, _json(state, "checkpoint state"))


def restore(point: str) -> Optional[Any]:
    """This participant's state from an earlier attempt at checkpoint ``point``, or ``None``.

    Raises:
        SyncError: ``not-coordinated``, ``unknown-point``, ``invalid``.
    """
    try:
        text = _wire.call(_raw.restore, (point,), _invalid)
    except Err as err:
        raise from_wit(SyncError, err) from None
    return None if text is None else _parse(text)


def vote(point: str, choice: str) -> SyncOutcome:
    """Votes ``choice`` at decision point ``point`` and waits for the decision.

    Raises:
        SyncError: as :func:`barrier`; ``invalid`` for a choice the point does not allow.
    """
    return _outcome(_raw.vote, point, choice)


def contribute(point: str, value: Any) -> SyncOutcome:
    """Contributes ``value`` (JSON) to aggregation point ``point`` and waits for the result.

    Raises:
        SyncError: as :func:`barrier`; ``invalid-payload`` for a value the reducer refuses.
    """
    return _outcome(_raw.contribute, point, _json(value, "contribution"))


def outcome(point: str) -> SyncOutcome:
    """The outcome of a resolved point (with the full lists).

    Raises:
        SyncError: ``not-coordinated``, ``unknown-point``, ``invalid`` (not resolved yet).
    """
    return _outcome(_raw.outcome, point)
