"""`py-hostile`: a Python agent that attacks the sandbox, one attack per ``mode`` of its input,
for the containment tests (``tests/all/python/containment.rs``). Each attack either ends the
agent with the host's precise error (fuel, memory, output size) or reports what Python saw.

Input ``{"mode": ..., ...}``:

- ``spin``: an infinite loop (``while True``), stopped by fuel or time;
- ``grow``: appends 1 MiB strings until memory runs out (``{"step_mb": n}``);
- ``read``: reads each of ``paths`` and reports per path ``{"ok": <first 64 chars>}`` or
  ``{"error": "<exception>"}``;
- ``write``: writes ``bytes`` bytes to ``path`` (reported the same way; with ``"raise": true``
  a failed write is not caught, so it fails the agent);
- ``listdir``: lists ``path``;
- ``connect``: opens a TCP connection to ``host``:``port`` (an IP address) and sends a request;
- ``resolve``: looks up ``host`` with ``socket.getaddrinfo`` (passed as bytes: the bundled
  CPython has no ``idna`` codec);
- ``huge``: returns a JSON string of ``bytes`` characters (``bytes`` + 2 bytes of output);
- ``raise``: raises ``ValueError`` from a nested call (the report carries the traceback);
- ``recurse``: unbounded recursion (``RecursionError``, or the wasm stack);
- ``exit``: calls ``sys.exit(3)``;
- ``environ``: reports ``os.environ`` and ``sys.argv``;
- ``bad-args``: calls host interfaces with arguments the canonical ABI cannot carry (lone
  surrogates, wrong types, out-of-range numbers) and reports, per call, the exception the SDK
  raised (``{"class", "kind", "message"}``) or ``"no error"``; then logs a record whose message
  and field hold lone surrogates;
- ``bad-output``: returns an output string holding a lone surrogate (``"via": "task-output"``
  returns ``TaskOutput`` with a non-string output instead);
- ``bad-error``: raises an exception whose ``__str__`` raises (``"kind": "str"``), one whose
  message holds a lone surrogate and is ``bytes`` long (``"kind": "huge"``), or a raw
  ``Err(AgentError_InvalidInput)`` (``"kind": "raw"``), or an ``InvalidInput`` whose message is a
  ``str`` subclass with a lying ``encode`` (``"kind": "lying"``).
"""

import os
import socket
import sys
from typing import Any, Dict

from componentize_py_types import Err
from qi_agent import Agent, InvalidInput, Task, TaskOutput, channels, context, events, log
from qi_agent import llm, sync, tools
from qi_agent.errors import HostError
from wit_world.imports import context as _context_wit
from wit_world.imports import types as wit_types


def _attempt(action) -> Dict[str, Any]:
    try:
        return {"ok": action()}
    except Exception as error:  # noqa: BLE001 - reporting what Python saw is the point
        return {"error": f"{type(error).__name__}: {error}"}


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(64).decode("utf-8", "replace")


def _write(path: str, size: int) -> int:
    chunk = b"x" * min(size, 1 << 20)
    written = 0
    with open(path, "wb") as f:
        while written < size:
            written += f.write(chunk[: size - written])
    return written


def _connect(host: str, port: int) -> str:
    # Not socket.create_connection: its getaddrinfo needs the idna codec, which the bundled
    # CPython lacks; an IP address connects directly.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        return s.recv(64).decode("utf-8", "replace")


def _inner_failure(depth: int) -> None:
    if depth == 0:
        raise ValueError("the hostile agent failed on purpose")
    _inner_failure(depth - 1)


def _refusal(action) -> Any:
    try:
        action()
    except HostError as error:
        return {"class": type(error).__name__, "kind": error.kind, "message": error.message}
    return "no error"


