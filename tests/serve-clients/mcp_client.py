"""Drives `qi-host serve` with the official MCP Python SDK (`mcp` 2.x), over stdio or over
Streamable HTTP.

    python mcp_client.py --url http://127.0.0.1:PORT/mcp --token TOKEN
    python mcp_client.py --stdio qi-host serve --mcp-stdio --config CONFIG --data-dir DIR

It initializes, lists the tools, runs the registered agent `hello`, runs the manifest
`code-review` with progress notifications, reads the report's context resource, subscribes
to a context it creates and waits for the update notification of a change, and checks
that a bad call is one clean error after which the session goes on.

Prints one JSON summary line on stdout and exits 0; a failed check exits 1 with the reason
on stderr. Timeouts here are hang guards only: they never decide a passing run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
from mcp import ClientSession, types
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError

# A guard against a hung server, generous enough never to decide a passing run.
HANG_GUARD_S = 60.0
# `code-review` runs seven sandboxed agents: a debug build takes a while.
RUN_GUARD_S = 600.0

TOOLS = (
    "list_agents",
    "run_agent",
    "run_task",
    "plan_task",
    "run_status",
    "terminate",
    "context_get",
    "context_put",
    "context_patch",
    "context_list",
    "context_history",
    "events_tail",
    "audit_query",
)
CONTEXT_URI = "qi://context/"


class CheckFailed(Exception):
    """A check of the server's behaviour failed."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def texts(result: types.CallToolResult) -> list[str]:
    return [c.text for c in result.content if isinstance(c, types.TextContent)]


def structured(tool: str, result: types.CallToolResult) -> dict[str, Any]:
    """The JSON result of a successful call: structuredContent, and the same JSON as text."""
    check(not result.is_error, f"{tool} failed: {texts(result)}")
    data = result.structured_content
    check(isinstance(data, dict), f"{tool}: no structuredContent object: {result!r}")
    assert isinstance(data, dict)
    lines = texts(result)
    check(len(lines) == 1, f"{tool}: expected one text content, got {lines!r}")
    check(json.loads(lines[0]) == data, f"{tool}: the text content is not the structuredContent")
    return data


class Notifications:
    """What the server sent on its own: resource updates, transport faults."""

    def __init__(self) -> None:
        self.updated: dict[str, int] = {}
        self.waiters: dict[str, anyio.Event] = {}
        self.faults: list[str] = []

    async def handle(self, message: types.ServerNotification | Exception) -> None:
        if isinstance(message, Exception):
            self.faults.append(repr(message))
        elif isinstance(message, types.ResourceUpdatedNotification):
            uri = str(message.params.uri)
            self.updated[uri] = self.updated.get(uri, 0) + 1
            self.waiter(uri).set()

    def waiter(self, uri: str) -> anyio.Event:
        return self.waiters.setdefault(uri, anyio.Event())


@asynccontextmanager
async def connect(
    args: argparse.Namespace, notes: Notifications, stream_open: anyio.Event
) -> AsyncIterator[ClientSession]:
    """A session over stdio or Streamable HTTP. `stream_open` is set once the server can send
    messages that answer no request (over HTTP: once its GET stream has been answered)."""
    if args.stdio:
        params = StdioServerParameters(
            command=args.stdio[0], args=list(args.stdio[1:]), env=dict(os.environ)
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, message_handler=notes.handle) as session:
                stream_open.set()
                yield session
        return

    async def on_response(response: httpx2.Response) -> None:
        # The server sends resource updates on the session's GET stream: a notification
        # sent before the stream exists has nowhere to go, so the test waits for it.
        if response.request.method == "GET" and response.status_code == 200:
            stream_open.set()

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=httpx2.Timeout(30.0, read=RUN_GUARD_S),
        event_hooks={"response": [on_response]},
    )
    async with http:
        async with streamable_http_client(args.url, http_client=http) as (read, write):
            async with ClientSession(read, write, message_handler=notes.handle) as session:
                yield session


