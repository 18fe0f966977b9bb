"""`py-reviewer`: the Python twin of the Rust `reviewer` guest. It judges the findings of the
`analyzer` subtasks from one point of view and votes on them at a decision point, as a subtask
of a coordinated code review; a manifest can mix it with the Rust agents
(``examples/mixed-review``), and for the same input it gives the same output as `reviewer`.

Input: the subtask input of a coordinated run with

- ``findings`` (required): a list of `analyzer` outputs (objects with ``totals`` and
  ``findings``; ``null`` entries are skipped; a single output object is accepted too);
- ``decision`` (required): the decision point to vote at;
- ``thresholds`` (optional): overrides of ``max_todo_per_kloc`` (default 5.0),
  ``max_long_line_ratio`` (0.02), ``min_comment_ratio`` (0.05), ``max_file_lines`` (1000).

Config (the agent's manifest entry): ``focus``, one of ``todos`` (default), ``long-lines``,
``comments``, ``size``.

Output: ``{"review": {"focus", "vote", "reasons", "files_flagged"}, "decision": <the point's
decision or null>, "outcome": <the sync outcome>}``.
"""

import json
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Tuple

from qi_agent import Agent, AgentType, Failed, InvalidInput, SubtaskInput, SyncError, Task, log, sync

APPROVE = "approve"
CHANGES_REQUESTED = "changes-requested"
FOCUSES = ("todos", "long-lines", "comments", "size")
DEFAULTS = {
    "max_todo_per_kloc": 5.0,
    "max_long_line_ratio": 0.02,
    "min_comment_ratio": 0.05,
    "max_file_lines": 1000.0,
}


