"""The allow path's shortcuts keep every promise: a task seen before is not read again before
admission, yet a revoked task refuses at once (unrecorded, as ever); a small answer is audited
together with the end of its call; a large one still streams."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from guard.hashchain import verify_chain
from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import GuardLike
from tests.support.upstream import Seen, Upstream


async def trail(http: aiohttp.ClientSession, g: GuardLike, task_id: str) -> dict[str, Any]:
    auditor = bearer(g.token("audit@acme.example", "guard:auditor"))
    async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=auditor) as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body


async def test_a_revoked_task_refuses_every_call_after_calls_went_through(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    g = await app_factory(echo_policy(upstream.url), config={"store": {"url": store_url}})
    task = await create_task(http, g.url, g.token(AGENT))
    agent = bearer(task["task_token"])
    for i in range(3):
        async with http.get(f"{g.url}/tools/echo/items/{i}", headers=agent) as r:
            assert r.status == 200
    admin = bearer(g.token("ops@acme.example", "guard:admin"))
    async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/revoke", json={"reason": "incident"},
                         headers=admin) as r:
        assert r.status == 200
    for method, path in (("GET", "/items/9"), ("DELETE", "/items/9"), ("GET", "/unruled")):
        async with http.request(method, f"{g.url}/tools/echo{path}", headers=agent) as r:
            assert (r.status, (await r.json(content_type=None))["code"]) == (403, "task_inactive"), path
    assert len(upstream.requests) == 3
    body = await trail(http, g, task["task_id"])
    events = [rec["event"] for rec in body["records"]]
    assert body["verified"] and events[-1] == "task_revoked"
    assert events.count("call_decided") == 3 and events.count("call_forwarded") == 3


async def test_answers_small_and_large_reach_the_agent_whole_and_audited(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: streamed, not read whole first

    def answer(request: web.Request, seen: Seen) -> web.Response:
        body = big if request.match_info["tail"].endswith("big") else b'{"small":true}'
        return web.Response(body=body, content_type="application/octet-stream", headers={"X-Tool": "yes"})

    upstream.handler = answer
    g = await app_factory(echo_policy(upstream.url), config={"store": {"url": store_url}})
    task = await create_task(http, g.url, g.token(AGENT))
    for name, expected in (("small", b'{"small":true}'), ("big", big)):
        async with http.get(f"{g.url}/tools/echo/items/{name}", headers=bearer(task["task_token"])) as r:
            assert r.status == 200 and await r.read() == expected
            assert r.headers["X-Tool"] == "yes" and r.headers["Guard-Task-Id"] == task["task_id"]
            assert r.headers["Content-Length"] == str(len(expected))
    body = await trail(http, g, task["task_id"])
    forwarded = [rec for rec in body["records"] if rec["event"] == "call_forwarded"]
    assert body["verified"] and [rec["status"] for rec in forwarded] == [200, 200]
    assert verify_chain(body["records"]).verified
