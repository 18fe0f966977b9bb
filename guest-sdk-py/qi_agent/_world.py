"""The component's exports: turns the app's :class:`Agent` subclass into the ``qi:agent/agent``
world's ``describe`` and ``run``. Used by the entry module ``qi-host build-py`` generates;
agents never import it.

The entry module does ``WitWorld = export("<app module>")``. That runs at build time
(componentize-py pre-initializes the component), so an app without exactly one ``Agent``
subclass fails the build with a message saying so.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from typing import Any, Optional

from componentize_py_types import Err
from wit_world.imports import types as wit

from . import _wire
from .agent import Agent, AgentType
from .errors import AgentError, Failed, HostError, ToolError
from .task import Task, TaskOutput

#: At most this many bytes of a traceback reach the report (the end of it, where the error
#: is); the host bounds error messages too.
MAX_TRACEBACK_BYTES = 16 * 1024

#: At most this many bytes of an error message reach the report (the start of it, with the
#: exception's type); the rest is replaced by a marker saying how much was left out.
MAX_MESSAGE_BYTES = 24 * 1024

_AGENT_TYPES = {
    AgentType.BASIC: wit.AgentType.BASIC,
    AgentType.DECISION_CAPABLE: wit.AgentType.DECISION_CAPABLE,
    AgentType.SPECIALIZED: wit.AgentType.SPECIALIZED,
}


def find_agent(module_name: str) -> type[Agent]:
    """The one concrete :class:`Agent` subclass defined in module ``module_name``.

    Raises:
        TypeError: when it defines none or several (the build reports this).
    """
    module = importlib.import_module(module_name)
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Agent)
        and obj is not Agent
        and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
    ]
    if len(found) != 1:
        names = ", ".join(sorted(cls.__name__ for cls in found)) or "none"
        raise TypeError(
            f"{module_name}.py must define exactly one subclass of qi_agent.Agent "
            f"(found: {names})"
        )
    return found[0]


def _head(text: str, limit: int, what: str) -> str:
    """``text`` cut to its first ``limit`` UTF-8 bytes, with a marker saying how much went."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    cut = data[:limit].decode("utf-8", "ignore")
    return f"{cut}\n[{len(data) - limit} more bytes of the {what} left out]"


def _tail(text: str, limit: int, what: str) -> str:
    """``text`` cut to its last ``limit`` UTF-8 bytes, with a marker saying how much went."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    cut = data[-limit:].decode("utf-8", "ignore")
    return f"[{len(data) - limit} earlier bytes of the {what} left out]\n{cut}"


def describe_exception(error: BaseException) -> str:
    """``"<Type>: <message>"`` (its first 4 KiB) and the traceback's frames (their last
    :data:`MAX_TRACEBACK_BYTES` bytes). Never raises, whatever ``error``'s ``__str__`` does."""
    head = _head(f"{_wire.clean(type(error).__name__)}: {_wire.clean(error)}", 4096, "message")
    try:
        # Frames only: the message is in the head already, cut (a traceback formatted with a
        # 100 MB message would copy it several times).
        frames = "".join(traceback.format_tb(error.__traceback__))
        trace = "Traceback (most recent call last):\n" + _tail(
            _wire.clean(frames), MAX_TRACEBACK_BYTES, "traceback"
        )
    except BaseException:  # noqa: BLE001 - formatting must never hide the error itself
        trace = ""
    return f"{head}\n\n{trace}".rstrip()


_WIT_ERRORS = {
    "invalid-input": wit.AgentError_InvalidInput,
    "tool-failed": wit.AgentError_ToolFailed,
    "failed": wit.AgentError_Failed,
}


