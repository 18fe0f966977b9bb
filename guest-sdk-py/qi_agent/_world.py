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
import traceback
from typing import Any, Optional

from componentize_py_types import Err
from wit_world.imports import types as wit

from .agent import Agent, AgentType
from .errors import AgentError, HostError, ToolError
from .task import Task, TaskOutput

#: At most this many bytes of a traceback reach the report (the end of it, where the error
#: is); the host bounds error messages too.
MAX_TRACEBACK_BYTES = 16 * 1024

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


def _tail(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    cut = data[-limit:].decode("utf-8", "ignore")
    return f"[{len(data) - limit} earlier bytes of the traceback left out]\n{cut}"


def describe_exception(error: BaseException) -> str:
    """``"<Type>: <message>"`` and the traceback, the traceback cut to its last
    :data:`MAX_TRACEBACK_BYTES` bytes."""
    head = f"{type(error).__name__}: {error}"
    try:
        trace = "".join(traceback.format_exception(error))
    except BaseException:  # noqa: BLE001 - formatting must never hide the error itself
        trace = ""
    return f"{_tail(head, 4096)}\n\n{_tail(trace, MAX_TRACEBACK_BYTES)}".rstrip()


def _agent_error(error: BaseException) -> Any:
    if isinstance(error, AgentError):
        kind = error.kind
        message = error.message
    elif isinstance(error, ToolError):
        kind, message = "tool-failed", f"uncaught tool error: {error}"
    elif isinstance(error, HostError):
        kind = "failed"
        message = f"uncaught {error.interface} error: {error}\n\n{describe_exception(error)}"
    elif isinstance(error, SystemExit):
        kind, message = "failed", f"the agent called sys.exit({error.code!r})"
    else:
        kind, message = "failed", describe_exception(error)
    if kind == "invalid-input":
        return wit.AgentError_InvalidInput(message)
    if kind == "tool-failed":
        return wit.AgentError_ToolFailed(message)
    return wit.AgentError_Failed(message)


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
            info = agent().describe()
            if not info.name:
                raise TypeError(
                    f"{agent_class.__name__} has no name: set the class attribute `name` "
                    "or override describe()"
                )
            try:
                agent_type = _AGENT_TYPES[AgentType(info.agent_type)]
            except ValueError:
                raise TypeError(
                    f"{agent_class.__name__}.agent_type must be an AgentType (or one of "
                    f"{', '.join(t.value for t in AgentType)}), got {info.agent_type!r}"
                ) from None
            return wit.AgentInfo(
                name=info.name,
                version=info.version,
                agent_type=agent_type,
                capabilities=list(info.capabilities),
                description=info.description,
            )

        def run(self, task: wit.Task) -> wit.TaskOutput:
            try:
                result = agent().run(Task(task.id, task.description, task.input))
                if not isinstance(result, TaskOutput):
                    result = TaskOutput.json(result)
                return wit.TaskOutput(result.output)
            except BaseException as error:  # noqa: BLE001 - every failure becomes a report
                raise Err(_agent_error(error)) from None

    return WitWorld
