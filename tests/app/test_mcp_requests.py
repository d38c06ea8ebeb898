"""MCP requests in process, against a recording upstream that shows exactly what was forwarded:
JSON-RPC parsing, header/body agreement, deny_methods, tools/list filtering over SSE."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from tests.app.conftest import AppFactory
from tests.support.client import bearer, files_policy, task_token
from tests.support.guard import GuardLike
from tests.support.upstream import Seen, Upstream


def rpc(method: str, rpc_id: int | None = 1, **params: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if rpc_id is not None:
        msg["id"] = rpc_id
    return msg


async def post(http: aiohttp.ClientSession, guard: GuardLike, token: str, body: bytes | dict[str, Any],
               **headers: str) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {**bearer(token), "Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            **headers}
    async with http.post(f"{guard.url}/mcp/files", data=data, headers=hdrs) as r:
        return r.status, json.loads(await r.read())


async def test_malformed_and_disagreeing_requests_forward_nothing(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(files_policy(f"{upstream.url}/mcp"))
    token = await task_token(guard, http)
    status, body = await post(http, guard, token, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 400 and body["id"] is None and body["error"]["code"] == -32700
    status, body = await post(http, guard, token, b"[" + json.dumps(rpc("ping")).encode() + b"]")
    assert body["error"]["code"] == -32600  # batches: removed from MCP since 2025-06-18
    call = rpc("tools/call", 7, name="read_file", arguments={"path": "a"})
    status, body = await post(http, guard, token, call, **{"Mcp-Method": "tools/list"})
    assert status == 400 and body["error"]["code"] == -32020 and body["id"] == 7
    status, body = await post(http, guard, token, call, **{"Mcp-Method": "tools/call", "Mcp-Name": "delete_file"})
    assert body["error"]["code"] == -32020
    assert upstream.requests == []

    upstream.handler = lambda request, seen: web.json_response({"jsonrpc": "2.0", "id": 7, "result": {}})
    status, body = await post(http, guard, token, call, **{"Mcp-Method": "tools/call", "Mcp-Name": "read_file"})
    assert status == 200 and body["result"] == {}
    [seen] = upstream.requests
    assert seen.path_qs == "/mcp"
    assert seen.headers["Mcp-Name"] == "read_file" and token not in json.dumps(seen.headers)


async def test_deny_methods_refuses_passthrough(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(files_policy(f"{upstream.url}/mcp", deny_methods=["prompts/*", "resources/*"]))
    token = await task_token(guard, http)
    status, body = await post(http, guard, token, rpc("prompts/list", 3))
    assert status == 200 and body["error"]["code"] == -32001 and body["error"]["data"]["code"] == "denied"
    assert upstream.requests == []
    status, body = await post(http, guard, token, rpc("ping", 4))
    assert status == 200 and len(upstream.requests) == 1  # the default JSON echo of the recorder


def sse_tools_answer(request: web.Request, seen: Seen) -> web.Response:
    """An SSE answer to tools/list: a progress event, then the (paginated) result."""
    asked = json.loads(seen.body)
    page = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("read_file", "delete_file", "x")],
            "nextCursor": "page-2"}
    events = [
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
        {"jsonrpc": "2.0", "id": asked["id"], "result": page},
    ]
    text = "".join(f"event: message\nid: {i}\ndata: {json.dumps(e)}\n\n" for i, e in enumerate(events))
    return web.Response(text=text, content_type="text/event-stream")


async def test_tools_list_over_sse_is_filtered_page_by_page(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(files_policy(f"{upstream.url}/mcp"))
    token = await task_token(guard, http)
    upstream.handler = sse_tools_answer
    async with http.post(f"{guard.url}/mcp/files", json=rpc("tools/list", 5, cursor="page-1"),
                         headers={**bearer(token), "Accept": "application/json, text/event-stream"}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = (await r.read()).decode()
    events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    assert events[0]["method"] == "notifications/progress"
    assert [t["name"] for t in events[1]["result"]["tools"]] == ["read_file"]
    assert events[1]["result"]["nextCursor"] == "page-2"
    assert "id: 1" in raw  # the event's other fields are kept


async def test_an_unauthenticated_request_gets_the_challenge_whatever_its_body(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """An MCP client's first request has no token: it must learn where to authorize (RFC 9728),
    not that its body is malformed."""
    guard = await app_factory(files_policy(f"{upstream.url}/mcp"))
    bodies = [b"", b"{", b"[]", b"not json", json.dumps(rpc("tools/call", 1, name="read_file")).encode()]
    for body in bodies:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}):
            async with http.post(f"{guard.url}/mcp/files", data=body,
                                 headers={"Content-Type": "application/json", **headers}) as r:
                problem = json.loads(await r.read())
                assert r.status == 401, (body, headers, problem)
                assert problem["code"] == "unauthenticated"
                assert "resource_metadata=" in r.headers["WWW-Authenticate"]
    assert upstream.requests == []
