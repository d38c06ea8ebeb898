"""What every framework adapter shares: the argument schema of an action, and one call through
guard answered as the text a model reads back."""

from __future__ import annotations

import json
import re
from typing import Any

from guard.client import ApprovalRequired, GuardError, Task, ToolError

__all__ = ["ActionShape", "call_action"]

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ActionShape:
    """An http action's arguments: its path's `{variables}` (required strings) and `body` (POST,
    PUT, PATCH: the JSON body) or `query` (other methods: the query parameters), an object."""

    def __init__(self, tool: str, action: dict[str, Any]) -> None:
        self.tool, self.name = tool, str(action["name"])
        self.method, self.path = str(action["method"]), str(action["path"])
        self.variables = _VAR.findall(self.path)
        self.rest = "body" if self.method in ("POST", "PUT", "PATCH") else "query"
        self.description = f"{self.method} {self.path} on the {tool} tool, through guard"

    @property
    def function_name(self) -> str:
        return f"{self.tool}_{self.name}"

    def json_schema(self) -> dict[str, Any]:
        props: dict[str, Any] = {v: {"type": "string", "description": f"`{{{v}}}` of {self.path}"}
                                 for v in self.variables}
        if self.rest not in props:
            what = "the JSON body" if self.rest == "body" else "the query parameters"
            props[self.rest] = {"type": "object", "description": f"{what} of the call", "additionalProperties": True}
        return {"type": "object", "properties": props, "required": list(self.variables),
                "additionalProperties": False}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


async def call_action(task: Task, shape: ActionShape, args: dict[str, Any]) -> str:
    """Call the action through guard; the tool's answer, or what stopped it, as text for the model."""
    args = dict(args)
    extra = args.pop(shape.rest, None) or {}
    if not isinstance(extra, dict):
        return f"`{shape.rest}` must be an object"
    try:
        return _text(await task.call(shape.tool, shape.name, **extra, **args))
    except ApprovalRequired as e:
        return f"approval pending ({e.approval_id}): a person must approve this call; ask again once approved"
    except GuardError as e:
        rule = e.extra.get("rule_id")
        return f"refused by guard ({e.code}{', rule ' + str(rule) if rule else ''}): {e.detail}"
    except ToolError as e:
        return f"the tool answered {e.status}: {_text(e.body)}"