def num(x: float) -> str:
    """A number as Rust's `Display` for f64 writes it (``5`` for 5.0), so both reviewers word
    their reasons the same way."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def parse_focus(config: Any) -> str:
    focus = config.get("focus") if isinstance(config, dict) else None
    if focus is None:
        return "todos"
    if focus not in FOCUSES:
        shown = focus if isinstance(focus, str) else json.dumps(focus)
        raise InvalidInput(
            'config `focus` must be "todos", "long-lines", "comments" or "size", '
            f"got {shown}"
        )
    return focus


def parse_thresholds(value: Any) -> Dict[str, float]:
    thresholds = dict(DEFAULTS)
    if value is None:
        return thresholds
    if not isinstance(value, dict):
        raise InvalidInput(f"`thresholds` must be an object, got {json.dumps(value)}")
    for name, v in value.items():
        if name not in DEFAULTS:
            raise InvalidInput(
                f"unknown threshold `{name}`; expected max_todo_per_kloc, "
                "max_long_line_ratio, min_comment_ratio or max_file_lines"
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise InvalidInput(
                f"threshold `{name}` must be a non-negative number, got {json.dumps(v)}"
            )
        thresholds[name] = float(v)
    return thresholds


@dataclass(frozen=True)
class Counts:
    files: int = 0
    lines: int = 0
    comment: int = 0
    todo: int = 0
    long_lines: int = 0

    @staticmethod
    def of(stats: Any) -> "Counts":
        def n(name: str) -> int:
            v = stats.get(name) if isinstance(stats, dict) else None
            return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

        return Counts(n("files"), n("lines"), n("comment"), n("todo"), n("long_lines"))

    def add(self, other: "Counts") -> "Counts":
        return Counts(
            self.files + other.files,
            self.lines + other.lines,
            self.comment + other.comment,
            self.todo + other.todo,
            self.long_lines + other.long_lines,
        )

    def ratio(self, part: int) -> float:
        return 0.0 if self.lines == 0 else part / self.lines


def analyzer_outputs(findings: Any) -> List[Dict[str, Any]]:
    if isinstance(findings, list):
        items = findings
    elif isinstance(findings, dict):
        items = [findings]
    else:
        raise InvalidInput(
            f"`findings` must be a list of analyzer outputs, got {json.dumps(findings)}"
        )
    outputs = []
    for i, item in enumerate(x for x in items if x is not None):
        if isinstance(item, dict) and (
            isinstance(item.get("totals"), dict) or isinstance(item.get("findings"), dict)
        ):
            outputs.append(item)
        else:
            raise InvalidInput(
                f"`findings` item {i} is not an analyzer output (an object with `totals` and "
                f"`findings`): {json.dumps(item)}"
            )
    return outputs


def collect(outputs: List[Dict[str, Any]]) -> Tuple[Counts, Dict[str, Counts]]:
    totals = Counts()
    files: Dict[str, Counts] = {}
    for output in outputs:
        own: Dict[str, Counts] = {}
        found = output.get("findings")
        if isinstance(found, dict):
            for path, stats in found.items():
                own[path] = replace(Counts.of(stats), files=1)
        if isinstance(output.get("totals"), dict):
            totals = totals.add(Counts.of(output["totals"]))
        else:
            for counts in own.values():
                totals = totals.add(counts)
        files.update(own)
    return totals, dict(sorted(files.items()))


def judge(
    focus: str, t: Dict[str, float], totals: Counts, files: Dict[str, Counts]
) -> Tuple[bool, List[str], List[str]]:
    def flagged(breaks: Callable[[Counts], bool]) -> List[str]:
        return [path for path, c in files.items() if c.lines > 0 and breaks(c)]

    if totals.lines == 0 and focus != "size":
        return True, [f"no lines to review in {totals.files} files; nothing to object to"], []
    reasons: List[str] = []
    if focus == "todos":
        def per_kloc(c: Counts) -> float:
            return c.ratio(c.todo) * 1000.0

        value = per_kloc(totals)
        approve = value <= t["max_todo_per_kloc"]
        reasons.append(
            f"{totals.todo} TODO/FIXME/XXX markers in {totals.lines} lines: {value:.2f} per "
            f"1000 lines ({within(approve)} the maximum of {num(t['max_todo_per_kloc'])})"
        )
        flags = flagged(lambda c: per_kloc(c) > t["max_todo_per_kloc"])
    elif focus == "long-lines":
        value = totals.ratio(totals.long_lines)
        approve = value <= t["max_long_line_ratio"]
        reasons.append(
            f"{totals.long_lines} of {totals.lines} lines are over 100 characters: a ratio of "
            f"{value:.4f} ({within(approve)} the maximum of {num(t['max_long_line_ratio'])})"
        )
        flags = flagged(lambda c: c.ratio(c.long_lines) > t["max_long_line_ratio"])
    elif focus == "comments":
        value = totals.ratio(totals.comment)
        approve = value >= t["min_comment_ratio"]
        reasons.append(
            f"{totals.comment} of {totals.lines} lines are comments: a ratio of {value:.4f} "
            f"({'meets' if approve else 'below'} the minimum of {num(t['min_comment_ratio'])})"
        )
        flags = flagged(lambda c: c.ratio(c.comment) < t["min_comment_ratio"])
    else:
        flags = flagged(lambda c: c.lines > t["max_file_lines"])
        reasons.append(
            f"{len(flags)} of {len(files)} files are over {num(t['max_file_lines'])} lines"
        )
        if files:
            # The first file with the most lines, as Rust's max_by_key keeps the last of
            # equals: iterate in reverse so ties resolve the same way.
            path = max(reversed(list(files)), key=lambda p: files[p].lines)
            reasons.append(f"the largest is {path} with {files[path].lines} lines")
        approve = not flags
    if flags:
        reasons.append(f"{len(flags)} files break the rule on their own: {', '.join(flags)}")
    return approve, reasons, flags


def within(ok: bool) -> str:
    return "within" if ok else "over"


class Reviewer(Agent):
    name = "py-reviewer"
    agent_type = AgentType.DECISION_CAPABLE
    capabilities = ["code-review"]
    description = (
        "Judges analyzer findings by one focus (todos, long lines, comments, size) and votes "
        "at a decision point; the Python twin of `reviewer`."
    )

    def run(self, task: Task) -> Any:
        inp = SubtaskInput.from_task(task)
        outputs = analyzer_outputs(inp.require("findings"))
        point = inp.require("decision")
        if not isinstance(point, str) or not point:
            raise InvalidInput(
                f"`decision` must be a point id (a non-empty string), got {json.dumps(point)}"
            )
        thresholds = parse_thresholds(inp.input("thresholds"))
        focus = parse_focus(inp.config)
        totals, files = collect(outputs)
        approve, reasons, flags = judge(focus, thresholds, totals, files)
        vote = APPROVE if approve else CHANGES_REQUESTED
        log.info(f"voting {vote} at {point}", subtask=inp.subtask, focus=focus, files=len(files))
        try:
            outcome = sync.vote(point, vote)
        except SyncError as error:
            raise Failed(f"sync {point}: {error}") from None
        return {
            "review": {
                "focus": focus,
                "vote": vote,
                "reasons": reasons,
                "files_flagged": flags,
            },
            "decision": outcome.decision,
            "outcome": outcome.as_dict(),
        }
