"""Streams end with their task: an MCP GET stream (the official SDK client), a streaming
tools/call answer (SSE), a streaming http answer and a call held with `Prefer: wait` all end
soon after the task is completed, revoked or expired, or its agent suspended. On both stores;
on Redis the stream is open at instance A and the task is ended at instance B. guard runs in
process; the MCP tool (tests/support/stream_tool.py, the official SDK) is a process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx2
import mcp_types
import pytest
from aiohttp import web
from mcp import Client, MCPError
from mcp.client.session import MessageHandlerFnT
from mcp.client.streamable_http import streamable_http_client

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.guard import shared_keys
from tests.support.process import module_server
from tests.support.upstream import Seen, Upstream

TRIGGERS = {"complete": "task_completed", "revoke": "task_revoked", "expire": "task_expired",
            "suspend": "agent_suspended"}
EXPIRING_TTL_S = 8  # the task of an `expire` case expires by itself this long after it was created
DEADLINE_S = 15.0  # generous: the guard's bound is 1 s
# the `expire` cases wait EXPIRING_TTL_S each: make test runs them, make test-fast does not
ENDINGS = [pytest.param(t, marks=pytest.mark.slow) if t == "expire" else t for t in TRIGGERS]


def policy(upstream: str, mcp_url: str) -> dict[str, Any]:
    return {
        "tools": {
            "feed": {"kind": "http", "upstream": upstream,
                     "actions": {"follow": {"method": "GET", "path": "/feed"},
                                 "pay": {"method": "POST", "path": "/pay"}}},
            "streams": {"kind": "mcp", "upstream": mcp_url},
        },
        "rules": [
            {"id": "follow", "effect": "allow", "match": {"tool": "feed", "action": "follow"}},
            {"id": "pay-needs-approval", "effect": "step_up", "approvers": "finance",
             "match": {"tool": "feed", "action": "pay"}},
            {"id": "streams", "effect": "allow", "match": {"tool": "streams", "action": ["tick", "slow_count"]}},
        ],
    }


@dataclass
class Feed:
    """The http tool's endless answer: numbered lines, each stamped when written, until the
    guard closes the connection."""

    sent: dict[int, float] = field(default_factory=dict)
    closed: asyncio.Event | None = None
    closed_flag: bool = False

    async def handle(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        n = 0
        try:
            while True:
                n += 1
                self.sent[n] = time.time()
                await resp.write(f"line {n}\n".encode())
                await asyncio.sleep(0.05)
                if request.transport is None or request.transport.is_closing():
                    break
        except (ConnectionResetError, RuntimeError):
            pass
        self.closed_flag = True
        return resp


@pytest.fixture(scope="module")
def stream_tool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The MCP tool with long streams, one process for the module (each test has its own task)."""
    with module_server("tests.support.stream_tool", tmp_path_factory.mktemp("stream-tool")) as port:
        yield f"http://127.0.0.1:{port}/mcp"


@dataclass
class Setup:
    a: AppGuard  # where the stream is open
    b: AppGuard  # where the task is ended (the same guard on the memory store)
    admin: str
    auditor: str
    agent_idp: str
    feed: Feed
    upstream: Upstream


@pytest.fixture
async def setup(app_factory: AppFactory, upstream: Upstream, stream_tool: str, store_url: str,
                tmp_path: Path) -> Setup:
    feed = Feed()
    upstream.handler = feed.handle
    config = {"store": {"url": store_url}, **shared_keys(tmp_path / "shared", audit=True)}
    pol = policy(upstream.url, stream_tool)
    a = await app_factory(pol, config=config, subdir="a")
    b = a if store_url.startswith("memory://") else await app_factory(pol, config=config, subdir="b")
    return Setup(a, b, a.token("ops@acme.example", "guard:admin"), a.token("sec@acme.example", "guard:auditor"),
                 a.token(AGENT), feed, upstream)


