"""Checks of what an agent hands the host, before it crosses the component boundary.

componentize-py lowers each argument of a host call into the canonical ABI. A value it cannot
lower (a ``str`` holding a lone surrogate such as ``"\\udc80"``, an ``int`` where the WIT says
``string``, a ``list`` item of the wrong type) does not raise a Python exception there: the
component traps, and no ``try`` in the agent can catch it. Every host call of the SDK goes
through :func:`call`, which checks each argument against the type hints of the generated
binding and raises the calling interface's own error instead. What it passes on is a copy made
of exact types (plain ``str``, ``int``, ``list``, fresh binding records), so an argument cannot
change between the check and the lowering, and a subclass cannot pose as a variant case.

Integers: every integer in ``wit/`` is unsigned. The hints say only ``int``, so
:data:`NARROW_INTS` lists the ``u8`` and ``u32`` ones by function or record and field (a test
of ``qi-build-py`` checks the list against the WIT); every other integer is a ``u64``.
Subclasses of ``str``, ``int``, ``float`` and ``list`` are checked and copied by their value,
whatever they override.
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
            f"holds a lone surrogate {str.__repr__(value[error.start])} at index {error.start}; "
            "text must be valid Unicode (decode bytes with errors='replace')"
        )
    return None


def clean(value: Any) -> str:
    """``str(value)`` as a plain ``str`` that can always cross the boundary: lone surrogates
    become backslash escapes, and a ``__str__`` that raises gives the object's default repr.
    Never raises."""
    try:
        text = value if isinstance(value, str) else str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
        text = str.__str__(text)  # a plain str, whatever subclass it was
    except BaseException:  # noqa: BLE001 - describing a value must never fail
        try:
            text = object.__repr__(value)
        except BaseException:  # noqa: BLE001
            text = "<unprintable object>"
    try:
        return bytes.decode(str.encode(text, "utf-8", "backslashreplace"), "utf-8")
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


class _Bad(Exception):
    """Why a value does not fit its hint; ``where`` is the path inside it (``[2].name``)."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.where = where

    def at(self, part: str) -> "_Bad":
        return _Bad(self.problem, part + self.where)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _items(value: Any, kind: type) -> List[Any]:
    """The items of a ``list`` or ``tuple`` as stored (a subclass's ``__iter__`` not asked)."""
    if kind is list:
        return list(list.__iter__(value))
    return list(tuple.__iter__(value))


def _strings(value: Any, depth: int) -> Any:
    """``value``, its strings checked, when its type is not known."""
    if depth > _MAX_DEPTH:
        raise _Bad("nests too deeply")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise _Bad(problem)
        return str.__str__(value)
    for kind in (list, tuple):
        if isinstance(value, kind):
            items = []
            for i, item in enumerate(_items(value, kind)):
                try:
                    items.append(_strings(item, depth + 1))
                except _Bad as bad:
                    raise bad.at(f"[{i}]") from None
            return items if kind is list else tuple(items)
    return value


def _owns(arm: Any, value: Any) -> bool:
    """Whether ``arm`` is the value's own type (an int is a float's too)."""
    if arm is float and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(arm, type) and isinstance(value, arm)


