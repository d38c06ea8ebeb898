"""OpenAI Agents SDK: the tools a task may use, as function tools (`pip install "guard-….whl[openai-agents]"`).

    async with guard.task(purpose="weekly report", tools=["notes"]) as t:
        agent = Agent(name="assistant", tools=await function_tools(t))
        await Runner.run(agent, "tidy my notes")

The same tools as the LangChain adapter (guard/adapters/langchain.py): one per action, named
`<tool>_<action>`, with the action path's `{variables}` and a `body` or `query` object; every call
goes through guard, and a refusal or a pending approval is the tool output the model reads.
"""

from __future__ import annotations

import json
from typing import Any

from agents import FunctionTool
from agents.tool_context import ToolContext

from guard.adapters.common import ActionShape, call_action
from guard.client import Task

__all__ = ["function_tools"]


def _tool(task: Task, shape: ActionShape) -> FunctionTool:
    async def invoke(_ctx: ToolContext[Any], arguments: str) -> str:
        try:
            args = json.loads(arguments or "{}")
        except ValueError:
            return "the arguments are not JSON"
        if not isinstance(args, dict):
            return "the arguments must be a JSON object"
        return await call_action(task, shape, args)

    # not strict: `body` and `query` are open objects, which OpenAI's strict mode cannot express
    return FunctionTool(name=shape.function_name, description=shape.description,
                        params_json_schema=shape.json_schema(), on_invoke_tool=invoke, strict_json_schema=False)


async def function_tools(task: Task, only: list[str] | None = None) -> list[FunctionTool]:
    """The task's http tools (or those named in `only`) as function tools, one per action."""
    out: list[FunctionTool] = []
    for name, spec in (await task.tools()).items():
        if spec["kind"] != "http" or (only is not None and name not in only):
            continue  # MCP tools: the SDK's MCPServerStreamableHttp to {guard}/mcp/{tool} with the task's token
        out += [_tool(task, ActionShape(name, action)) for action in spec["actions"]]
    return out
