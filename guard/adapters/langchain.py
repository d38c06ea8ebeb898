"""LangChain: the tools a task may use, as `StructuredTool`s (`pip install "guard-….whl[langchain]"`).

    async with guard.task(purpose="weekly report", tools=["notes"]) as t:
        tools = await langchain_tools(t)            # notes_read, notes_write, ...
        model = chat_model.bind_tools(tools)

One tool per action of each http tool of the task: its name is `<tool>_<action>`, its argument
schema has the action path's `{variables}` as required strings, and `body` (an object: the JSON
body, for POST, PUT, PATCH) or `query` (an object: the query parameters, for the other methods).
Every call goes through guard. What the model reads back is a tool message:
the tool's JSON answer; `approval pending (apr_…)` for a step-up when the task raises them (a task
made with `step_up="wait"` waits instead); `refused by guard (denied): …` for a refusal.
"""

from __future__ import annotations

import json
import re
from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import ConfigDict, Field, create_model

from guard.client import ApprovalRequired, GuardError, Task, ToolError

__all__ = ["langchain_tools"]

_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _answer(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _tool(task: Task, tool: str, action: dict[str, Any]) -> StructuredTool:
    name, method, path = str(action["name"]), str(action["method"]), str(action["path"])
    variables = _VAR.findall(path)
    fields: dict[str, Any] = {var: (str, Field(description=f"`{{{var}}}` of {path}")) for var in variables}
    rest = "body" if method in ("POST", "PUT", "PATCH") else "query"
    if rest not in fields:
        what = "the JSON body" if rest == "body" else "the query parameters"
        fields[rest] = (dict[str, Any] | None, Field(None, description=f"{what} of the call"))
    schema = create_model(f"{tool}_{name}_args", __config__=ConfigDict(extra="forbid"), **fields)

    async def call(**args: Any) -> str:
        extra = args.pop(rest, None) or {}
        try:
            return _answer(await task.call(tool, name, **extra, **args))
        except ApprovalRequired as e:
            return f"approval pending ({e.approval_id}): a person must approve this call; ask again once approved"
        except GuardError as e:
            rule = e.extra.get("rule_id")
            return f"refused by guard ({e.code}{', rule ' + str(rule) if rule else ''}): {e.detail}"
        except ToolError as e:
            return f"the tool answered {e.status}: {_answer(e.body)}"

    return StructuredTool.from_function(coroutine=call, name=f"{tool}_{name}", args_schema=schema,
                                        description=f"{method} {path} on the {tool} tool, through guard")


async def langchain_tools(task: Task, only: list[str] | None = None) -> list[StructuredTool]:
    """The task's http tools (or those named in `only`) as StructuredTools, one per action."""
    out: list[StructuredTool] = []
    for name, spec in (await task.tools()).items():
        if spec["kind"] != "http" or (only is not None and name not in only):
            continue  # MCP tools: use `task.mcp(tool)` with the framework's MCP adapter
        out += [_tool(task, name, action) for action in spec["actions"]]
    return out
