"""A task handed to ``Agent.run``, the output it returns, and the input of a subtask of a
coordinated run (``qi-host run <manifest>``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .errors import Failed, InvalidInput

__all__ = ["Task", "TaskOutput", "SubtaskInput", "to_json"]


def to_json(value: Any, what: str) -> str:
    """``value`` as compact JSON text.

    Raises:
        Failed: when ``value`` is not JSON-serializable (the message names ``what``).
    """
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise Failed(f"could not serialize the {what} as JSON: {error}") from None


@dataclass(frozen=True)
class Task:
    """A unit of work: ``id`` (host-assigned, unique per run), ``description`` (in words) and
    ``input`` (JSON text; ``"null"`` when there is none)."""

    id: str
    description: str
    input: str

    def input_json(self) -> Any:
        """The input parsed from JSON; an empty input is ``None``.

        Raises:
            InvalidInput: when the input is not JSON (with the parser's position).
        """
        text = self.input if self.input.strip() else "null"
        try:
            return json.loads(text)
        except ValueError as error:
            raise InvalidInput(f"task input is not valid JSON: {error}") from None

    def input_value(self) -> Any:
        """The input as JSON, or the raw text as a string when it is not JSON (never raises)."""
        try:
            return self.input_json()
        except InvalidInput:
            return self.input


@dataclass(frozen=True)
class TaskOutput:
    """A successful result: ``output`` is JSON text. ``Agent.run`` may also return any
    JSON-serializable value, which becomes ``TaskOutput.json(value)``."""

    output: str

    @staticmethod
    def json(value: Any) -> "TaskOutput":
        """``value`` serialized as the task's JSON output.

        Raises:
            Failed: when ``value`` is not JSON-serializable.
        """
        return TaskOutput(to_json(value, "task output"))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


@dataclass
class SubtaskInput:
    """The input a coordinated run hands each subtask::

        {"subtask": "<subtask id>", "attempt": 1, "inputs": {"<name>": <value>}, "config": ...}

    - ``subtask``: the subtask's id in the manifest (its participant id at sync points);
    - ``attempt``: 1 for the first run, 2 for the first retry, ...;
    - ``inputs``: the named inputs (literals or outputs of the subtasks it depends on);
    - ``config``: the ``config`` of the agent's manifest entry, or ``None``.
    """

    subtask: str
    attempt: int
    inputs: Dict[str, Any] = field(default_factory=dict)
    config: Any = None

    @staticmethod
    def from_task(task: Task) -> "SubtaskInput":
        """Parses the input of a subtask; other fields are ignored.

        Raises:
            InvalidInput: naming what is wrong (not an object, missing or empty ``subtask``,
                ``attempt`` not an integer from 1 to 2**32 - 1, ``inputs`` not an object).
        """

        def invalid(what: str) -> InvalidInput:
            return InvalidInput(f"not the input of a coordinated subtask: {what}")

        value = task.input_value()
        if not isinstance(value, dict):
            raise invalid(
                "expected a JSON object with `subtask`, `attempt`, `inputs` and `config`, "
                f"got {_kind(value)}"
            )
        subtask = value.get("subtask")
        if subtask is None:
            raise invalid("missing `subtask`")
        if not isinstance(subtask, str) or not subtask:
            raise invalid(f"`subtask` must be a non-empty string, got {json.dumps(subtask)}")
        attempt = value.get("attempt")
        if attempt is None:
            raise invalid("missing `attempt`")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt < 2**32:
            raise invalid(f"`attempt` must be an integer from 1 to {2**32 - 1}, got {attempt!r}")
        inputs = value.get("inputs")
        if inputs is None:
            inputs = {}
        elif not isinstance(inputs, dict):
            raise invalid(f"`inputs` must be an object, got {_kind(inputs)}")
        return SubtaskInput(subtask, attempt, inputs, value.get("config"))

    def input(self, name: str, default: Any = None) -> Any:
        """The input ``name``, or ``default`` when the host did not send it."""
        return self.inputs.get(name, default)

    def require(self, name: str) -> Any:
        """The input ``name``, which the agent cannot do without.

        Raises:
            InvalidInput: naming the input and the subtask when it is missing or ``null``.
        """
        value = self.inputs.get(name)
        if value is None:
            raise InvalidInput(
                f"subtask `{self.subtask}` needs the input `{name}`; add it to the subtask's "
                "`inputs` in the manifest"
            )
        return value

    def config_value(self, name: str, default: Optional[Any] = None) -> Any:
        """``config[name]`` when ``config`` is an object holding it, else ``default``."""
        if isinstance(self.config, dict):
            return self.config.get(name, default)
        return default
