"""Redis goes away and comes back: the guard fails closed, then serves again by itself."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.redis

# a hang fails the request instead of the whole run; no assertion is made on how long it took
BOUNDED = aiohttp.ClientTimeout(total=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=BOUNDED) as s:
        yield s


@pytest.fixture
def guard(guard_factory: Any, upstream: Upstream, redis_server: RedisServer) -> Guard:
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": redis_server.url}})
    return g


async def problem_code(r: aiohttp.ClientResponse) -> str | None:
    body = await r.json(content_type=None)
    return body.get("code") if isinstance(body, dict) else None


async def wait_ready(http: aiohttp.ClientSession, g: Guard, attempts: int = 100) -> None:
    for _ in range(attempts):
        async with http.get(f"{g.url}/readyz") as r:
            if r.status == 200:
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the guard did not become ready again")


async def test_redis_down_fails_closed_and_recovery_needs_no_restart(
    guard: Guard, upstream: Upstream, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    idp = guard.token(AGENT)
    auditor = bearer(guard.token("sec@acme.example", "guard:auditor"))
    task = await create_task(http, guard.url, idp)
    h = bearer(task["task_token"])
    for i in range(3):
        async with http.get(f"{guard.url}/tools/echo/items/{i}", headers=h) as r:
            assert r.status == 200
    async with http.get(f"{guard.url}/readyz") as r:
        assert r.status == 200

    redis_server.kill()  # SIGKILL by PID: whatever was answered must already be in the AOF
    for _ in range(3):
        async with http.get(f"{guard.url}/tools/echo/items/9", headers=h) as r:
            assert (r.status, await problem_code(r)) == (503, "store_unavailable")
        async with http.post(f"{guard.url}/v1/tasks", json={"purpose": "during the outage"},
                             headers=bearer(idp)) as r:
            assert (r.status, await problem_code(r)) == (503, "store_unavailable")
            assert r.content_type == "application/problem+json"
        async with http.get(f"{guard.url}/readyz") as r:
            assert r.status == 503
    assert [s.path_qs for s in upstream.requests] == ["/items/0", "/items/1", "/items/2"]

    redis_server.start()  # same port, same folder: the AOF is replayed
    await wait_ready(http, guard)
    async with http.get(f"{guard.url}/tools/echo/items/10", headers=h) as r:
        assert r.status == 200
    later = await create_task(http, guard.url, idp)
    assert later["status"] == "active"
    assert guard.proc is not None and guard.proc.popen.poll() is None  # the same process served throughout

    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
        body = await r.json()
    assert r.status == 200 and body["verified"] is True
    forwarded = [rec["call_id"] for rec in body["records"] if rec["event"] == "call_forwarded"]
    assert len(forwarded) == 4  # the three answered before the outage and the one after
    assert body["records"][0]["event"] == "task_created"


async def test_a_guard_started_while_redis_is_down_serves_once_it_is_up(
    guard_factory: Any, upstream: Upstream, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    redis_server.stop()
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": redis_server.url}}, subdir="late")
    async with http.get(f"{g.url}/readyz") as r:
        assert r.status == 503
    async with http.post(f"{g.url}/v1/tasks", json={"purpose": "too early"}, headers=bearer(g.token(AGENT))) as r:
        assert (r.status, await problem_code(r)) == (503, "store_unavailable")
    redis_server.start()
    await wait_ready(http, g)
    task = await create_task(http, g.url, g.token(AGENT))
    async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    assert len(upstream.requests) == 1


async def test_a_redis_that_stops_answering_fails_closed_and_is_used_again(
    guard_factory: Any, upstream: Upstream, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """SIGSTOP: the connection stays open and nothing answers. Each call gets 503 once the
    store's deadline (here the URL's 0.3 s) passes, nothing is forwarded, and once Redis answers
    again the same process serves."""
    g: Guard = guard_factory(echo_policy(upstream.url), subdir="hung",
                             config={"store": {"url": f"{redis_server.url}?socket_timeout=0.3"}})
    task = await create_task(http, g.url, g.token(AGENT))
    h = bearer(task["task_token"])
    async with http.get(f"{g.url}/tools/echo/items/1", headers=h) as r:
        assert r.status == 200
    redis_server.send_signal(signal.SIGSTOP)
    try:
        answers = await asyncio.gather(*(http.get(f"{g.url}/tools/echo/items/{i}", headers=h) for i in range(2, 6)))
        for r in answers:
            assert (r.status, await problem_code(r)) == (503, "store_unavailable")
            r.release()
    finally:
        redis_server.send_signal(signal.SIGCONT)
    assert [s.path_qs for s in upstream.requests] == ["/items/1"]
    async with http.get(f"{g.url}/tools/echo/items/7", headers=h) as r:
        assert r.status == 200
    assert [s.path_qs for s in upstream.requests] == ["/items/1", "/items/7"]


async def test_after_a_redis_restart_calls_succeed_once_ready(
    guard: Guard, upstream: Upstream, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    """Redis restarts while the guard is idle, so every connection it holds is stale. The
    first call reconnects before it answers, whether or not anyone asked /readyz; and once
    /readyz answers 200, no call answers 503 store_unavailable."""
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=h) as r:
        assert r.status == 200
    redis_server.stop()
    redis_server.start()  # returns once Redis answers PING
    async with http.get(f"{guard.url}/tools/echo/items/2", headers=h) as r:
        assert r.status == 200, await r.text()
    redis_server.stop()
    redis_server.start()
    await wait_ready(http, guard)
    for i in range(3, 6):
        async with http.get(f"{guard.url}/tools/echo/items/{i}", headers=h) as r:
            assert r.status == 200, await r.text()
    assert [s.path_qs for s in upstream.requests] == [f"/items/{i}" for i in range(1, 6)]
    reconnected = next(e for e in guard.log_events() if e["event"] == "store_reconnected")
    assert (reconnected["address"], reconnected["cause"]) == (f"127.0.0.1:{redis_server.port}", "closed while idle")
    # the shared connection's line names no call, though a call's command made it reconnect
    assert "task_id" not in reconnected and "call_id" not in reconnected, reconnected