def _bad_args() -> Dict[str, Any]:
    lone = "\udc80"
    report = {
        "context.get(int)": _refusal(lambda: context.get(5)),
        "context.get(surrogate)": _refusal(lambda: context.get("a" + lone)),
        "context.put(doc surrogate)": _refusal(lambda: context.put("a", {"k": lone}, 1)),
        "context.put(version str)": _refusal(lambda: context.put("a", {}, "1")),
        "context.put(version 2**70)": _refusal(lambda: context.put("a", {}, 2**70)),
        "context.share(agent int)": _refusal(lambda: context.share("a", ["b", 3], ["read"])),
        "context.create(type surrogate)": _refusal(
            lambda: context.create({}, context_type=lone)
        ),
        "context.pointer_patch(value surrogate)": _refusal(
            lambda: context.pointer_patch("a", [context.PointerOp.set("/x", lone)], 1)
        ),
        "tools.call(name surrogate)": _refusal(lambda: tools.call(lone, {})),
        "tools.call(input surrogate)": _refusal(lambda: tools.call("fs.stat", {"p": lone})),
        "tools.call_many(nan)": _refusal(lambda: tools.call_many([("fs.stat", float("nan"))])),
        "events.publish(surrogate)": _refusal(lambda: events.publish("a", {"x": lone})),
        "events.subscribe(list of int)": _refusal(lambda: events.subscribe([1])),
        "sync.vote(surrogate)": _refusal(lambda: sync.vote("p", lone)),
        "channels.send(body surrogate)": _refusal(lambda: channels.send("c", lone)),
        "llm.chat(content surrogate)": _refusal(
            lambda: llm.Request("m").user(lone).send()
        ),
        "context.history(limit 2**32)": _refusal(lambda: context.history("a", 2**32)),
        "context.history(limit -1)": _refusal(lambda: context.history("a", -1)),
        "context.rollback(version -1)": _refusal(lambda: context.rollback("a", -1)),
        "channels.ack(id -1)": _refusal(lambda: channels.ack("c", -1)),
        "events.unsubscribe(id -1)": _refusal(lambda: events.Subscription(-1, 0).close()),
        "llm.chat(max_tokens 2**32)": _refusal(
            lambda: llm.Request("m").user("hi").max_tokens(2**32).send()
        ),
        "llm.chat(temperature 10**400)": _refusal(
            lambda: llm.Request("m").user("hi").temperature(10**400).send()
        ),
        "context.get(lying str)": _refusal(lambda: context.get(_LyingStr("a" + lone))),
        "context.put(lying int)": _refusal(lambda: context.put("a", {}, _LyingInt(2**70))),
        # Passed on as a plain PointerOp_Remove: the call reaches the host (and fails there).
        "context.pointer_patch(case subclass)": _refusal(
            lambda: context.pointer_patch("a", [context.PointerOp(_RemoveCase("/x"))], 1)
        ),
    }
    log.info("surrogate " + lone, field=lone, other={"k": lone})
    log.info(_LyingStr("lying message"), field=_LyingStr("lying field"))
    return report


class _LyingStr(str):
    """Claims to encode cleanly whatever it holds."""

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        class _Decodes:
            def decode(self, *args: Any, **kwargs: Any) -> str:
                return "\udc80"

        return _Decodes()


class _RemoveCase(_context_wit.PointerOp_Remove):
    """A subclass of a variant case (componentize-py finds cases by their exact type)."""


class _LyingInt(int):
    """Claims to be in every range."""

    def __lt__(self, other: Any) -> bool:
        return False

    def __ge__(self, other: Any) -> bool:
        return True

    def __le__(self, other: Any) -> bool:
        return True

    def __gt__(self, other: Any) -> bool:
        return False


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


def _recurse(n: int) -> int:
    return _recurse(n + 1) + 1


class Hostile(Agent):
    name = "py-hostile"
    description = "Attacks the sandbox from Python, one attack per mode."

    def run(self, task: Task) -> Any:
        args = task.input_json()
        if not isinstance(args, dict) or not isinstance(args.get("mode"), str):
            raise InvalidInput('input must be {"mode": "<attack>", ...}')
        mode = args["mode"]
        if mode == "spin":
            n = 0
            while True:
                n += 1
        if mode == "grow":
            hoard = []
            step = int(args.get("step_mb", 1)) << 20
            while True:
                hoard.append(bytearray(step))
        if mode == "read":
            return {p: _attempt(lambda p=p: _read(p)) for p in args.get("paths", [])}
        if mode == "write":
            if args.get("raise"):
                return {"ok": _write(args["path"], int(args.get("bytes", 1)))}
            return _attempt(lambda: _write(args["path"], int(args.get("bytes", 1))))
        if mode == "listdir":
            return _attempt(lambda: sorted(os.listdir(args.get("path", "/"))))
        if mode == "connect":
            return _attempt(lambda: _connect(args.get("host", "127.0.0.1"), int(args["port"])))
        if mode == "resolve":
            host = args["host"].encode()
            return _attempt(lambda: [a[4][0] for a in socket.getaddrinfo(host, 80)])
        if mode == "huge":
            return "x" * int(args.get("bytes", 1))
        if mode == "raise":
            _inner_failure(3)
        if mode == "recurse":
            return _recurse(0)
        if mode == "exit":
            sys.exit(3)
        if mode == "environ":
            return {"environ": dict(os.environ), "argv": list(sys.argv)}
        if mode == "bad-args":
            return _bad_args()
        if mode == "bad-output":
            if args.get("via") == "task-output":
                return TaskOutput(12345)  # type: ignore[arg-type]
            return TaskOutput('"\udc80"')
        if mode == "bad-error":
            kind = args.get("kind")
            if kind == "str":
                raise _Unprintable()
            if kind == "huge":
                raise ValueError("\udc80" + "y" * int(args.get("bytes", 1)))
            if kind == "lying":
                raise InvalidInput(_LyingStr("lying error"))
            if kind == "raw":
                raise Err(wit_types.AgentError_InvalidInput("raw \udc80 error"))
        raise InvalidInput(f"unknown mode {mode!r}")
