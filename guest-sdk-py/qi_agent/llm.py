"""Model calls through the host's LLM broker: the operator configures providers and keys, the
agent's spec names the models it may use (``allowedModels``) and its budgets
(``maxLlmCalls``, ``maxInputTokens``, ``maxOutputTokens``, ``maxCostUsd``). The key never
enters the sandbox.

::

    from qi_agent import llm
    answer = llm.Request("fast").system("Answer in one word.").user("Capital of France?").send()
    verdict, _ = llm.Request("fast").user(prompt).json_object().send_json()
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import llm as _raw

from . import tools as _tools
from . import _wire
from .errors import LlmError, ToolError, from_wit

__all__ = [
    "LlmError",
    "ToolCall",
    "Message",
    "Usage",
    "Response",
    "Request",
    "ToolLoop",
    "chat",
    "chat_json",
    "models",
    "run_tools",
]

_ROLES = {
    "system": _raw.Role.SYSTEM,
    "user": _raw.Role.USER,
    "assistant": _raw.Role.ASSISTANT,
    "tool": _raw.Role.TOOL,
}
_FINISH = {
    _raw.FinishReason.STOP: "stop",
    _raw.FinishReason.LENGTH: "length",
    _raw.FinishReason.TOOL_CALLS: "tool-calls",
    _raw.FinishReason.CONTENT_FILTER: "content-filter",
    _raw.FinishReason.OTHER: "other",
}


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model asked for: ``id``, tool ``name``, ``arguments`` (JSON text)."""

    id: str
    name: str
    arguments: str


@dataclass
class Message:
    """One message of a conversation: ``role`` (``"system"``, ``"user"``, ``"assistant"``,
    ``"tool"``), ``content``, an assistant's ``tool_calls``, a tool message's
    ``tool_call_id``."""

    role: str
    content: str
    tool_calls: List[ToolCall] = field(default_factory=list)
    tool_call_id: Optional[str] = None


@dataclass(frozen=True)
class Usage:
    """Tokens of a call: ``input_tokens`` and ``output_tokens`` as the provider counted."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Response:
    """A model's answer: ``content``, ``tool_calls``, ``finish_reason`` (``"stop"``,
    ``"length"``, ``"tool-calls"``, ``"content-filter"``, ``"other"``), the answering
    ``model``, ``usage`` and ``replayed`` (answered from a recording, nothing paid)."""

    content: str
    tool_calls: List[ToolCall]
    finish_reason: str
    model: str
    usage: Usage
    replayed: bool

    def to_message(self) -> Message:
        """The answer as an assistant message, to continue the conversation."""
        return Message("assistant", self.content, list(self.tool_calls))


class Request:
    """A chat request, built step by step; ``model`` is an alias the operator configured or
    ``"<provider>/<model>"``. Each builder method returns the request."""

    def __init__(self, model: str) -> None:
        self.model: str = model
        self.messages: List[Message] = []
        self.tools: List[Tuple[str, str, Any]] = []
        self._tool_choice: Any = None
        self._format: Any = None
        self._max_tokens: Optional[int] = None
        self._temperature: Optional[float] = None
        self._top_p: Optional[float] = None
        self._stop: List[str] = []

    def system(self, text: str) -> "Request":
        """Appends a system message."""
        return self.message(Message("system", text))

    def user(self, text: str) -> "Request":
        """Appends a user message."""
        return self.message(Message("user", text))

    def assistant(self, text: str) -> "Request":
        """Appends an assistant message."""
        return self.message(Message("assistant", text))

    def tool_result(self, call_id: str, content: str) -> "Request":
        """Appends the result of tool call ``call_id``."""
        return self.message(Message("tool", content, [], call_id))

    def message(self, message: Message) -> "Request":
        """Appends ``message``."""
        if message.role not in _ROLES:
            raise ValueError(f"unknown role {message.role!r}; use one of {', '.join(_ROLES)}")
        self.messages.append(message)
        return self

    def tool(self, name: str, description: str, parameters: Any) -> "Request":
        """Offers a host tool to the model; ``parameters`` is its JSON Schema."""
        self.tools.append((name, description, parameters))
        return self

    def tool_choice(self, choice: str) -> "Request":
        """``"auto"``, ``"none"``, ``"required"``, or a tool's name the model must call."""
        self._tool_choice = {
            "auto": _raw.ToolChoice_Auto(),
            "none": _raw.ToolChoice_None_(),
            "required": _raw.ToolChoice_Required(),
        }.get(choice) or _raw.ToolChoice_Named(choice)
        return self

    def max_tokens(self, n: int) -> "Request":
        """Caps the answer's tokens (the host clamps it to what the budget has left)."""
        self._max_tokens = n
        return self

    def temperature(self, t: float) -> "Request":
        """Sampling temperature."""
        self._temperature = t
        return self

    def top_p(self, p: float) -> "Request":
        """Nucleus sampling mass."""
        self._top_p = p
        return self

    def stop(self, sequence: str) -> "Request":
        """Adds a stop sequence."""
        self._stop.append(sequence)
        return self

    def json_object(self) -> "Request":
        """Asks for a JSON object answer."""
        self._format = _raw.ResponseFormat_JsonObject()
        return self

    def json_schema(self, name: str, schema: Any, strict: bool = True) -> "Request":
        """Asks for an answer matching JSON Schema ``schema`` (the host bounds its size)."""
        self._format = _raw.ResponseFormat_JsonSchema(
            _raw.JsonSchemaFormat(name, json.dumps(schema), strict)
        )
        return self

    def to_wit(self) -> Any:
        """The request in the generated bindings' form (used by :func:`chat`)."""
        return _raw.Request(
            model=self.model,
            messages=[
                _raw.Message(
                    _ROLES[m.role],
                    m.content,
                    [_raw.ToolCall(c.id, c.name, c.arguments) for c in m.tool_calls],
                    m.tool_call_id,
                )
                for m in self.messages
            ],
            tools=[
                _raw.ToolDefinition(name, description, json.dumps(parameters))
                for name, description, parameters in self.tools
            ],
            tool_choice=self._tool_choice,
            response_format=self._format,
            max_tokens=self._max_tokens,
            temperature=self._temperature,
            top_p=self._top_p,
            stop=list(self._stop),
        )

    def send(self) -> Response:
        """:func:`chat` with this request."""
        return chat(self)

    def send_json(self) -> Tuple[Any, Response]:
        """:func:`chat_json` with this request."""
        return chat_json(self)


