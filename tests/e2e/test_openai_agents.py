"""The OpenAI Agents SDK adapter with the real SDK and a scripted model (no network, no weights):
the SDK's Runner asks for an allowed call, a denied call and a step-up; the tool outputs and
guard's audit say what happened."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from agents import Agent, ModelResponse, RunConfig, Runner, Usage
from agents.items import ToolCallOutputItem
from agents.models.interface import Model
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from guard.adapters.openai_agents import function_tools
from guard.client import Guard
from tests.support.client import AGENT, echo_policy
from tests.support.credentials import audit_of
from tests.support.guard import Guard as GuardProcess
from tests.support.upstream import Upstream


class Scripted(Model):
    """A model that answers each turn with the next scripted output, and records the tools it was given."""

    def __init__(self, turns: list[list[Any]]) -> None:
        self.turns = turns
        self.tool_names: list[str] = []

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any, tools: Any,
                           output_schema: Any, handoffs: Any, tracing: Any, **_: Any) -> ModelResponse:
        self.tool_names = [t.name for t in tools]
        return ModelResponse(output=self.turns.pop(0), usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        raise NotImplementedError


def _ask(name: str, arguments: str, n: int) -> list[Any]:
    return [ResponseFunctionToolCall(type="function_call", call_id=f"call_{n}", name=name, arguments=arguments,
                                     id=f"fc_{n}", status="completed")]


def _say(text: str) -> list[Any]:
    return [ResponseOutputMessage(id="msg_1", type="message", role="assistant", status="completed",
                                  content=[ResponseOutputText(type="output_text", text=text, annotations=[])])]


async def test_the_runner_gets_an_answer_a_refusal_and_a_pending_approval(
        guard_factory: Any, upstream: Upstream) -> None:
    g: GuardProcess = guard_factory(echo_policy(upstream.url))
    model = Scripted([
        _ask("echo_read", '{"id": "7"}', 1),
        _ask("echo_delete", '{"id": "7"}', 2),
        _ask("echo_pay", '{"body": {"amount": 500, "to": "acme"}}', 3),
        _say("done: read item 7; the delete was refused; the payment waits for approval"),
    ])
    async with Guard(g.url, token=g.token(AGENT)) as client, client.task(purpose="chores", tools=["echo"]) as t:
        tools = await function_tools(t)
        pay = next(tool for tool in tools if tool.name == "echo_pay")
        assert pay.params_json_schema["properties"]["body"]["type"] == "object"
        agent = Agent(name="assistant", instructions="do the chores", tools=list(tools), model=model)
        result = await Runner.run(agent, "do the chores", run_config=RunConfig(tracing_disabled=True))
    assert {"echo_read", "echo_write", "echo_delete", "echo_pay"} <= set(model.tool_names)
    outputs = [str(item.output) for item in result.new_items if isinstance(item, ToolCallOutputItem)]
    assert len(outputs) == 3
    assert '"path": "/items/7"' in outputs[0]
    assert outputs[1].startswith("refused by guard (denied, rule no-delete)")
    assert outputs[2].startswith("approval pending (apr_")
    assert str(result.final_output).startswith("done:")
    assert [s.path_qs for s in upstream.requests] == ["/items/7"]  # only the allowed call reached the tool
    async with aiohttp.ClientSession() as http:
        records = await audit_of(http, g, t.task_id)
    decided = [(r["action"], r["effect"], r.get("rule_id")) for r in records if r["event"] == "call_decided"]
    assert decided == [("read", "allow", "read-ok"), ("delete", "deny", "no-delete"), ("pay", "step_up", "big-pay")]
