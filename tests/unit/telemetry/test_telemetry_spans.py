"""What a traced call sends the tool: the forward span's traceparent in the headers and, for MCP, in
`params._meta` of the body, keeping what the client put there."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import TYPE_CHECKING

import pytest

from guard.config import TelemetryCfg
from guard.domain import ToolCall
from guard.routes.call import tool_call
from tests.support.otlp import proto_missing
from tests.support.process import free_port, require

if TYPE_CHECKING:
    from guard.telemetry.otel import OtelTracing


def _tracing() -> OtelTracing:
    require(proto_missing())
    from guard.telemetry.otel import OtelTracing

    # sample_ratio 0: the spans are not recorded, so nothing is exported to the closed port
    return OtelTracing(TelemetryCfg(otlp_endpoint=f"http://127.0.0.1:{free_port()}", service_name="guard",
                                    sample_ratio=0.0))


def _mcp(body: bytes) -> ToolCall:
    return tool_call("mcp", "files", "POST", "/mcp", "", body, {}, 0, lambda: True, "t", mcp_action="search",
                     mcp_args={})


def test_mcp_body_carries_the_forward_traceparent() -> None:
    tracing = _tracing()
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "search", "arguments": {"q": "é"}, "_meta": {"progressToken": 5}}}).encode()
    call = _mcp(body)
    with tracing.call(call, {}, "tools/call", 1) as traced:
        assert traced.trace is not None
        sent = traced.trace.to_tool(traced)
        headers = traced.trace.forwarding()
    message = json.loads(sent.body)
    assert message["params"]["_meta"] == {"progressToken": 5, "traceparent": headers["traceparent"]}
    assert message["params"]["arguments"] == {"q": "é"} and message["params"]["name"] == "search"
    forward_id = headers["traceparent"].split("-")[2]
    assert forward_id != headers["traceparent"].split("-")[1] and len(forward_id) == 16
    tracing.provider.shutdown()


def test_a_body_json_cannot_carry_goes_unchanged() -> None:
    tracing = _tracing()
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"n":1e400}}}'
    with tracing.call(_mcp(body), {}, "tools/call", 1) as traced:
        assert traced.trace is not None
        sent = traced.trace.to_tool(traced)
        assert traced.trace.forwarding()["traceparent"].startswith("00-")
    assert sent.body == body
    tracing.provider.shutdown()


async def test_tasks_ending_together_share_one_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """One flush runs at a time and one more may wait: the tasks that end meanwhile share the waiting one."""
    tracing = _tracing()
    flushes: list[int] = []
    release = threading.Event()

    def slow_flush(timeout_millis: int = 30000) -> bool:
        flushes.append(1)
        return release.wait(10)

    monkeypatch.setattr(tracing.provider, "force_flush", slow_flush)
    tracing.flush_soon()
    while not flushes:  # the first flush runs (and holds its thread)
        await asyncio.sleep(0.01)
    for _ in range(100):  # a hundred tasks end meanwhile
        tracing.flush_soon()
    release.set()
    await asyncio.gather(*tracing._flushes)
    assert len(flushes) == 2
    tracing.provider.shutdown()
