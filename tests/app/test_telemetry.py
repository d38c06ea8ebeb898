"""OpenTelemetry traces of calls, received by a real OTLP/HTTP receiver (protobuf decoded with
opentelemetry-proto): the span tree of a chained call, the stages, the GenAI and MCP attributes,
and the traceparent each tool received."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task
from tests.support.otlp import OtlpReceiver, ReceivedSpan, proto_missing
from tests.support.process import require
from tests.support.upstream import Seen, Upstream

STAGES = ["authenticate", "task", "chain", "match", "evaluate", "admit", "mint", "forward"]


@pytest.fixture
async def receiver(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[OtlpReceiver]:
    require(proto_missing())
    # the exporter's own batch delay (5 s by default) made long: spans arrive only when guard flushes
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    r = await OtlpReceiver().start()
    yield r
    await r.stop()


def _policies(a: Upstream, b: Upstream, files: Upstream) -> dict[str, Any]:
    return {
        "tools": {
            "a": {"kind": "http", "upstream": a.url, "actions": {"run": {"method": "POST", "path": "/run"}}},
            "b": {"kind": "http", "upstream": b.url, "actions": {"run": {"method": "POST", "path": "/run"},
                                                                  "drop": {"method": "DELETE", "path": "/run"}}},
            "files": {"kind": "mcp", "upstream": f"{files.url}/mcp"},
        },
        "rules": [
            {"id": "a-runs", "effect": "allow", "match": {"tool": "a", "action": "run"}},
            {"id": "b-from-a", "effect": "allow", "match": {"tool": "b", "action": "run", "chain": {"caller": "a"}}},
            {"id": "no-drop", "effect": "deny", "match": {"tool": "b", "action": "drop"}},
            {"id": "files-search", "effect": "allow", "match": {"tool": "files", "action": "search"}},
        ],
    }


def _chaining(guard_url: list[str]) -> Any:
    """Tool a: calls tool b through the guard with the Txn-Token it got, passing its traceparent on."""

    async def handle(request: web.Request, seen: Seen) -> web.Response:
        headers = {"Txn-Token": request.headers["Txn-Token"], "traceparent": request.headers["traceparent"]}
        async with aiohttp.ClientSession() as s, s.post(f"{guard_url[0]}/tools/b/run", json={"q": 1},
                                                         headers=headers) as r:
            return web.json_response({"b": r.status, "b_call": r.headers.get("Guard-Call-Id")})

    return handle


def _mcp_answer(request: web.Request, seen: Seen) -> web.Response:
    rpc = json.loads(seen.body)
    return web.json_response({"jsonrpc": "2.0", "id": rpc["id"], "result": {"content": []}})


def _by_name(spans: list[ReceivedSpan], parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in spans if s.parent_span_id == parent.span_id}


def _traceparent_of(span: ReceivedSpan) -> str:
    """The traceparent naming `span`, sampled (flags 01, or 03 with the W3C level 2 random bit)."""
    return f"00-{span.trace_id}-{span.span_id}-"


def _names(traceparent: str, span: ReceivedSpan) -> bool:
    prefix = _traceparent_of(span)
    return traceparent.startswith(prefix) and int(traceparent[len(prefix):], 16) & 1 == 1


async def test_chained_call_span_tree(app_factory: AppFactory, upstream_factory: Any, receiver: OtlpReceiver,
                                      http: aiohttp.ClientSession) -> None:
    a, b, files = upstream_factory(), upstream_factory(), upstream_factory()
    url: list[str] = []
    a.handler, files.handler = _chaining(url), _mcp_answer
    guard = await app_factory(_policies(a, b, files), config={"telemetry": {
        "otlp_endpoint": receiver.url, "service_name": "guard-test", "sample_ratio": 1.0}})
    url.append(guard.url)
    task = await create_task(http, guard.url, guard.token(AGENT))
    trace_id, agent_span = secrets.token_hex(16), secrets.token_hex(8)
    agent_tp = f"00-{trace_id}-{agent_span}-01"
    headers = {**bearer(task["task_token"]), "traceparent": agent_tp}

    async with http.post(f"{guard.url}/tools/a/run", json={"x": 1}, headers=headers) as r:
        assert r.status == 200, await r.text()
        call_a, answer = r.headers["Guard-Call-Id"], await r.json()
    assert answer["b"] == 200
    rpc = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "x"}}}
    async with http.post(f"{guard.url}/mcp/files", json=rpc, headers={
            **headers, "Accept": "application/json, text/event-stream"}) as r:
        assert r.status == 200 and "result" in await r.json()
        call_mcp = r.headers["Guard-Call-Id"]
    ping = {"jsonrpc": "2.0", "id": 8, "method": "ping"}
    async with http.post(f"{guard.url}/mcp/files", json=ping, headers={
            **headers, "Accept": "application/json, text/event-stream"}) as r:
        assert r.status == 200 and "result" in await r.json()
        call_ping = r.headers["Guard-Call-Id"]
    async with http.delete(f"{guard.url}/tools/b/run", headers=headers) as r:
        assert r.status == 403
        call_denied = r.headers["Guard-Call-Id"] if "Guard-Call-Id" in r.headers else (await r.json())["call_id"]
    async with http.post(f"{guard.url}/v1/tasks/{task['task_id']}/complete", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    # the task's end exports its spans
    calls = await receiver.wait_for(4, {"guard.task_id": task["task_id"], "gen_ai.operation.name": "execute_tool"})
    assert len(calls) == 4, receiver.spans
    assert {"application/x-protobuf"} == set(receiver.content_types)

    # the agent's call: a SERVER span whose parent is the agent's span, with the GenAI attributes
    (span_a,) = [s for s in calls if s.attributes["guard.call_id"] == call_a]
    assert (span_a.name, span_a.kind, span_a.trace_id, span_a.parent_span_id) == (
        "execute_tool a", 2, trace_id, agent_span)
    assert span_a.service_name == "guard-test"
    assert {k: span_a.attributes.get(k) for k in ("gen_ai.tool.name", "guard.action", "guard.decision",
                                                   "guard.rule_id", "guard.task_id")} == {
        "gen_ai.tool.name": "a", "guard.action": "run", "guard.decision": "allow", "guard.rule_id": "a-runs",
        "guard.task_id": task["task_id"]}
    assert span_a.attributes["gen_ai.agent.id"] == AGENT
    stages_a = _by_name(receiver.spans, span_a)
    assert sorted(stages_a) == sorted(STAGES)
    assert all(s.trace_id == trace_id for s in stages_a.values())
    forward_a = stages_a["forward"]
    assert forward_a.kind == 3 and forward_a.attributes["http.response.status_code"] == 200
    # tool a received the forward span's traceparent, and passed it on with its chained call
    assert _names(a.requests[0].headers["traceparent"], forward_a)

    # the chained call is a child of a's forward span; tool b got its own forward span's traceparent
    (span_b,) = [s for s in calls if s.attributes["gen_ai.tool.name"] == "b"
                 and s.attributes["guard.decision"] == "allow"]
    assert span_b.parent_span_id == forward_a.span_id and span_b.trace_id == trace_id
    assert span_b.attributes["guard.rule_id"] == "b-from-a" and span_b.attributes["guard.task_id"] == task["task_id"]
    forward_b = _by_name(receiver.spans, span_b)["forward"]
    assert _names(b.requests[0].headers["traceparent"], forward_b)

    # MCP: mcp.method.name, and the traceparent in params._meta of the body the credential covers
    (span_mcp,) = [s for s in calls if s.attributes["guard.call_id"] == call_mcp]
    assert span_mcp.name == "tools/call files" and span_mcp.parent_span_id == agent_span
    assert span_mcp.attributes["mcp.method.name"] == "tools/call"
    assert span_mcp.attributes["jsonrpc.request.id"] == "7" and span_mcp.attributes["guard.action"] == "search"
    forward_mcp = _by_name(receiver.spans, span_mcp)["forward"]
    seen = files.requests[0]
    sent = json.loads(seen.body)
    assert _names(sent["params"]["_meta"]["traceparent"], forward_mcp)
    assert sent["params"]["name"] == "search" and sent["params"]["arguments"] == {"q": "x"}
    assert _names(seen.headers["traceparent"], forward_mcp)
    cred = jwt.decode(seen.headers["Authorization"].removeprefix("Bearer "), options={"verify_signature": False})
    digest = base64.urlsafe_b64encode(hashlib.sha256(b"POST\n/mcp\n" + seen.body).digest()).rstrip(b"=").decode()
    assert cred["call_digest"] == digest

    # other MCP requests are spans too, and carry the traceparent in params._meta
    (span_ping,) = await receiver.wait_for(1, {"guard.call_id": call_ping})
    assert (span_ping.name, span_ping.attributes["mcp.method.name"]) == ("ping", "ping")
    assert "gen_ai.operation.name" not in span_ping.attributes
    assert span_ping.parent_span_id == agent_span
    forward_ping = _by_name(receiver.spans, span_ping)["forward"]
    assert _names(json.loads(files.requests[1].body)["params"]["_meta"]["traceparent"], forward_ping)

    # a refusal: the deciding rule, error.type, and no forward stage
    (span_no,) = [s for s in calls if s.attributes["guard.call_id"] == call_denied]
    assert span_no.attributes["guard.decision"] == "deny" and span_no.attributes["guard.rule_id"] == "no-drop"
    assert span_no.attributes["error.type"] == "denied" and span_no.status_code == 2
    assert "forward" not in _by_name(receiver.spans, span_no)


async def test_trace_starts_here_without_a_caller_traceparent(
        app_factory: AppFactory, upstream: Upstream, receiver: OtlpReceiver, http: aiohttp.ClientSession) -> None:
    policies = {"tools": {"a": {"kind": "http", "upstream": upstream.url,
                                "actions": {"run": {"method": "POST", "path": "/run"}}}},
                "rules": [{"id": "a-runs", "effect": "allow", "match": {"tool": "a", "action": "run"}}]}
    guard = await app_factory(policies, config={"telemetry": {"otlp_endpoint": receiver.url}})
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/tools/a/run", json={}, headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    await guard.close()  # shutdown exports what is still batched
    (span,) = await receiver.wait_for(1, {"gen_ai.tool.name": "a"})
    assert span.parent_span_id == "" and span.service_name == "guard"
    forward = _by_name(receiver.spans, span)["forward"]
    assert _names(upstream.requests[0].headers["traceparent"], forward)


async def test_sampling_and_step_up(app_factory: AppFactory, upstream: Upstream, receiver: OtlpReceiver,
                                    http: aiohttp.ClientSession) -> None:
    """sample_ratio 0: a trace that starts at guard is not recorded (the tool is told so), a
    caller's sampled trace still is; a step-up is the `approve` stage and guard.decision step_up."""
    policies = {"tools": {"a": {"kind": "http", "upstream": upstream.url,
                                "actions": {"run": {"method": "POST", "path": "/run"},
                                            "pay": {"method": "POST", "path": "/pay"}}}},
                "rules": [{"id": "a-runs", "effect": "allow", "match": {"tool": "a", "action": "run"}},
                          {"id": "pay-needs-approval", "effect": "step_up", "approvers": "finance",
                           "match": {"tool": "a", "action": "pay"}}]}
    guard = await app_factory(policies, config={"telemetry": {"otlp_endpoint": receiver.url, "sample_ratio": 0.0}})
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/tools/a/run", json={}, headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    unsampled = upstream.requests[0].headers["traceparent"]
    assert int(unsampled.rsplit("-", 1)[1], 16) & 1 == 0  # not sampled (02: the W3C level 2 random bit)
    trace_id = secrets.token_hex(16)
    sampled = {**bearer(task["task_token"]), "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    async with http.post(f"{guard.url}/tools/a/pay", json={"amount": 5}, headers=sampled) as r:
        assert r.status == 403 and (await r.json())["code"] == "approval_required"
    await guard.close()
    spans = await receiver.wait_for(1, {"gen_ai.tool.name": "a"})
    assert [s.trace_id for s in spans] == [trace_id]  # the unsampled call sent nothing
    (span,) = spans
    assert span.attributes["guard.decision"] == "step_up" and span.attributes["guard.rule_id"] == "pay-needs-approval"
    assert span.attributes["error.type"] == "approval_required" and span.attributes["guard.action"] == "pay"
    stages = _by_name(receiver.spans, span)
    assert "approve" in stages and "forward" not in stages
    assert stages["approve"].attributes["error.type"] == "approval_required"
