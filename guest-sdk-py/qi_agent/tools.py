"""Host tools: the operator-registered functions an agent may call when its spec grants them.

::

    from qi_agent import tools
    stats = tools.call("fs.stat", {"path": "/workspace/a.py"})

Inputs and outputs are JSON values. A :class:`~qi_agent.errors.ToolError` that escapes
``Agent.run`` fails the task as ``ToolFailed``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, List, Tuple, Union

from componentize_py_types import Err, Ok
from wit_world.imports import tools as _raw

from . import _wire
from .errors import ToolError, from_wit

__all__ = ["call", "call_raw", "call_many", "available", "ToolError"]


def _invalid(message: str) -> ToolError:
    return ToolError("invalid-input", message)


def call_raw(name: str, input_json: str) -> str:
    """Calls tool ``name`` with JSON text; returns its JSON text.

    Raises:
        ToolError: ``access-denied`` (not granted), ``limit-exceeded`` (tool-call budget),
            ``not-found``, ``invalid-input``, ``failed``.
    """
    try:
        return _wire.call(_raw.call, (name, input_json), _invalid)
    except Err as err:
        raise from_wit(ToolError, err) from None


def call(name: str, input: Any = None) -> Any:
    """Calls tool ``name`` with ``input`` serialized as JSON; returns its output parsed.

    Raises:
        ToolError: as :func:`call_raw`; ``invalid-input`` when ``input`` is not
            JSON-serializable, ``failed`` when the output is not JSON.
    """
    try:
        text = json.dumps(input, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ToolError("invalid-input", f"could not serialize the input for `{name}`: {error}")
    output = call_raw(name, text)
    try:
        return json.loads(output)
    except ValueError as error:
        raise ToolError("failed", f"the output of `{name}` is not JSON: {error}") from None


def call_many(requests: Iterable[Tuple[str, Any]]) -> List[Union[Any, ToolError]]:
    """Calls several tools at once (the host runs them concurrently); each ``(name, input)``
    gets its parsed output or its :class:`ToolError`, in order. One failed call never raises.

    Raises:
        ToolError: ``invalid-input`` when an input is not JSON-serializable or a name is not
            text (nothing is called then).
    """
    raw = []
    for name, value in requests:
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ToolError(
                "invalid-input", f"could not serialize the input for `{name}`: {error}"
            ) from None
        raw.append(_raw.ToolRequest(name, text))
    results: List[Union[Any, ToolError]] = []
    for result in _wire.call(_raw.call_many, (raw,), _invalid):
        if isinstance(result, Ok):
            try:
                results.append(json.loads(result.value))
            except ValueError as error:
                results.append(ToolError("failed", f"tool output is not JSON: {error}"))
        else:
            results.append(from_wit(ToolError, result))
    return results


def available() -> List[str]:
    """The tools this agent may call, sorted."""
    return list(_raw.available())
