"""`py-tour`: drives every module of the `qi-agent` Python SDK through the real host, for the
SDK's own tests (``tests/all/python/sdk.rs``). One mode per input:

- ``{"mode": "tour", "context": "<fresh id>", "tools": [[name, input], ...]}``: creates the
  context (strong), subscribes to its events, writes it every way the SDK offers (put, a
  stale put, patch, pointer_patch, update), reads history, ids and budget, calls the given
  tools (and ``call_many``), provokes one typed error per interface (context ``not-found``,
  events ``invalid``, sync and channels ``not-coordinated``, llm ``access-denied``,
  ``SubtaskInput`` ``InvalidInput``), drains its subscription with the iterator, deletes the
  context, and returns what it saw under one key per step.
- ``{"mode": "count", "context": id, "n": N, "barrier": K}``: publishes ``{"ready": <task
  id>}`` on the context and waits (at most 10 s) until K distinct ones were seen, then
  increments ``doc["n"]`` N times with ``context.update``; returns ``{"acked": N,
  "stale_retries": <extra calls of the update function>}``. Concurrent counters must end at
  the exact sum.
- ``{"mode": "llm", "model": m, "prompt": p}``: one model call through ``llm.Request``;
  returns the answer's fields, or the error's kind and message.
- ``{"mode": "call", "tool": name}``: calls one tool with ``{}`` and returns ``{"called":
  <its output>}`` (the runtime bench keeps Python agents alive in ``bench.wait`` this way).
"""

from typing import Any, Dict, List

from qi_agent import (
    Agent,
    ChannelError,
    ContextError,
    EventError,
    InvalidInput,
    LlmError,
    SubtaskInput,
    SyncError,
    Task,
    ToolError,
    budget,
    channels,
    context,
    events,
    llm,
    log,
    sync,
    tools,
)


def error_of(action) -> Dict[str, Any]:
    try:
        action()
    except (ContextError, EventError, SyncError, ChannelError, LlmError, ToolError) as e:
        return {"class": type(e).__name__, "kind": e.kind, "message": e.message}
    except InvalidInput as e:
        return {"class": "InvalidInput", "kind": e.kind, "message": e.message}
    return {"class": None}


def tour(task: Task, args: Dict[str, Any]) -> Dict[str, Any]:
    cid = args["context"]
    out: Dict[str, Any] = {}
    log.info("tour starts", context=cid, fields={"nested": [1, 2]})
    made = context.create({"n": 0, "tags": []}, id=cid, context_type="tour")
    out["create"] = {"id": made.id, "version": made.version}
    sub = events.subscribe([cid])
    doc = context.get(cid)
    out["get"] = {"version": doc.version, "doc": doc.doc, "owner_set": bool(doc.owner)}
    put = context.put(cid, {"n": 1, "tags": ["a"]}, doc.version)
    out["put"] = put.version
    out["stale"] = error_of(lambda: context.put(cid, {"n": -1}, doc.version))
    stale = None
    try:
        context.put(cid, {"n": -1}, doc.version)
    except ContextError as e:
        stale = {"is_stale": e.is_stale, "current_version": e.current_version}
    out["stale_detail"] = stale
    out["patch"] = context.patch(cid, {"extra": True}, put.version).version
    out["pointer"] = context.pointer_patch(
        cid,
        [context.PointerOp.set("/meta/by", "py-tour"), context.PointerOp.remove("/extra")],
        context.get(cid).version,
    ).version
    out["update"] = context.update(cid, lambda d: {**d, "n": d["n"] + 10}).version
    out["final"] = context.get(cid).doc
    out["raw_is_text"] = isinstance(context.get_raw(cid).doc, str)
    out["history_ops"] = [v.op for v in context.history(cid, 10)]
    out["ids_has_it"] = cid in context.ids("tour")
    seen: List[Dict[str, Any]] = []
    for event in sub.iter(timeout_ms=200):
        seen.append({"seq": event.seq, "type": event.event_type, "context": event.context_id})
    sub.close()
    out["events"] = seen
    out["published"] = events.publish(cid, {"hello": "bus"}, priority=7) > 0
    remaining = budget.remaining()
    out["budget"] = {
        "fuel_positive": remaining.fuel > 0,
        "time_ms_positive": remaining.time_ms > 0,
        "tool_calls": remaining.tool_calls,
    }
    out["tools_available"] = tools.available()
    out["tools"] = []
    for name, value in args.get("tools", []):
        try:
            out["tools"].append({"ok": tools.call(name, value)})
        except ToolError as e:
            out["tools"].append({"kind": e.kind, "message": e.message})
    many = tools.call_many([(name, value) for name, value in args.get("tools", [])])
    out["call_many"] = [r.kind if isinstance(r, ToolError) else "ok" for r in many]
    out["errors"] = {
        "context": error_of(lambda: context.get(cid + "-missing")),
        "events": error_of(lambda: events.subscribe([cid + "-missing"])),
        "priority": error_of(lambda: events.publish(cid, {}, priority=300)),
        "sync": error_of(lambda: sync.barrier("nowhere")),
        "channels": error_of(lambda: channels.send("nowhere", "x")),
        "llm": error_of(lambda: llm.Request("no-such-model").user("hi").send()),
        "subtask": error_of(lambda: SubtaskInput.from_task(task)),
        "strategy": error_of(lambda: context.create({}, context_type="tour", strategy="psychic")),
    }
    out["models"] = llm.models()
    context.delete(cid)
    after = error_of(lambda: context.get(cid))
    out["deleted"] = after.get("kind") or context.get(cid).status
    return out


def count(task: Task, args: Dict[str, Any]) -> Dict[str, Any]:
    cid = args["context"]
    want = int(args.get("barrier", 1))
    with events.subscribe([cid], ["custom"], after_seq=0) as sub:
        events.publish(cid, {"ready": task.id})
        ready = set()
        for event in sub.iter(timeout_ms=10_000):
            if isinstance(event.data, dict) and "ready" in event.data:
                ready.add(event.data["ready"])
            if len(ready) >= want:
                break
    calls = 0

    def bump(doc: Dict[str, Any]) -> Dict[str, Any]:
        nonlocal calls
        calls += 1
        return {**doc, "n": doc.get("n", 0) + 1}

    n = int(args["n"])
    for _ in range(n):
        context.update(cid, bump)
    return {"acked": n, "stale_retries": calls - n, "ready": len(ready)}


def one_call(args: Dict[str, Any]) -> Dict[str, Any]:
    try:
        r = llm.Request(args["model"]).system("Be brief.").user(args["prompt"]).max_tokens(64).send()
    except LlmError as e:
        return {"ok": False, "kind": e.kind, "message": e.message}
    return {
        "ok": True,
        "content": r.content,
        "finish_reason": r.finish_reason,
        "model": r.model,
        "input_tokens": r.usage.input_tokens,
        "output_tokens": r.usage.output_tokens,
        "replayed": r.replayed,
    }


class Tour(Agent):
    name = "py-tour"
    description = "Exercises every module of the qi-agent Python SDK."

    def run(self, task: Task) -> Any:
        args = task.input_json()
        if not isinstance(args, dict):
            raise InvalidInput('input must be {"mode": "tour" | "count" | "llm", ...}')
        mode = args.get("mode")
        if mode == "tour":
            return tour(task, args)
        if mode == "count":
            return count(task, args)
        if mode == "llm":
            return one_call(args)
        if mode == "call":
            return {"called": tools.call(args["tool"], {})}
        raise InvalidInput(f"unknown mode {mode!r}")