async def initialize(session: ClientSession) -> dict[str, Any]:
    init = await session.initialize()
    check(
        init.protocol_version == "2025-11-25",
        f"negotiated protocol version {init.protocol_version!r}, expected 2025-11-25",
    )
    check(init.server_info.name == "qi-host", f"server info {init.server_info!r}")
    caps = init.capabilities
    check(caps.tools is not None, f"no tools capability: {caps!r}")
    check(
        caps.resources is not None and caps.resources.subscribe is True,
        f"no resources.subscribe capability: {caps!r}",
    )
    return {"protocolVersion": init.protocol_version, "server": init.server_info.name}


async def list_tools(session: ClientSession) -> list[str]:
    listed = await session.list_tools()
    names = [t.name for t in listed.tools]
    missing = [t for t in TOOLS if t not in names]
    check(not missing, f"tools/list lacks {missing}; it has {names}")
    for tool in listed.tools:
        check(
            tool.input_schema.get("type") == "object",
            f"{tool.name}: inputSchema is not of type object: {tool.input_schema!r}",
        )
        check(bool(tool.description), f"{tool.name}: no description")
    return names


async def run_agent(session: ClientSession) -> dict[str, Any]:
    agents = structured("list_agents", await session.call_tool("list_agents", {}))
    names = [a["name"] for a in agents["agents"]]
    check("hello" in names, f"list_agents: no `hello` in {names}")
    manifests = [m["name"] for m in agents["manifests"]]
    check("code-review" in manifests, f"list_agents: no `code-review` in {manifests}")
    task = "greet the official MCP client"
    report = structured(
        "run_agent",
        await session.call_tool(
            "run_agent", {"agent": "hello", "task": task, "input": {"name": "mcp"}}
        ),
    )
    output = report.get("output")
    check(isinstance(output, dict), f"run_agent: no output object: {report}")
    assert isinstance(output, dict)
    check(output.get("echo") == task, f"run_agent: echo {output.get('echo')!r} != {task!r}")
    check(output.get("input") == {"name": "mcp"}, f"run_agent: input {output.get('input')!r}")
    check(output.get("agent") == "hello", f"run_agent: agent {output.get('agent')!r}")
    check(isinstance(report.get("agent_id"), str), f"run_agent: no agentId: {report}")
    fuel = report.get("usage", {}).get("fuel_consumed")
    check(isinstance(fuel, int) and fuel > 0, f"run_agent: usage.fuel_consumed {fuel!r}")
    return report


Progress = list[tuple[float, float | None]]


async def run_task(session: ClientSession) -> tuple[dict[str, Any], Progress]:
    seen: Progress = []
    first = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))
        first.set()

    with anyio.fail_after(RUN_GUARD_S):
        result = await session.call_tool(
            "run_task", {"manifest": "code-review"}, progress_callback=on_progress
        )
    out = structured("run_task", result)
    check(out.get("state") == "completed", f"run_task: state {out.get('state')!r}: {out}")
    run_id = out.get("runId")
    check(isinstance(run_id, str) and bool(run_id), f"run_task: no runId: {out}")
    report = out.get("report", {})
    check(report.get("coordinationId") == run_id, f"run_task: coordinationId != runId: {out}")
    results = report.get("results")
    check(isinstance(results, list) and len(results) == 7, f"run_task: results {results!r}")
    assert isinstance(results, list)
    states = {r.get("id"): r.get("state") for r in results}
    check(set(states.values()) == {"completed"}, f"run_task: subtask states {states}")
    # Progress callbacks run as tasks of their own: the answer may overtake the last ones.
    with anyio.fail_after(HANG_GUARD_S):
        await first.wait()
    check(len(seen) >= 1, "run_task: no progress notification")
    for (done, _), (later, _) in zip(seen, seen[1:]):
        check(later >= done, f"run_task: progress went back: {seen}")
    for done, total in seen:
        check(total == 7.0, f"run_task: progress total {total!r}, expected 7 subtasks")
        check(0.0 <= done <= 7.0, f"run_task: progress {done} out of range")
    return out, seen


