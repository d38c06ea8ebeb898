"""LangChain: the tools a task may use, as `StructuredTool`s (`pip install "guard-….whl[langchain]"`).

    async with guard.task(purpose="weekly report", tools=["notes"]) as t:
        tools = await langchain_tools(t)            # notes_read, notes_write, ...
        model = chat_model.bind_tools(tools)

One tool per action of each http tool of the task: its name is `<tool>_<action>`, its argument
schema has the action path's `{variables}` as required strings, and `body` (an object: the JSON
body, for POST, PUT, PATCH) or `query` (an object: the query parameters, for the other methods).
Every call goes through guard. What the model reads back is a tool message: the tool's JSON answer;
`approval pending (apr_…)` for a step-up when the task raises them (a task made with
`step_up="wait"` waits instead); `refused by guard (denied, rule …): …` for a refusal.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import ConfigDict, Field, create_model

from guard.adapters.common import ActionShape, call_action
from guard.client import Task

__all__ = ["langchain_tools"]


def _tool(task: Task, shape: ActionShape) -> StructuredTool:
    fields: dict[str, Any] = {v: (str, Field(description=f"`{{{v}}}` of {shape.path}")) for v in shape.variables}
    if shape.rest not in fields:
        what = "the JSON body" if shape.rest == "body" else "the query parameters"
        fields[shape.rest] = (dict[str, Any] | None, Field(None, description=f"{what} of the call"))
    schema = create_model(f"{shape.function_name}_args", __config__=ConfigDict(extra="forbid"), **fields)

    async def call(**args: Any) -> str:
        return await call_action(task, shape, args)

    return StructuredTool.from_function(coroutine=call, name=shape.function_name, args_schema=schema,
                                        description=shape.description)


async def langchain_tools(task: Task, only: list[str] | None = None) -> list[StructuredTool]:
    """The task's http tools (or those named in `only`) as StructuredTools, one per action."""
    out: list[StructuredTool] = []
    for name, spec in (await task.tools()).items():
        if spec["kind"] != "http" or (only is not None and name not in only):
            continue  # MCP tools: use `task.mcp(tool)` with the framework's MCP adapter
        out += [_tool(task, ActionShape(name, action)) for action in spec["actions"]]
    return out
