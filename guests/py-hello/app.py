"""`py-hello`: the smallest useful Python agent, and the README's example.

Input: any JSON; a string or ``{"name": ...}`` names whom to greet (default ``world``).
Output: ``{"greeting": "Hello, <name>!", "echo": <task description>, "input": <input>,
"agent": "py-hello"}``. Logs one ``info`` record.
"""

from typing import Any

from qi_agent import Agent, InvalidInput, Task, log


class Hello(Agent):
    name = "py-hello"
    description = "Greets whoever the input names, from Python."
    capabilities = ["greeting"]

    def run(self, task: Task) -> Any:
        value = task.input_json()
        if value is None:
            who = "world"
        elif isinstance(value, str):
            who = value
        elif isinstance(value, dict) and isinstance(value.get("name", "world"), str):
            who = value.get("name", "world")
        else:
            raise InvalidInput('input must be a name, {"name": "<name>"}, or null')
        log.info("greeting", who=who)
        return {
            "greeting": f"Hello, {who}!",
            "echo": task.description,
            "input": value,
            "agent": self.name,
        }
