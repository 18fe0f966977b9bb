"""The shared, versioned context store: JSON documents with owners, shares, history and a
consistency strategy each.

::

    from qi_agent import context
    made = context.create({"count": 0}, id="counter", context_type="counter")
    context.update("counter", lambda doc: {**doc, "count": doc["count"] + 1})

Every write names the version it was based on; when another agent wrote in between the host
refuses it as ``stale`` (:attr:`ContextError.is_stale`). :func:`update` re-reads and retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

from componentize_py_types import Err, Ok
from wit_world.imports import context as _raw

from . import _wire
from .errors import ContextError, from_wit

__all__ = [
    "MAX_UPDATE_ATTEMPTS",
    "ContextError",
    "Document",
    "WriteResult",
    "Version",
    "SyncSummary",
    "PointerOp",
    "create",
    "get",
    "get_raw",
    "put",
    "patch",
    "update",
    "delete",
    "share",
    "revoke",
    "ids",
    "pointer_patch",
    "history",
    "rollback",
    "resolve",
    "pending",
    "prefetch",
    "sync_all_shared",
]

#: How many times :func:`update` tries before it gives up with the last ``stale`` error.
MAX_UPDATE_ATTEMPTS = 32

_STRATEGIES = {
    "strong": _raw.SyncStrategy.STRONG,
    "eventual": _raw.SyncStrategy.EVENTUAL,
    "causal": _raw.SyncStrategy.CAUSAL,
    "manual": _raw.SyncStrategy.MANUAL,
}
_PERMISSIONS = {
    "read": _raw.Permission.READ,
    "write": _raw.Permission.WRITE,
    "share": _raw.Permission.SHARE,
    "delete": _raw.Permission.DELETE,
}


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ContextError("invalid", f"could not serialize the {what} as JSON: {error}") from None


def _parse(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _invalid(message: str) -> ContextError:
    return ContextError("invalid", message)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return _wire.call(fn, args, _invalid)
    except Err as err:
        raise from_wit(ContextError, err) from None


@dataclass(frozen=True)
class Document:
    """A context as read: ``id``, ``owner`` (agent id), ``context_type``, ``version`` (of the
    document, from 1), ``revision`` (of the record, bumped by share changes too), ``status``
    (``"active"``, ``"conflicted"``, ...) and ``doc`` (the JSON document, parsed)."""

    id: str
    owner: str
    context_type: str
    version: int
    revision: int
    status: str
    doc: Any


@dataclass(frozen=True)
class WriteResult:
    """A write's result: ``id``, the ``version`` now current, ``new_version`` (``False`` when
    the write changed nothing) and ``conflicts`` (the conflicts it recorded, parsed; ``[]``
    when none)."""

    id: str
    version: int
    new_version: bool
    conflicts: Any


@dataclass(frozen=True)
class Version:
    """One entry of a context's history: ``version``, ``revision``, the writing ``agent``,
    the ``op`` (``create``, ``put``, ``patch``, ...), its hybrid-logical-clock stamp ``hlc``
    and the ``doc`` at that version (parsed)."""

    version: int
    revision: int
    agent: str
    op: str
    hlc: str
    doc: Any


@dataclass(frozen=True)
class SharedSync:
    """One shared context's state in :func:`sync_all_shared`."""

    id: str
    owner: str
    version: int
    status: str
    conflicts: int
    error: Optional[str]


@dataclass(frozen=True)
class SyncSummary:
    """The result of :func:`sync_all_shared`: counts and one :class:`SharedSync` per context."""

    total: int
    synced: int
    conflicts: int
    contexts: List[SharedSync]


def _write(result: Any) -> WriteResult:
    conflicts = _parse(result.conflicts) if result.conflicts else []
    return WriteResult(result.id, result.version, result.new_version, conflicts)


def _document(d: Any, parse: bool = True) -> Document:
    doc = _parse(d.doc) if parse else d.doc
    return Document(d.id, d.owner, d.context_type, d.version, d.revision, d.status, doc)


