"""The :class:`Agent` base class: subclass it once in your app module.

::

    from qi_agent import Agent, Task

    class Greeter(Agent):
        name = "greeter"
        description = "Greets whoever the input names."

        def run(self, task: Task):
            who = task.input_json() or "world"
            return {"greeting": f"hello, {who}"}

``qi-host build-py app.py -o greeter.wasm`` finds the one ``Agent`` subclass defined in
``app.py`` and exports it as the component's ``describe`` and ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Sequence

from .task import Task, TaskOutput

__all__ = ["Agent", "AgentInfo", "AgentType"]


class AgentType(Enum):
    """What kind of agent a component is, as declared by its author."""

    #: Does what it is told: no decisions beyond its task.
    BASIC = "basic"
    #: May take part in decisions (votes at decision points).
    DECISION_CAPABLE = "decision-capable"
    #: Built for one narrow specialty named by its capabilities.
    SPECIALIZED = "specialized"


@dataclass
class AgentInfo:
    """What an agent says about itself: a short stable ``name`` (e.g. ``"py-reviewer"``), its
    ``version``, ``agent_type``, the ``capabilities`` the host matches subtasks against, and a
    one-sentence ``description``."""

    name: str
    version: str = "0.1.0"
    agent_type: AgentType = AgentType.BASIC
    capabilities: List[str] = field(default_factory=list)
    description: str = ""


class Agent:
    """Base class of a Python agent.

    Either set the class attributes ``name`` (required), ``version``, ``agent_type``,
    ``capabilities`` and ``description``, or override :meth:`describe`. Override :meth:`run`.

    The class is instantiated once, at the first ``describe`` or ``run`` call inside the
    sandbox (not at build time), so ``__init__`` may call host interfaces. Each run of an agent
    is a fresh instance of the component: nothing survives from one task to the next.
    """

    name: str = ""
    version: str = "0.1.0"
    agent_type: AgentType = AgentType.BASIC
    capabilities: Sequence[str] = ()
    description: str = ""

    def describe(self) -> AgentInfo:
        """What the agent is; by default built from the class attributes."""
        return AgentInfo(
            name=self.name,
            version=self.version,
            agent_type=self.agent_type,
            capabilities=(
                [self.capabilities]
                if isinstance(self.capabilities, str)
                else list(self.capabilities)
            ),
            description=self.description,
        )

    def run(self, task: Task) -> TaskOutput | Any:
        """Runs one task.

        Returns:
            a :class:`TaskOutput`, or any JSON-serializable value (returned as JSON).

        Raises:
            InvalidInput, ToolFailed, Failed: to fail the task with that error. Any other
            exception fails it as ``Failed`` with its traceback.
        """
        raise NotImplementedError(f"{type(self).__name__} does not override Agent.run")
