"""What is left of the agent's budget."""

from __future__ import annotations

from dataclasses import dataclass

from wit_world.imports import budget as _raw

__all__ = ["Remaining", "remaining"]


@dataclass(frozen=True)
class Remaining:
    """What is left: ``fuel`` (wasm fuel units), ``time_ms`` (wall clock, milliseconds),
    ``tool_calls``, ``file_operations``, and ``memory_bytes`` (linear memory the agent may
    still grow by)."""

    fuel: int
    time_ms: int
    tool_calls: int
    file_operations: int
    memory_bytes: int


def remaining() -> Remaining:
    """What is left of each budget now (never raises)."""
    r = _raw.get()
    return Remaining(r.fuel, r.time_ms, r.tool_calls, r.file_operations, r.memory_bytes)