async def read_json(session: ClientSession, uri: str) -> dict[str, Any]:
    read = await session.read_resource(uri)
    check(len(read.contents) == 1, f"resources/read {uri}: {len(read.contents)} contents")
    content = read.contents[0]
    check(isinstance(content, types.TextResourceContents), f"resources/read {uri}: {content!r}")
    assert isinstance(content, types.TextResourceContents)
    check(str(content.uri) == uri, f"resources/read {uri}: content uri {content.uri}")
    check(content.mime_type == "application/json", f"resources/read {uri}: {content.mime_type}")
    view = json.loads(content.text)
    check(isinstance(view, dict), f"resources/read {uri}: not a JSON object")
    assert isinstance(view, dict)
    return view


async def report_resource(session: ClientSession, run_id: str) -> int:
    uri = f"{CONTEXT_URI}review/inventory/{run_id}"
    listed = await session.list_resources()
    uris = [str(r.uri) for r in listed.resources]
    check(uri in uris, f"resources/list lacks {uri}: {uris}")
    for r in listed.resources:
        check(r.mime_type == "application/json", f"resources/list: {r.uri} has {r.mime_type}")
    view = await read_json(session, uri)
    check(view.get("id") == f"review/inventory/{run_id}", f"{uri}: id {view.get('id')!r}")
    check(view.get("contextType") == "report", f"{uri}: contextType {view.get('contextType')!r}")
    doc = view.get("doc")
    check(isinstance(doc, dict), f"{uri}: no doc object: {view}")
    assert isinstance(doc, dict)
    check(doc.get("files") == 9, f"{uri}: the report covers {doc.get('files')!r} files, not 9")
    markdown = doc.get("markdown")
    check(
        isinstance(markdown, str) and "# Code review report" in markdown,
        f"{uri}: no markdown report: {doc}",
    )
    check("verdict" in doc, f"{uri}: no verdict: {doc}")
    return len(uris)


