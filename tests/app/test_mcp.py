"""MCP through guard: the official SDK on both sides (examples/mcp_server.py as a real process on
streamable HTTP, the SDK's streamable HTTP client pointed at guard's app in this process); raw
requests against a recording upstream: tests/app/test_mcp_requests.py; examples/mcp_agent.py:
tests/e2e/test_mcp_agent.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, files_policy, task_token

MODES = ["legacy", "2026-07-28"]  # 2025-11-25 (initialize, sessions) and the session-less revision
VISIBLE = {"search_files", "read_file", "slow_count", "whoami", "share_file"}


@asynccontextmanager
async def connect(guard: AppGuard, token: str, mode: str) -> AsyncIterator[Client]:
    """The SDK's streamable HTTP client, pointed at guard with the task token as its bearer."""
    client = httpx2.AsyncClient(headers=bearer(token), timeout=httpx2.Timeout(30, read=60))
    async with client, Client(streamable_http_client(f"{guard.url}/mcp/files", http_client=client), mode=mode) as c:
        yield c


@pytest.fixture
async def guard(app_factory: AppFactory, mcp_server: str) -> AppGuard:
    return await app_factory(files_policy(mcp_server))


@pytest.fixture
async def token(guard: AppGuard, http: aiohttp.ClientSession) -> str:
    """A task token of the agent the files policy allows."""
    return await task_token(guard, http)


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("mode", MODES)
async def test_list_is_filtered_and_calls_are_decided(guard: AppGuard, token: str, mode: str) -> None:
    async with connect(guard, token, mode) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == VISIBLE  # write_file (no rule), delete_file (deny) hidden

        result = await client.call_tool("read_file", {"path": "notes/sources.txt"})
        assert not result.is_error and "arxiv 2401.00001" in text_of(result)

        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_file", {"path": "notes/sources.txt"})
        assert denied.value.code == -32001
        assert denied.value.data["code"] == "denied" and denied.value.data["rule_id"] == "no-deletes"

        with pytest.raises(MCPError) as unruled:
            await client.call_tool("write_file", {"path": "x.txt", "content": "x"})
        assert unruled.value.data["code"] == "denied"

        still_there = await client.call_tool("read_file", {"path": "notes/sources.txt"})
        assert "arxiv" in text_of(still_there)  # the denied delete never reached the server


@pytest.mark.parametrize("mode", MODES)
async def test_upstream_gets_credentials_never_the_task_token(guard: AppGuard, token: str, mode: str) -> None:
    async with connect(guard, token, mode) as client:
        seen = json.loads(text_of(await client.call_tool("whoami", {})))
    assert seen["authorization"] == "cred+jwt"
    assert seen["txn_token"] == "txntoken+jwt"
    assert seen["guard_task_id"]


@pytest.mark.parametrize("mode", MODES)
async def test_progress_notifications_stream_through(guard: AppGuard, token: str, mode: str) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(guard, token, mode) as client:
        result = await client.call_tool("slow_count", {"n": 4}, progress_callback=on_progress)
    assert text_of(result) == "counted to 4"
    assert [p[0] for p in seen] == [1, 2, 3, 4]
    assert seen[-1][1] == 4


async def test_step_up_on_a_tool_call(guard: AppGuard, token: str, http: aiohttp.ClientSession) -> None:
    args = {"path": "reports/2026-w01.md", "to": "partner@example.org"}
    async with connect(guard, token, "legacy") as client:
        with pytest.raises(MCPError) as held:
            await client.call_tool("share_file", args)
        data = held.value.data
        assert held.value.code == -32001
        assert data["code"] == "approval_required" and data["rule_id"] == "shares-need-approval"
        approver = guard.token("carol@acme.example", "guard:approver")
        async with http.post(f"{guard.url}/v1/approvals/{data['approval_id']}/decision",
                             json={"decision": "approve"}, headers=bearer(approver)) as r:
            assert r.status == 200, await r.text()
        shared = await client.call_tool("share_file", args)
        assert text_of(shared) == "shared reports/2026-w01.md with partner@example.org"


async def test_sessions_and_the_get_stream_pass_through(
    guard: AppGuard, token: str, http: aiohttp.ClientSession
) -> None:
    url = f"{guard.url}/mcp/files"
    headers = {**bearer(token), "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "0"}}}
    async with http.post(url, json=init, headers=headers) as r:
        assert r.status == 200, await r.text()
        session = r.headers["Mcp-Session-Id"]
        assert r.headers["Guard-Task-Id"]
        await r.read()
    in_session = {**headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
    async with http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=in_session) as r:
        assert r.status == 202
    async with http.get(url, headers={**in_session, "Accept": "text/event-stream"}) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    async with http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=in_session) as r:
        assert r.status == 200
        assert '"result"' in await r.text()
    async with http.delete(url, headers=in_session) as r:
        assert r.status in (200, 204)
    async with http.post(url, json={"jsonrpc": "2.0", "id": 3, "method": "ping"}, headers=in_session) as r:
        assert r.status == 404  # the server ended the session guard passed the DELETE on for


async def test_calls_are_audited_before_the_answer(
    app_factory: AppFactory, mcp_server: str, http: aiohttp.ClientSession, store_url: str
) -> None:
    guard = await app_factory(files_policy(mcp_server), config={"store": {"url": store_url}})
    idp = guard.token(AGENT)
    task = await create_task(http, guard.url, idp)
    async with connect(guard, task["task_token"], "2026-07-28") as client:
        await client.list_tools()
        await client.call_tool("read_file", {"path": "notes/sources.txt"})
        with pytest.raises(MCPError):
            await client.call_tool("delete_file", {"path": "notes/sources.txt"})
    auditor = guard.token("security@acme.example", "guard:auditor")
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(auditor)) as r:
        trail = await r.json()
    assert trail["verified"] is True
    events = [(rec["event"], rec.get("action"), rec.get("status")) for rec in trail["records"]]
    assert ("mcp_forwarded", "tools/list", 200) in events
    assert ("call_decided", "read_file", None) in events
    assert ("call_forwarded", "read_file", 200) in events
    assert ("call_decided", "delete_file", 403) in events
    assert not any(e[0] == "call_forwarded" and e[1] == "delete_file" for e in events)
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}", headers=bearer(auditor)) as r:
        assert (await r.json())["calls"] == 1  # only the allowed tools/call counts
