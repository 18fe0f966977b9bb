"""Loads qi-host's tools into agent frameworks over MCP (Streamable HTTP) and calls them
directly, with no model: LangChain (`langchain-mcp-adapters`) and LlamaIndex
(`llama-index-tools-mcp`).

    python frameworks.py --url http://127.0.0.1:PORT/mcp --token TOKEN [--framework NAME]...

Each framework loads every tool, creates a context with `context_put`, reads it back with
`context_get` and runs the registered agent `hello` with `run_agent`. The frameworks are
imported only when chosen (the two need different major versions of the `mcp` package,
so they may live in different environments).

Prints one JSON summary line on stdout and exits 0; a failed check exits 1 with the reason
on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

HANG_GUARD_S = 60.0
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

# A tool call as the framework makes it: arguments in, the tool's JSON result out.
Call = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class CheckFailed(Exception):
    """A check of the server's behaviour failed."""


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def one_json_text(framework: str, tool: str, texts: list[str]) -> dict[str, Any]:
    check(len(texts) == 1, f"{framework} {tool}: expected one text content, got {texts!r}")
    value = json.loads(texts[0])
    check(isinstance(value, dict), f"{framework} {tool}: the text is not a JSON object")
    assert isinstance(value, dict)
    return value


async def exercise(framework: str, names: list[str], call: Call) -> dict[str, Any]:
    """The calls every framework makes, through its own tool objects."""
    missing = [t for t in TOOLS if t not in names]
    check(not missing, f"{framework}: the loaded tools lack {missing}; loaded {names}")
    ctx = f"notes/{framework}-{uuid.uuid4().hex[:12]}"
    doc = {"framework": framework, "items": [1, 2, 3]}
    put = await call("context_put", {"id": ctx, "doc": doc, "context_type": "notes"})
    check(isinstance(put.get("version"), int), f"{framework} context_put: {put}")
    got = await call("context_get", {"id": ctx})
    check(got.get("id") == ctx, f"{framework} context_get: id {got.get('id')!r}")
    check(got.get("doc") == doc, f"{framework} context_get: doc {got.get('doc')!r} != {doc}")
    check(got.get("version") == put["version"], f"{framework} context_get: {got} after {put}")
    check(got.get("contextType") == "notes", f"{framework} context_get: {got}")
    task = f"greet {framework}"
    report = await call("run_agent", {"agent": "hello", "task": task, "input": {"n": 1}})
    output = report.get("output")
    check(isinstance(output, dict), f"{framework} run_agent: no output: {report}")
    assert isinstance(output, dict)
    check(output.get("echo") == task, f"{framework} run_agent: echo {output.get('echo')!r}")
    check(output.get("input") == {"n": 1}, f"{framework} run_agent: input {output.get('input')!r}")
    check(isinstance(report.get("agent_id"), str), f"{framework} run_agent: {report}")
    return {
        "tools": len(names),
        "context": ctx,
        "version": got["version"],
        "agent_id": report["agent_id"],
    }


async def langchain(url: str, token: str) -> dict[str, Any]:
    from langchain_core.messages import ToolMessage
    from langchain_mcp_adapters.client import MultiServerMCPClient

    client = MultiServerMCPClient(
        {
            "qi-host": {
                "transport": "streamable_http",
                "url": url,
                "headers": {"Authorization": f"Bearer {token}"},
            }
        }
    )
    tools = {t.name: t for t in await client.get_tools()}
    calls = 0

    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        # Invoked with a tool call (as a model would), the tool answers with a ToolMessage
        # that carries the structured result as its artifact.
        message = await tools[name].ainvoke(
            {"type": "tool_call", "id": f"call-{calls}", "name": name, "args": args}
        )
        check(isinstance(message, ToolMessage), f"langchain {name}: {message!r}")
        assert isinstance(message, ToolMessage)
        check(message.status == "success", f"langchain {name}: {message.status}: {message.content}")
        content = message.content
        blocks = [content] if isinstance(content, str) else content
        texts = [
            b if isinstance(b, str) else str(b.get("text"))
            for b in blocks
            if isinstance(b, str) or b.get("type") == "text"
        ]
        value = one_json_text("langchain", name, texts)
        artifact = message.artifact
        check(
            isinstance(artifact, dict) and artifact.get("structured_content") == value,
            f"langchain {name}: the artifact is not the text's JSON: {artifact!r}",
        )
        return value

    return await exercise("langchain", sorted(tools), call)


async def llamaindex(url: str, token: str) -> dict[str, Any]:
    from llama_index.tools.mcp import BasicMCPClient, McpToolSpec
    from mcp import types

    client = BasicMCPClient(url, headers={"Authorization": f"Bearer {token}"})
    tools = {t.metadata.name: t for t in await McpToolSpec(client=client).to_tool_list_async()}

    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        output = await tools[name].acall(**args)
        check(not output.is_error, f"llamaindex {name}: {output.content}")
        result = output.raw_output
        check(isinstance(result, types.CallToolResult), f"llamaindex {name}: {result!r}")
        assert isinstance(result, types.CallToolResult)
        texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
        check(not result.is_error, f"llamaindex {name}: isError: {texts}")
        value = one_json_text("llamaindex", name, texts)
        check(
            result.structured_content == value,
            f"llamaindex {name}: structuredContent is not the text's JSON",
        )
        return value

    names = [n for n in tools if n is not None]
    return await exercise("llamaindex", sorted(names), call)


FRAMEWORKS: dict[str, Callable[[str, str], Awaitable[dict[str, Any]]]] = {
    "langchain": langchain,
    "llamaindex": llamaindex,
}


async def run(url: str, token: str, chosen: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in chosen:
        with anyio.fail_after(HANG_GUARD_S):
            summary[name] = await FRAMEWORKS[name](url, token)
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
    parser.add_argument(
        "--url", required=True, help="the MCP endpoint, e.g. http://127.0.0.1:8080/mcp"
    )
    parser.add_argument("--token", required=True, help="the bearer token")
    parser.add_argument(
        "--framework",
        action="append",
        choices=sorted(FRAMEWORKS),
        help="only this framework (repeatable; default: all)",
    )
    args = parser.parse_args()
    chosen: list[str] = args.framework or sorted(FRAMEWORKS)
    try:
        summary = anyio.run(run, args.url, args.token, chosen)
    except BaseException as e:  # noqa: BLE001 - reported, then a non-zero exit
        failure = first_failure(e)
        if failure is None:
            raise
        print(f"frameworks: FAILED: {failure}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