def _agent_error_of(error: BaseException) -> Any:
    if isinstance(error, Err) and isinstance(
        error.value, (wit.AgentError_InvalidInput, wit.AgentError_ToolFailed, wit.AgentError_Failed)
    ):
        # A raw WIT error raised by the agent itself.
        kind = {
            wit.AgentError_InvalidInput: "invalid-input",
            wit.AgentError_ToolFailed: "tool-failed",
        }.get(type(error.value), "failed")
        message = _wire.clean(error.value.value)
    elif isinstance(error, AgentError):
        kind = error.kind if error.kind in _WIT_ERRORS else "failed"
        message = _wire.clean(error.message)
    elif isinstance(error, ToolError):
        kind, message = "tool-failed", f"uncaught tool error: {_wire.clean(error)}"
    elif isinstance(error, HostError):
        kind = "failed"
        message = f"uncaught {_wire.clean(error.interface)} error\n\n{describe_exception(error)}"
    elif isinstance(error, SystemExit):
        kind, message = "failed", f"the agent called sys.exit({_wire.clean(repr(error.code))})"
    else:
        kind, message = "failed", describe_exception(error)
    return _WIT_ERRORS[kind](_head(message, MAX_MESSAGE_BYTES, "message"))


def _agent_error(error: BaseException) -> Any:
    """The WIT ``agent-error`` for ``error``. Never raises: a failure while describing the
    error gives a fixed ``failed``."""
    try:
        return _agent_error_of(error)
    except BaseException:  # noqa: BLE001 - the report must always be produced
        return wit.AgentError_Failed("the agent failed, and describing its error failed too")


def _text_field(value: Any, owner: str, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{owner}.{field} must be a str, got {type(value).__name__}")
    problem = _wire.text_problem(value)
    if problem:
        raise TypeError(f"{owner}.{field} {problem}")
    return value


def export(module_name: str) -> type:
    """The ``WitWorld`` class componentize-py exports, running the one ``Agent`` subclass of
    ``module_name``."""
    agent_class = find_agent(module_name)
    instance: Optional[Agent] = None

    def agent() -> Agent:
        nonlocal instance
        if instance is None:
            instance = agent_class()
        return instance

    class WitWorld:
        def describe(self) -> wit.AgentInfo:
            # No error result in WIT: a failure here traps, and the host reports the spawn as
            # failed. What went wrong goes to stderr first (the host's capture keeps it).
            try:
                return self._describe()
            except BaseException as error:  # noqa: BLE001 - said, then raised again
                try:
                    sys.stderr.write(f"describe() failed: {describe_exception(error)}\n")
                except BaseException:  # noqa: BLE001
                    pass
                raise

        def _describe(self) -> wit.AgentInfo:
            owner = agent_class.__name__
            info = agent().describe()
            name = _text_field(info.name, owner, "name")
            if not name:
                raise TypeError(
                    f"{owner} has no name: set the class attribute `name` or override describe()"
                )
            try:
                agent_type = _AGENT_TYPES[AgentType(info.agent_type)]
            except ValueError:
                raise TypeError(
                    f"{owner}.agent_type must be an AgentType (or one of "
                    f"{', '.join(t.value for t in AgentType)}), got {info.agent_type!r}"
                ) from None
            capabilities = info.capabilities
            if isinstance(capabilities, str) or not isinstance(capabilities, (list, tuple)):
                raise TypeError(
                    f"{owner}.capabilities must be a list of str, got "
                    f"{type(capabilities).__name__}"
                )
            return wit.AgentInfo(
                name=name,
                version=_text_field(info.version, owner, "version"),
                agent_type=agent_type,
                capabilities=[
                    _text_field(c, owner, f"capabilities[{i}]") for i, c in enumerate(capabilities)
                ],
                description=_text_field(info.description, owner, "description"),
            )

        def run(self, task: wit.Task) -> wit.TaskOutput:
            try:
                result = agent().run(Task(task.id, task.description, task.input))
                if not isinstance(result, TaskOutput):
                    result = TaskOutput.json(result)
                output = result.output
                if not isinstance(output, str):
                    raise Failed(f"TaskOutput.output must be a str, got {type(output).__name__}")
                problem = _wire.text_problem(output)
                if problem:
                    raise Failed(f"the task output {problem}")
                return wit.TaskOutput(output)
            except BaseException as error:  # noqa: BLE001 - every failure becomes a report
                raise Err(_agent_error(error)) from None

    return WitWorld