def create(
    doc: Any,
    *,
    context_type: str,
    id: Optional[str] = None,
    strategy: str = "strong",
) -> WriteResult:
    """Creates a context owned by this agent with ``doc`` as version 1; the host makes an id
    when ``id`` is ``None`` (read it from the result). ``context_type`` (required, non-empty)
    names what the document is, e.g. ``"review"``; a context policy may allow only some types. ``strategy`` is ``"strong"``,
    ``"eventual"``, ``"causal"`` or ``"manual"``.

    Raises:
        ContextError: ``refused`` (id taken), ``access-denied``, ``invalid`` (not JSON, too
            large, unknown strategy).
    """
    wit_strategy = _STRATEGIES.get(strategy)
    if wit_strategy is None:
        raise ContextError(
            "invalid", f"unknown strategy {strategy!r}; use one of {', '.join(_STRATEGIES)}"
        )
    return _write(_call(_raw.create, id, context_type, _json(doc, "document"), wit_strategy))


def get(id: str) -> Document:
    """Reads a context, its document parsed from JSON.

    Raises:
        ContextError: ``not-found``, ``access-denied``.
    """
    return _document(_call(_raw.get, id))


def get_raw(id: str) -> Document:
    """Reads a context with ``doc`` left as JSON text.

    Raises:
        ContextError: ``not-found``, ``access-denied``.
    """
    return _document(_call(_raw.get, id), parse=False)


def put(id: str, doc: Any, base_version: Optional[int] = None) -> WriteResult:
    """Replaces the document. ``base_version`` is the version the change is based on
    (required for ``strong``, ``eventual`` and ``causal`` contexts).

    Raises:
        ContextError: ``stale`` (another write came first; ``current_version`` says which),
            ``not-found``, ``access-denied``, ``invalid``.
    """
    return _write(_call(_raw.put, id, _json(doc, "document"), base_version))


def patch(id: str, merge_patch: Any, base_version: Optional[int] = None) -> WriteResult:
    """Applies an RFC 7396 JSON merge patch (``None`` values remove keys).

    Raises:
        ContextError: as :func:`put`.
    """
    return _write(_call(_raw.patch, id, _json(merge_patch, "merge patch"), base_version))


def update(
    id: str,
    fn: Callable[[Any], Any],
    max_attempts: int = MAX_UPDATE_ATTEMPTS,
) -> WriteResult:
    """Read-modify-write that survives concurrent writers: reads the document, calls
    ``fn(doc)`` and writes what it returns (or ``doc`` itself when it returns ``None`` after
    changing it in place) with the read version as base. On ``stale`` it re-reads and calls
    ``fn`` again, up to ``max_attempts`` times in all, so keep ``fn`` free of side effects.

    Raises:
        ContextError: the last ``stale`` after ``max_attempts`` tries, or the first other
            error of :func:`get` or :func:`put`.
    """
    last: Optional[ContextError] = None
    for _ in range(max(1, max_attempts)):
        current = get(id)
        doc = current.doc
        new = fn(doc)
        try:
            return put(id, doc if new is None else new, current.version)
        except ContextError as error:
            if not error.is_stale:
                raise
            last = error
    assert last is not None
    raise last


def delete(id: str) -> None:
    """Deletes a context (its history is kept).

    Raises:
        ContextError: ``not-found``, ``access-denied`` (no ``delete`` permission).
    """
    _call(_raw.delete, id)


def share(
    id: str,
    agents: Sequence[str],
    permissions: Iterable[str] = ("read",),
    expires_in_ms: Optional[int] = None,
) -> None:
    """Shares a context with ``agents`` (agent ids, or subtask ids in a coordinated run) with
    ``permissions`` out of ``"read"``, ``"write"``, ``"share"``, ``"delete"``, optionally
    expiring after ``expires_in_ms``.

    Raises:
        ContextError: ``access-denied`` (no ``share`` permission, or granting more than held),
            ``not-found``, ``invalid`` (unknown permission).
    """
    wit_permissions = []
    for permission in permissions:
        if permission not in _PERMISSIONS:
            raise ContextError(
                "invalid",
                f"unknown permission {permission!r}; use {', '.join(_PERMISSIONS)}",
            )
        wit_permissions.append(_PERMISSIONS[permission])
    _call(_raw.share, id, list(agents), wit_permissions, expires_in_ms)