def chat(request: Request) -> Response:
    """Sends ``request`` through the broker.

    Raises:
        LlmError: ``access-denied`` (model not in ``allowedModels``), ``limit-exceeded`` (a
            budget would be passed; nothing was sent), ``invalid-request``, ``rate-limited``
            (``retry_after_ms``), ``unavailable``, ``provider-error``.
    """
    try:
        r = _wire.call(_raw.chat, (request.to_wit(),), lambda m: LlmError("invalid-request", m))
    except Err as err:
        raise from_wit(LlmError, err) from None
    return Response(
        r.content,
        [ToolCall(c.id, c.name, c.arguments) for c in r.tool_calls],
        _FINISH.get(r.finish_reason, "other"),
        r.model,
        Usage(r.usage.input_tokens, r.usage.output_tokens),
        r.replayed,
    )


def chat_json(request: Request) -> Tuple[Any, Response]:
    """Sends ``request`` and parses the answer's content as JSON (a fenced ```json block is
    accepted too).

    Raises:
        LlmError: as :func:`chat`; ``provider-error`` when the answer is not JSON.
    """
    response = chat(request)
    text = response.content.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        return json.loads(text), response
    except ValueError as error:
        raise LlmError("provider-error", f"the answer is not JSON: {error}") from None


def models() -> List[str]:
    """The models this agent may call (aliases and ``provider/model`` names)."""
    return list(_raw.models())


@dataclass
class ToolLoop:
    """The result of :func:`run_tools`: the last ``response``, the whole conversation in
    ``request``, ``rounds`` of tool calls run, ``tool_results`` as ``(call, output or
    ToolError)``, summed ``usage``, and ``replayed`` (every answer came from a recording)."""

    response: Response
    request: Request
    rounds: int
    tool_results: List[Tuple[ToolCall, Any]]
    usage: Usage
    replayed: bool

    @property
    def finished(self) -> bool:
        """``True`` when the last answer asked for no tool call."""
        return not self.response.tool_calls


def run_tools(
    request: Request,
    max_rounds: int = 8,
    call_tool: Callable[[str, str], str] = _tools.call_raw,
) -> ToolLoop:
    """Sends ``request`` and lets the model call tools for at most ``max_rounds`` rounds.

    Each round appends the answer (with its calls), runs each call in order (only tools the
    request offered; any other is answered ``access-denied`` and runs nothing), appends a
    ``tool`` message with the output or the error's text, and sends again.

    Raises:
        LlmError: the first model call error. A failed tool call is not an error: the model
            is told.
    """
    response = chat(request)
    inp, out, replayed = response.usage.input_tokens, response.usage.output_tokens, response.replayed
    rounds = 0
    results: List[Tuple[ToolCall, Any]] = []
    offered = {name for name, _, _ in request.tools}
    while response.tool_calls and rounds < max_rounds:
        request.message(response.to_message())
        for call in response.tool_calls:
            arguments = call.arguments if call.arguments.strip() else "{}"
            output: Any
            if call.name in offered:
                try:
                    output = call_tool(call.name, arguments)
                except ToolError as error:
                    output = error
            else:
                output = ToolError(
                    "access-denied",
                    f"tool `{call.name}` was not offered to the model in this request",
                )
            request.tool_result(call.id, str(output))
            results.append((call, output))
        rounds += 1
        response = chat(request)
        inp += response.usage.input_tokens
        out += response.usage.output_tokens
        replayed = replayed and response.replayed
    return ToolLoop(response, request, rounds, results, Usage(inp, out), replayed)
