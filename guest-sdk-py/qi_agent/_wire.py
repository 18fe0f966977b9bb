"""Checks of what an agent hands the host, before it crosses the component boundary.

componentize-py lowers each argument of a host call into the canonical ABI. A value it cannot
lower (a ``str`` holding a lone surrogate such as ``"\\udc80"``, an ``int`` where the WIT says
``string``, a ``list`` item of the wrong type) does not raise a Python exception there: the
component traps, and no ``try`` in the agent can catch it. Every host call of the SDK goes
through :func:`call`, which checks each argument against the type hints of the generated
binding and raises the calling interface's own error instead.

Integers: every integer in ``wit/`` is unsigned. The hints say only ``int``, so
:data:`NARROW_INTS` lists the ``u8`` and ``u32`` ones by function or record and field (a test
of ``qi-build-py`` checks the list against the WIT); every other integer is a ``u64``.
Subclasses of ``str`` and ``int`` are checked by their value, whatever they override.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

__all__ = ["call", "text_problem", "clean"]

R = TypeVar("R")

#: The integers of ``wit/`` narrower than ``u64``, as ``(function or record, field)``:
#: ``bits``. Keep in step with the WIT (``qi-build-py``'s ``narrow_ints_match_the_wit``).
NARROW_INTS: Dict[Tuple[str, str], int] = {
    ("receive", "timeout_ms"): 32,
    ("history", "limit"): 32,
    ("next", "timeout_ms"): 32,
    ("publish", "priority"): 8,
    ("Request", "max_tokens"): 32,
    ("Event", "priority"): 8,
    ("Message", "delivery_count"): 32,
    ("Remaining", "tool_calls"): 32,
    ("Remaining", "file_operations"): 32,
    ("SyncOutcome", "arrived_count"): 32,
    ("SyncOutcome", "absent_count"): 32,
    ("SharedSync", "conflicts"): 32,
    ("SyncSummary", "total"): 32,
    ("SyncSummary", "synced"): 32,
    ("SyncSummary", "conflicts"): 32,
    ("Usage", "input_tokens"): 32,
    ("Usage", "output_tokens"): 32,
}

#: Nesting past this depth is not walked (WIT types nest a few levels deep at most).
_MAX_DEPTH = 16


def text_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot cross the boundary as WIT ``string`` (it is not valid UTF-8 text:
    it holds a lone surrogate), or ``None``."""
    try:
        # Unbound: a subclass's own encode() does not speak for the characters it holds.
        str.encode(value, "utf-8")
    except UnicodeEncodeError as error:
        return (
            f"holds a lone surrogate {value[error.start]!r} at index {error.start}; text "
            "must be valid Unicode (decode bytes with errors='replace')"
        )
    return None


def clean(value: Any) -> str:
    """``str(value)`` that can always cross the boundary: lone surrogates become
    backslash escapes, and a ``__str__`` that raises gives the object's default repr.
    Never raises."""
    try:
        text = value if isinstance(value, str) else str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except BaseException:  # noqa: BLE001 - describing a value must never fail
        try:
            text = object.__repr__(value)
        except BaseException:  # noqa: BLE001
            text = "<unprintable object>"
    try:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    except BaseException:  # noqa: BLE001
        return "<unprintable text>"


@functools.lru_cache(maxsize=None)
def _hints(target: Any) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - unresolvable hints: check strings only
        return {}


