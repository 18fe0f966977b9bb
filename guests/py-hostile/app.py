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
- ``environ``: reports ``os.environ`` and ``sys.argv``.
"""

import os
import socket
import sys
from typing import Any, Dict

from qi_agent import Agent, InvalidInput, Task


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
        raise InvalidInput(f"unknown mode {mode!r}")