async def new_task(http: aiohttp.ClientSession, s: Setup, trigger: str) -> dict[str, Any]:
    extra = {"ttl_s": EXPIRING_TTL_S} if trigger == "expire" else {}
    return await create_task(http, s.a.url, s.agent_idp, **extra)


async def end(http: aiohttp.ClientSession, s: Setup, trigger: str, task: dict[str, Any]) -> None:
    """End the task at instance B (or let it expire)."""
    if trigger == "complete":
        url, body, token = f"{s.b.url}/v1/tasks/{task['task_id']}/complete", {}, task["task_token"]
    elif trigger == "revoke":
        url, body, token = f"{s.b.url}/v1/tasks/{task['task_id']}/revoke", {"reason": "incident"}, s.admin
    elif trigger == "suspend":
        url, body, token = f"{s.b.url}/v1/agents/{quote(AGENT, safe='')}/suspend", {"reason": "incident"}, s.admin
    else:
        return
    async with http.post(url, json=body, headers=bearer(token)) as r:
        assert r.status == 200, await r.text()


async def closed_record(http: aiohttp.ClientSession, s: Setup, task_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        async with http.get(f"{s.a.url}/v1/tasks/{task_id}/audit", headers=bearer(s.auditor)) as r:
            trail = await r.json()
        assert trail["verified"] is True
        return next((rec for rec in trail["records"] if rec["event"] == "stream_closed"), None)

    return await until(probe, "the stream_closed record", DEADLINE_S)


async def within(aw: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(aw, DEADLINE_S + EXPIRING_TTL_S)
    except TimeoutError:
        raise AssertionError(f"{what} did not end before the deadline") from None


# ---------------------------------------------------------------------------------------------
# a streaming http answer


@pytest.mark.parametrize("trigger", ENDINGS)
async def test_a_streaming_http_answer_is_cut(setup: Setup, http: aiohttp.ClientSession, trigger: str) -> None:
    s = setup
    task = await new_task(http, s, trigger)
    lines: list[int] = []
    async with http.get(f"{s.a.url}/tools/feed/feed", headers=bearer(task["task_token"])) as r:
        assert r.status == 200

        async def read() -> type[BaseException] | None:
            try:
                async for raw in r.content:
                    lines.append(int(raw.split()[1]))
            except aiohttp.ClientPayloadError as e:
                return type(e)
            return None

        reader = asyncio.create_task(read())
        await until(lambda: asyncio.sleep(0, len(lines) >= 3), "the first lines")
        await end(http, s, trigger, task)
        broke = await within(reader, "the http answer")
    assert broke is aiohttp.ClientPayloadError  # cut, not ended as if complete
    record = await closed_record(http, s, task["task_id"])
    assert record["detail"] == TRIGGERS[trigger] and record["tool"] == "feed" and record["action"] == "follow"
    # nothing the tool wrote after the cut reached the agent, and the tool's connection was closed
    assert all(s.feed.sent[n] <= record["ts"] for n in lines)
    await until(lambda: asyncio.sleep(0, s.feed.closed_flag), "the tool's connection to close")


# ---------------------------------------------------------------------------------------------
# a call held with Prefer: wait


@pytest.mark.parametrize("trigger", ENDINGS)
async def test_a_held_call_ends_with_task_inactive(setup: Setup, http: aiohttp.ClientSession, trigger: str) -> None:
    s = setup
    task = await new_task(http, s, trigger)
    headers = {**bearer(task["task_token"]), "Prefer": "wait=60"}

    async def held() -> tuple[int, dict[str, Any]]:
        async with http.post(f"{s.a.url}/tools/feed/pay", json={"amount": 500}, headers=headers) as r:
            return r.status, await r.json()

    call = asyncio.create_task(held())

    async def pending() -> bool:
        async with http.get(f"{s.a.url}/v1/tasks/{task['task_id']}", headers=bearer(s.auditor)) as r:
            return bool((await r.json()).get("pending_approvals"))

    await until(pending, "the approval to be pending")
    await end(http, s, trigger, task)
    status, problem = await within(call, "the held call")
    assert (status, problem["code"]) == (403, "task_inactive")
    assert not any(seen.path_qs == "/pay" for seen in s.upstream.requests)


# ---------------------------------------------------------------------------------------------
# MCP through the official SDK


@dataclass
class GetStreams:
    """The SDK client's GET requests as the agent sees them: status, and whether the stream ended."""

    seen: list[tuple[int, asyncio.Event]] = field(default_factory=list)


class _Tracked(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, ended: asyncio.Event) -> None:
        self.inner, self.ended = inner, ended

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self.inner:
                yield part
        finally:
            self.ended.set()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recording(httpx2.AsyncBaseTransport):
    def __init__(self, gets: GetStreams) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.gets = gets

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        resp = await self.inner.handle_async_request(request)
        if request.method != "GET":
            return resp
        ended = asyncio.Event()
        self.gets.seen.append((resp.status_code, ended))
        assert isinstance(resp.stream, httpx2.AsyncByteStream)
        return httpx2.Response(resp.status_code, headers=resp.headers, stream=_Tracked(resp.stream, ended),
                               extensions=resp.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def connect(guard: AppGuard, token: str, mode: str, gets: GetStreams | None = None,
                  on_message: MessageHandlerFnT | None = None) -> AsyncIterator[Client]:
    transport = Recording(gets or GetStreams())
    client = httpx2.AsyncClient(headers=bearer(token), timeout=httpx2.Timeout(30, read=120), transport=transport)
    async with client, Client(streamable_http_client(f"{guard.url}/mcp/streams", http_client=client), mode=mode,
                              message_handler=on_message) as c:
        yield c


@pytest.mark.parametrize("trigger", ENDINGS)
async def test_the_sdk_clients_get_stream_ends(setup: Setup, http: aiohttp.ClientSession, trigger: str) -> None:
    s = setup
    task = await new_task(http, s, trigger)
    ticks: list[int] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ResourceUpdatedNotification):
            ticks.append(int(message.params.uri.removeprefix("tick://")))

    gets = GetStreams()
    async with connect(s.a, task["task_token"], "legacy", gets, on_message) as client:
        assert (await client.call_tool("tick", {"interval_s": 0.1})).content
        await until(lambda: asyncio.sleep(0, len(ticks) >= 3), "ticks on the GET stream")
        status, ended = gets.seen[0]
        assert status == 200
        await end(http, s, trigger, task)
        await within(ended.wait(), "the GET stream")
        record = await closed_record(http, s, task["task_id"])
        assert record["detail"] == TRIGGERS[trigger] and record["action"] == "GET"
        received = len(ticks)
        await asyncio.sleep(2.5)  # the SDK tries the GET stream again: refused, nothing more arrives
        assert len(ticks) == received
        assert all(status == 403 for status, _ in gets.seen[1:])


@pytest.mark.parametrize("trigger", ENDINGS)
async def test_a_streaming_tools_call_answer_ends(setup: Setup, http: aiohttp.ClientSession, trigger: str) -> None:
    s = setup
    task = await new_task(http, s, trigger)
    counted: list[float] = []
    started = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        counted.append(progress)
        if len(counted) >= 3:
            started.set()

    async with connect(s.a, task["task_token"], "2026-07-28") as client:
        call = asyncio.create_task(client.call_tool("slow_count", {"n": 100_000, "interval_s": 0.05},
                                                    progress_callback=on_progress))
        await within(started.wait(), "the first progress notifications")
        await end(http, s, trigger, task)
        with pytest.raises(MCPError) as cut:
            await within(call, "the tools/call answer")
        assert cut.value.code == -32001 and cut.value.data["code"] == "task_inactive"
        assert TRIGGERS[trigger] in cut.value.message
        received = len(counted)
        await asyncio.sleep(1.0)
        assert len(counted) == received
    record = await closed_record(http, s, task["task_id"])
    assert record["detail"] == TRIGGERS[trigger] and record["action"] == "slow_count"
    assert json.dumps(record).count(task["task_token"]) == 0