@functools.lru_cache(maxsize=None)
def _params(fn: Callable[..., Any]) -> Tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _at(where: str, problem: str) -> str:
    """``problem`` of the part ``where`` (``[2]``, ``.name``) of a value."""
    return f"{where}{problem}" if problem[:1] in "[." else f"{where} {problem}"


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _strings(value: Any, depth: int) -> Optional[str]:
    """Checks the strings inside ``value`` when its type is not known."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _strings(item, depth + 1)
            if problem:
                return _at(f"[{i}]", problem)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            problem = _strings(getattr(value, f.name, None), depth + 1)
            if problem:
                return _at(f".{f.name}", problem)
    return None


def _problem(value: Any, hint: Any, depth: int = 0, key: Tuple[str, str] = ("", "")) -> Optional[str]:
    """Why ``value`` does not fit ``hint`` (a binding's type hint), or ``None``. ``key`` is
    the ``(function or record, field)`` the value is for (see :data:`NARROW_INTS`)."""
    if depth > _MAX_DEPTH or hint is Any:
        return _strings(value, depth)
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        arms = typing.get_args(hint)

        def owns(arm: Any) -> bool:
            """Whether ``arm`` is the value's own type (an int is a float's too)."""
            if arm is float and isinstance(value, int) and not isinstance(value, bool):
                return True
            return isinstance(arm, type) and isinstance(value, arm)

        first: Optional[str] = None
        for arm in arms:
            problem = _problem(value, arm, depth + 1, key)
            if problem is None:
                return None
            # The arm of the value's own type explains best (a bad str in Optional[str]).
            if first is None or owns(arm):
                first = problem
        if not any(owns(a) for a in arms) and all(isinstance(a, type) for a in arms):
            names = " or ".join(_type_name(a) for a in arms)
            return f"must be {names}, got {type(value).__name__}"
        return first
    if hint is type(None):
        return None if value is None else f"must be None, got {type(value).__name__}"
    if origin in (list, List, Sequence):
        if not isinstance(value, list):
            return f"must be a list, got {type(value).__name__}"
        (item_hint,) = typing.get_args(hint) or (Any,)
        for i, item in enumerate(value):
            problem = _problem(item, item_hint, depth + 1, key)
            if problem:
                return _at(f"[{i}]", problem)
        return None
    if origin in (tuple, Tuple):
        items = typing.get_args(hint)
        if not isinstance(value, tuple) or len(value) != len(items):
            return f"must be a tuple of {len(items)}, got {type(value).__name__}"
        for i, (item, item_hint) in enumerate(zip(value, items)):
            problem = _problem(item, item_hint, depth + 1, key)
            if problem:
                return _at(f"[{i}]", problem)
        return None
    if hint is str:
        if not isinstance(value, str):
            return f"must be a str, got {type(value).__name__}"
        return text_problem(value)
    if hint is bool:
        return None if isinstance(value, bool) else f"must be a bool, got {type(value).__name__}"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be an int, got {type(value).__name__}"
        bits = NARROW_INTS.get(key, 64)
        # Unbound: a subclass's own comparisons do not speak for its value.
        exact = int.__index__(value)
        if not 0 <= exact < 2**bits:
            got = str(exact) if exact.bit_length() <= 128 else f"an int of {exact.bit_length()} bits"
            return f"must be from 0 to {2**bits - 1} (u{bits}), got {got}"
        return None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a float, got {type(value).__name__}"
        if isinstance(value, int):
            try:
                float(int.__index__(value))
            except OverflowError:
                return f"is too large for a float ({int.__index__(value).bit_length()} bits)"
        return None
    if hint is bytes:
        return None if isinstance(value, bytes) else f"must be bytes, got {type(value).__name__}"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return None if isinstance(value, hint) else f"must be a {hint.__name__}"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            return f"must be a {hint.__name__}, got {type(value).__name__}"
        hints = _hints(hint)
        for f in dataclasses.fields(hint):
            field_value = getattr(value, f.name, None)
            problem = (
                _problem(field_value, hints[f.name], depth + 1, (hint.__name__, f.name))
                if f.name in hints
                else _strings(field_value, depth + 1)
            )
            if problem:
                return _at(f".{f.name}", problem)
        return None
    return _strings(value, depth)


def call(fn: Callable[..., R], args: Sequence[Any], fail: Callable[[str], BaseException]) -> R:
    """``fn(*args)`` once every argument fits the binding's type hints.

    Raises:
        whatever ``fail(message)`` returns, naming the argument and what is wrong with it, when
        an argument would trap the component; and whatever ``fn`` raises.
    """
    hints = _hints(fn)
    names = _params(fn)
    for i, value in enumerate(args):
        name = names[i] if i < len(names) else f"#{i}"
        problem = (
            _problem(value, hints[name], 0, (fn.__name__, name))
            if name in hints
            else _strings(value, 0)
        )
        if problem:
            interface = getattr(fn, "__module__", "").rsplit(".", 1)[-1]
            where = name
            if problem[:1] in "[.":
                # "[1].name must be ..." names a part of the argument: `agents[1].name`.
                part, problem = problem.split(" ", 1)
                where += part
            raise fail(f"argument `{where}` of {interface}.{fn.__name__} {problem}")
    return fn(*args)
