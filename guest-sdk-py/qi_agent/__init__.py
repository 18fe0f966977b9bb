"""qi-agent: write qi-host agents in Python.

An agent is a class deriving from :class:`Agent`; ``qi-host build-py app.py -o agent.wasm``
turns the module into a WebAssembly component that qi-host runs in its sandbox. Each host
interface is a module: :mod:`qi_agent.log`, :mod:`qi_agent.tools`, :mod:`qi_agent.budget`,
:mod:`qi_agent.context`, :mod:`qi_agent.events`, :mod:`qi_agent.sync`,
:mod:`qi_agent.channels`, :mod:`qi_agent.llm`. Agents never touch the generated bindings.

::

    from qi_agent import Agent, Task, log

    class Hello(Agent):
        name = "py-hello"
        description = "Greets whoever the input names."

        def run(self, task: Task):
            who = task.input_json() or "world"
            log.info("greeting", who=who)
            return {"greeting": f"Hello, {who}!"}
"""

from . import budget, channels, context, events, llm, log, sync, tools
from .agent import Agent, AgentInfo, AgentType
from .errors import (
    AgentError,
    ChannelError,
    ContextError,
    EventError,
    Failed,
    HostError,
    InvalidInput,
    LlmError,
    SyncError,
    ToolError,
    ToolFailed,
)
from .task import SubtaskInput, Task, TaskOutput

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentInfo",
    "AgentType",
    "Task",
    "TaskOutput",
    "SubtaskInput",
    "AgentError",
    "InvalidInput",
    "ToolFailed",
    "Failed",
    "HostError",
    "ToolError",
    "ContextError",
    "EventError",
    "SyncError",
    "ChannelError",
    "LlmError",
    "budget",
    "channels",
    "context",
    "events",
    "llm",
    "log",
    "sync",
    "tools",
]
