"""The LangChain adapter with the real langchain-core and a scripted fake chat model (no network,
no weights): an agent loop asks for an allowed call, a denied call and a step-up; the tool messages
and guard's audit say what happened."""

from __future__ import annotations

from typing import Any

import aiohttp
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from guard.adapters.langchain import langchain_tools
from guard.client import Guard
from tests.support.client import AGENT, echo_policy
from tests.support.credentials import audit_of
from tests.support.guard import Guard as GuardProcess
from tests.support.upstream import Upstream


def _ask(name: str, args: dict[str, Any], n: int) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{n}", "type": "tool_call"}])


async def test_an_agent_loop_gets_an_answer_a_refusal_and_a_pending_approval(
        guard_factory: Any, upstream: Upstream) -> None:
    g: GuardProcess = guard_factory(echo_policy(upstream.url))
    model = GenericFakeChatModel(messages=iter([
        _ask("echo_read", {"id": "7"}, 1),
        _ask("echo_delete", {"id": "7"}, 2),
        _ask("echo_pay", {"body": {"amount": 500, "to": "acme"}}, 3),
        AIMessage(content="done: read item 7; the delete was refused; the payment waits for approval"),
    ]))
    async with Guard(g.url, token=g.token(AGENT)) as client, client.task(purpose="chores", tools=["echo"]) as t:
        tools = {tool.name: tool for tool in await langchain_tools(t)}
        assert {"echo_read", "echo_write", "echo_delete", "echo_pay"} <= set(tools)
        assert tools["echo_read"].args["id"]["type"] == "string"  # from the action's path /items/{id}
        assert set(tools["echo_pay"].args) == {"body"} and set(tools["echo_read"].args) == {"id", "query"}
        messages: list[BaseMessage] = [HumanMessage(content="do the chores")]
        while True:  # the agent loop: the model asks, the tools answer
            reply = await model.ainvoke(messages)
            messages.append(reply)
            if not isinstance(reply, AIMessage) or not reply.tool_calls:
                break
            for call in reply.tool_calls:
                messages.append(await tools[call["name"]].ainvoke(call))
    answers = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in answers] == ["call_1", "call_2", "call_3"]
    said = [str(m.content) for m in answers]
    assert '"path": "/items/7"' in said[0]
    assert said[1].startswith("refused by guard (denied, rule no-delete)")
    assert said[2].startswith("approval pending (apr_")
    assert str(messages[-1].content).startswith("done:")
    assert [s.path_qs for s in upstream.requests] == ["/items/7"]  # only the allowed call reached the tool
    async with aiohttp.ClientSession() as http:
        records = await audit_of(http, g, t.task_id)
    decided = [(r["action"], r["effect"], r.get("rule_id")) for r in records if r["event"] == "call_decided"]
    assert decided == [("read", "allow", "read-ok"), ("delete", "deny", "no-delete"), ("pay", "step_up", "big-pay")]
