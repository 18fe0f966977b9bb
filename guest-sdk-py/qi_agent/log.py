"""Structured log records, forwarded to the host's log with the agent's identity.

::

    from qi_agent import log
    log.info("voting", point="verdict", files=3)

Field values that are not strings are written as JSON. The host bounds records per agent (a
record past the bound is dropped and counted, never an error), so logging never fails a task.
"""

from __future__ import annotations

import json
from typing import Any

from wit_world.imports import log as _raw

from . import _wire

__all__ = ["log", "trace", "debug", "info", "warn", "error"]

_LEVELS = {
    "trace": _raw.Level.TRACE,
    "debug": _raw.Level.DEBUG,
    "info": _raw.Level.INFO,
    "warn": _raw.Level.WARN,
    "error": _raw.Level.ERROR,
}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return _wire.clean(value)
    try:
        return _wire.clean(json.dumps(value, ensure_ascii=False, default=str))
    except BaseException:  # noqa: BLE001 - logging never fails a task
        return _wire.clean(value)


def log(level: str, message: str, **fields: Any) -> None:
    """Writes one record at ``level`` (``"trace"``, ``"debug"``, ``"info"``, ``"warn"`` or
    ``"error"``). ``message`` and field values that are not text are converted with ``str()``
    (``json.dumps`` for field values); lone surrogates become backslash escapes.

    Raises:
        ValueError: for an unknown level.
    """
    try:
        wit_level = _LEVELS[level]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}"
        ) from None
    _raw.log(
        wit_level,
        _wire.clean(message),
        [_raw.Field(_wire.clean(key), _text(v)) for key, v in fields.items()],
    )


def trace(message: str, **fields: Any) -> None:
    """A ``trace`` record."""
    log("trace", message, **fields)


def debug(message: str, **fields: Any) -> None:
    """A ``debug`` record."""
    log("debug", message, **fields)


def info(message: str, **fields: Any) -> None:
    """An ``info`` record."""
    log("info", message, **fields)


def warn(message: str, **fields: Any) -> None:
    """A ``warn`` record."""
    log("warn", message, **fields)


def error(message: str, **fields: Any) -> None:
    """An ``error`` record."""
    log("error", message, **fields)