def _convert(value: Any, hint: Any, depth: int, key: Tuple[str, str]) -> Any:
    """A copy of ``value`` made of exact types that fits ``hint`` (a binding's type hint).
    ``key`` is the ``(function or record, field)`` it is for (see :data:`NARROW_INTS`).

    Raises:
        _Bad: saying why it does not fit.
    """
    if depth > _MAX_DEPTH:
        raise _Bad("nests too deeply")
    if hint is Any:
        return _strings(value, depth)
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        arms = typing.get_args(hint)
        first: Optional[_Bad] = None
        for arm in arms:
            try:
                return _convert(value, arm, depth + 1, key)
            except _Bad as bad:
                # The arm of the value's own type explains best (a bad str in Optional[str]).
                if first is None or _owns(arm, value):
                    first = bad
        if not any(_owns(a, value) for a in arms) and all(isinstance(a, type) for a in arms):
            names = " or ".join(_type_name(a) for a in arms)
            raise _Bad(f"must be {names}, got {type(value).__name__}")
        assert first is not None
        raise first
    if hint is type(None):
        if value is None:
            return None
        raise _Bad(f"must be None, got {type(value).__name__}")
    if origin in (list, List, Sequence):
        if not isinstance(value, list):
            raise _Bad(f"must be a list, got {type(value).__name__}")
        (item_hint,) = typing.get_args(hint) or (Any,)
        items = []
        for i, item in enumerate(_items(value, list)):
            try:
                items.append(_convert(item, item_hint, depth + 1, key))
            except _Bad as bad:
                raise bad.at(f"[{i}]") from None
        return items
    if origin in (tuple, Tuple):
        item_hints = typing.get_args(hint)
        if not isinstance(value, tuple) or tuple.__len__(value) != len(item_hints):
            raise _Bad(f"must be a tuple of {len(item_hints)}, got {type(value).__name__}")
        converted = []
        for i, (item, item_hint) in enumerate(zip(_items(value, tuple), item_hints)):
            try:
                converted.append(_convert(item, item_hint, depth + 1, key))
            except _Bad as bad:
                raise bad.at(f"[{i}]") from None
        return tuple(converted)
    if hint is str:
        if not isinstance(value, str):
            raise _Bad(f"must be a str, got {type(value).__name__}")
        problem = text_problem(value)
        if problem:
            raise _Bad(problem)
        return str.__str__(value)
    if hint is bool:
        if isinstance(value, bool):
            return value is True
        raise _Bad(f"must be a bool, got {type(value).__name__}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be an int, got {type(value).__name__}")
        bits = NARROW_INTS.get(key, 64)
        # Unbound: a subclass's own comparisons do not speak for its value.
        exact = int.__index__(value)
        if not 0 <= exact < 2**bits:
            got = str(exact) if exact.bit_length() <= 128 else f"an int of {exact.bit_length()} bits"
            raise _Bad(f"must be from 0 to {2**bits - 1} (u{bits}), got {got}")
        return exact
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad(f"must be a float, got {type(value).__name__}")
        if isinstance(value, int):
            try:
                return float(int.__index__(value))
            except OverflowError:
                bits = int.__index__(value).bit_length()
                raise _Bad(f"is too large for a float ({bits} bits)") from None
        return float.__float__(value)
    if hint is bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise _Bad(f"must be bytes, got {type(value).__name__}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        raise _Bad(f"must be a {hint.__name__}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise _Bad(f"must be a {hint.__name__}, got {type(value).__name__}")
        # A fresh record of exactly this type: componentize-py finds a variant's case by its
        # exact type, and reads the fields again when it lowers them.
        hints = _hints(hint)
        fields = {}
        for f in dataclasses.fields(hint):
            field_value = getattr(value, f.name, None)
            try:
                fields[f.name] = (
                    _convert(field_value, hints[f.name], depth + 1, (hint.__name__, f.name))
                    if f.name in hints
                    else _strings(field_value, depth + 1)
                )
            except _Bad as bad:
                raise bad.at(f".{f.name}") from None
        return hint(**fields)
    return _strings(value, depth)


def call(fn: Callable[..., R], args: Sequence[Any], fail: Callable[[str], BaseException]) -> R:
    """``fn(*args)`` with a checked copy of each argument (see the module docs).

    Raises:
        whatever ``fail(message)`` returns, naming the argument (and the part of it) and what is
        wrong with it, when an argument would trap the component; and whatever ``fn`` raises.
    """
    hints = _hints(fn)
    names = _params(fn)
    checked = []
    for i, value in enumerate(args):
        name = names[i] if i < len(names) else f"#{i}"
        try:
            checked.append(
                _convert(value, hints[name], 0, (fn.__name__, name))
                if name in hints
                else _strings(value, 0)
            )
        except _Bad as bad:
            interface = getattr(fn, "__module__", "").rsplit(".", 1)[-1]
            raise fail(
                f"argument `{name}{bad.where}` of {interface}.{fn.__name__} {bad.problem}"
            ) from None
    return fn(*checked)