def revoke(id: str, agents: Sequence[str]) -> None:
    """Withdraws every share of ``agents`` on the context.

    Raises:
        ContextError: ``access-denied``, ``not-found``.
    """
    _call(_raw.revoke, id, list(agents))


def ids(context_type: Optional[str] = None) -> List[str]:
    """The ids of the contexts this agent may read, optionally of one type (never raises)."""
    return list(_wire.call(_raw.ids, (context_type,), _invalid))


class PointerOp:
    """One operation of :func:`pointer_patch`: :meth:`set` or :meth:`remove` at a JSON
    Pointer (RFC 6901) path through objects (``/a/b``; missing objects on the way are
    created by ``set``; arrays are values, not paths)."""

    def __init__(self, op: Any) -> None:
        self._op = op

    @staticmethod
    def set(path: str, value: Any) -> "PointerOp":
        """Sets the value at ``path`` (creating missing objects on the way)."""
        return PointerOp(_raw.PointerOp_Set(_raw.PointerSet(path, _json(value, "value"))))

    @staticmethod
    def remove(path: str) -> "PointerOp":
        """Removes the value at ``path``."""
        return PointerOp(_raw.PointerOp_Remove(path))


def pointer_patch(
    id: str, ops: Sequence[PointerOp], base_version: Optional[int] = None
) -> WriteResult:
    """Applies JSON Pointer operations in order, all or nothing.

    Raises:
        ContextError: as :func:`put`; ``invalid`` for a path that does not resolve.
    """
    return _write(_call(_raw.pointer_patch, id, [op._op for op in ops], base_version))


def history(id: str, limit: int = 100) -> List[Version]:
    """The newest ``limit`` versions, newest first.

    Raises:
        ContextError: ``not-found``, ``access-denied``.
    """
    return [
        Version(v.version, v.revision, v.agent, v.op, v.hlc, _parse(v.doc))
        for v in _call(_raw.history, id, limit)
    ]


def rollback(id: str, version: int) -> WriteResult:
    """Writes an old version's document as a new version.

    Raises:
        ContextError: ``not-found`` (no such version kept), ``access-denied``.
    """
    return _write(_call(_raw.rollback, id, version))


def resolve(
    id: str,
    *,
    agent: Optional[str] = None,
    fields: Optional[Any] = None,
    document: Optional[Any] = None,
) -> WriteResult:
    """Resolves a ``manual`` context's pending conflict: take one ``agent``'s write, or pick
    ``fields`` (``{"<field>": "<agent>"}``), or write a whole ``document``. Give exactly one.

    Raises:
        ContextError: ``invalid`` (not exactly one choice, nothing pending), ``access-denied``.
    """
    given = [name for name, v in (("agent", agent), ("fields", fields), ("document", document))
             if v is not None]
    if len(given) != 1:
        raise ContextError("invalid", "resolve takes exactly one of agent, fields or document")
    if agent is not None:
        choice: Any = _raw.ResolveChoice_Agent(agent)
    elif fields is not None:
        choice = _raw.ResolveChoice_Fields(_json(fields, "field choice"))
    else:
        choice = _raw.ResolveChoice_Document(_json(document, "document"))
    return _write(_call(_raw.resolve, id, choice))


def pending(id: str) -> Optional[Any]:
    """A ``manual`` context's pending conflicting writes (parsed), or ``None``.

    Raises:
        ContextError: ``not-found``, ``access-denied``.
    """
    text = _call(_raw.pending, id)
    return None if text is None else _parse(text)


def prefetch(ids: Sequence[str]) -> List[Union[int, ContextError]]:
    """Loads contexts into this agent's local cache; per id its version or its error."""
    out: List[Union[int, ContextError]] = []
    for result in _wire.call(_raw.prefetch, (list(ids),), _invalid):
        out.append(result.value if isinstance(result, Ok) else from_wit(ContextError, result))
    return out


def sync_all_shared() -> SyncSummary:
    """Brings every context shared with this agent up to date in its cache.

    Raises:
        ContextError: ``failed`` when the store cannot be read.
    """
    s = _call(_raw.sync_all_shared)
    return SyncSummary(
        s.total,
        s.synced,
        s.conflicts,
        [SharedSync(c.id, c.owner, c.version, c.status, c.conflicts, c.error) for c in s.contexts],
    )