async def subscription(
    session: ClientSession, notes: Notifications, stream_open: anyio.Event
) -> str:
    ctx = f"notes/mcp-client-{uuid.uuid4().hex[:12]}"
    uri = f"{CONTEXT_URI}{ctx}"
    put = structured(
        "context_put",
        await session.call_tool(
            "context_put", {"id": ctx, "doc": {"step": 1}, "context_type": "notes"}
        ),
    )
    version = put.get("version")
    check(isinstance(version, int), f"context_put: no version: {put}")
    assert isinstance(version, int)
    view = await read_json(session, uri)
    check(view.get("doc") == {"step": 1}, f"{uri}: doc {view.get('doc')!r}")
    check(view.get("contextType") == "notes", f"{uri}: contextType {view.get('contextType')!r}")
    with warnings.catch_warnings():
        # resources/subscribe is the 2025-11-25 way (2026-07-28 replaces it).
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await session.subscribe_resource(uri)
    check(uri not in notes.updated, f"{uri}: an update before any change")
    try:
        with anyio.fail_after(HANG_GUARD_S):
            await stream_open.wait()
    except TimeoutError:
        raise CheckFailed(
            f"the server did not answer the session's GET stream within {HANG_GUARD_S:.0f} s: "
            "resource updates would have nowhere to go"
        ) from None
    patched = structured(
        "context_patch",
        await session.call_tool(
            "context_patch", {"id": ctx, "patch": {"step": 2}, "base_version": version}
        ),
    )
    check(patched.get("version") == version + 1, f"context_patch: {patched}")
    try:
        with anyio.fail_after(HANG_GUARD_S):
            await notes.waiter(uri).wait()
    except TimeoutError:
        raise CheckFailed(
            f"no notifications/resources/updated for {uri} within {HANG_GUARD_S:.0f} s "
            f"(updates seen: {notes.updated}; transport faults: {notes.faults})"
        ) from None
    view = await read_json(session, uri)
    check(view.get("doc") == {"step": 2}, f"{uri}: doc after the patch {view.get('doc')!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await session.unsubscribe_resource(uri)
    return uri


async def bad_calls(session: ClientSession) -> dict[str, str]:
    """An unknown tool and a wrong-typed argument: each one clean error; the session goes on."""
    seen: dict[str, str] = {}
    try:
        unknown = await session.call_tool("no_such_tool", {})
    except MCPError as e:
        check(e.code == types.INVALID_PARAMS, f"unknown tool: JSON-RPC error {e.code}: {e.message}")
        check("no_such_tool" in e.message, f"unknown tool: the error does not name it: {e.message}")
        seen["unknownTool"] = f"{e.code}: {e.message}"
    else:
        check(unknown.is_error is True, f"unknown tool: not an error: {unknown!r}")
        seen["unknownTool"] = " ".join(texts(unknown))
    wrong = await session.call_tool("run_agent", {"agent": "hello", "task": 42})
    check(wrong.is_error is True, f"run_agent with task 42: not an error: {wrong!r}")
    lines = texts(wrong)
    check(
        len(lines) == 1 and lines[0].startswith("invalid: ") and "run_agent" in lines[0],
        f"run_agent with task 42: expected one line `invalid: ...` naming run_agent, got {lines!r}",
    )
    seen["wrongType"] = lines[0]
    # Still serving, in the same session.
    await session.send_ping()
    again = structured(
        "run_agent", await session.call_tool("run_agent", {"agent": "hello", "task": "again"})
    )
    check(again.get("output", {}).get("echo") == "again", f"run_agent after errors: {again}")
    return seen


async def run(args: argparse.Namespace) -> dict[str, Any]:
    notes = Notifications()
    stream_open = anyio.Event()
    summary: dict[str, Any] = {"transport": "stdio" if args.stdio else "http"}
    async with connect(args, notes, stream_open) as session:
        with anyio.fail_after(HANG_GUARD_S):
            summary.update(await initialize(session))
            summary["tools"] = len(await list_tools(session))
            summary["agent_id"] = (await run_agent(session))["agent_id"]
        out, progress = await run_task(session)
        summary["runId"] = out["runId"]
        summary["progress"] = len(progress)
        summary["lastProgress"] = progress[-1][0]
        with anyio.fail_after(HANG_GUARD_S):
            summary["resources"] = await report_resource(session, out["runId"])
        summary["updated"] = await subscription(session, notes, stream_open)
        with anyio.fail_after(HANG_GUARD_S):
            summary["errors"] = await bad_calls(session)
        check(not notes.faults, f"transport faults: {notes.faults}")
    summary["ok"] = True
    return summary


def first_failure(e: BaseException) -> CheckFailed | None:
    if isinstance(e, CheckFailed):
        return e
    if isinstance(e, BaseExceptionGroup):
        for inner in e.exceptions:
            if (found := first_failure(inner)) is not None:
                return found
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the MCP endpoint, e.g. http://127.0.0.1:8080/mcp")
    where.add_argument(
        "--stdio",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="the server command and its arguments (the rest of the line)",
    )
    parser.add_argument("--token", help="the bearer token (with --url)")
    args = parser.parse_args()
    if args.url and not args.token:
        parser.error("--url needs --token")
    if args.stdio is not None and not args.stdio:
        parser.error("--stdio needs a command")
    try:
        summary = anyio.run(run, args)
    except BaseException as e:  # noqa: BLE001 - reported, then a non-zero exit
        failure = first_failure(e)
        if failure is None:
            raise
        print(f"mcp_client: FAILED: {failure}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
