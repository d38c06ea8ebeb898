"""Crash safety (`make test-long`): `kill -9` the guard during load and restart it; kill Redis
during load and restart it. Nothing forwarded without a durable decision record, every trail
verifies, no credential is active twice, the guard fails closed while Redis is down, pending
approval deliveries resume."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from guard.approvals.signature import sign
from tests.e2e.loadgen import Load, check_trails, trails
from tests.support.client import bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow

SECRET = "crash-test-finance-secret"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def introspect(http: aiohttp.ClientSession, url: str, token: str) -> bool:
    async with http.post(f"{url}/v1/credentials/introspect", data={"token": token}) as r:
        return bool((await r.json())["active"])


def forwarded_calls(upstream: Upstream) -> list[tuple[str, str, str]]:
    """(task_id, call_id, credential) of every request the upstream received."""
    out = []
    for s in upstream.requests:
        h = {k.lower(): v for k, v in s.headers.items()}
        out.append((h["guard-task-id"], h["guard-call-id"], h["authorization"].removeprefix("Bearer ")))
    return out


async def api_trails(g: Guard, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    auditor = bearer(g.token("sec@acme.example", "guard:auditor"))
    out = {}
    async with aiohttp.ClientSession() as http:
        for task_id in task_ids:
            async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=auditor) as r:
                body = await r.json()
                assert body["verified"] is True, task_id
                out[task_id] = body["records"]
    return out


async def assert_every_forward_was_decided_first(g: Guard, upstream: Upstream, redis: bool) -> None:
    """Every call the upstream received has its `call_decided` allow record in a verified trail.
    With Redis the store's chain is the trail (a crash may leave the folder's copy short of the
    records written to Redis just before it: the copy never holds anything the chain lacks)."""
    calls = forwarded_calls(upstream)
    task_ids = sorted({t for t, _, _ in calls})
    files = trails(g, task_ids)
    if redis:
        records = await api_trails(g, task_ids)
        for task_id, recs in files.items():
            hashes = {r["hash"] for r in records[task_id]}
            assert all(r["hash"] in hashes for r in recs), task_id
    else:
        records = files
    events = check_trails(records)
    for task_id, call_id, _ in calls:
        assert "call_decided:allow" in events[task_id].get(call_id, set()), (task_id, call_id)


async def test_kill_9_during_load(guard_factory: Any, upstream: Upstream, store_url: str) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url),
                             config={"store": {"url": store_url}, "limits": {"credential_ttl_s": 600}})
    load = await Load.create(g, 20)
    active: Counter[str] = Counter()
    async with aiohttp.ClientSession() as http:
        running = asyncio.ensure_future(load.run_until_stopped())
        await until(lambda: _more_than(upstream, 200), "load to build up")
        # the tool checks some of its credentials while the load runs
        for _, _, cred in forwarded_calls(upstream)[:50]:
            active[cred] += await introspect(http, g.url, cred)
        g.kill()  # SIGKILL mid-load: the load runs on until the agents feel it
        await until(lambda: _crash_felt(load), "the agents to feel the crash")
        load.stop.set()
        await running
        g.start()
        await assert_every_forward_was_decided_first(g, upstream, store_url.startswith("redis"))
        # every credential the upstream got, introspected again after the restart
        for _, _, cred in forwarded_calls(upstream):
            active[cred] += await introspect(http, g.url, cred)
            active[cred] += await introspect(http, g.url, cred)
        assert max(active.values()) <= 1, [c for c, n in active.items() if n > 1][:3]
        if store_url.startswith("redis"):  # state survived: the same tasks carry on
            before = len(upstream.requests)
            await load.run(2.0)
            assert len(upstream.requests) > before
            assert not [o for o in load.outcomes[-50:] if o.status >= 500]
            await assert_every_forward_was_decided_first(g, upstream, True)


async def _crash_felt(load: Load) -> bool:
    return any(o.status == 0 for o in load.outcomes)


async def _more_than(upstream: Upstream, n: int) -> bool:
    return len(upstream.requests) > n


@pytest.mark.redis
async def test_redis_killed_during_load(guard_factory: Any, upstream: Upstream, redis_server: RedisServer) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": redis_server.url}})
    load = await Load.create(g, 10)
    load.pause_s = 0.01
    running = asyncio.ensure_future(load.run(14.0))
    await until(lambda: _more_than(upstream, 100), "load to build up")
    redis_server.kill()
    killed_at = len(load.outcomes)

    async def refusing() -> bool:
        return sum(1 for o in load.outcomes[killed_at:] if o.status == 503) > 20

    await until(refusing, "the guard to fail closed")
    await asyncio.sleep(0.5)  # calls already past the store when it died finish
    down_from, forwarded = len(load.outcomes), len(upstream.requests)
    await asyncio.sleep(2.0)
    while_down = load.outcomes[down_from:]
    assert while_down and {(o.status, o.code) for o in while_down} == {(503, "store_unavailable")}
    assert len(upstream.requests) == forwarded  # nothing forwarded while Redis is down
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{g.url}/readyz") as r:
            assert r.status == 503
        redis_server.start()  # same folder: the append-only file (appendfsync always) is replayed

        async def ready() -> bool:
            async with http.get(f"{g.url}/readyz") as r:
                return r.status == 200

        await until(ready, "the guard to see Redis again")
        back_from = len(load.outcomes)
        await running
        assert any(o.status == 200 for o in load.outcomes[back_from:])
        # no answered call's record was lost: decisions are in the store's verified trails
        auditor = bearer(g.token("sec@acme.example", "guard:auditor"))
        for task in load.tasks:
            async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
                body = await r.json()
            assert body["verified"] is True, task["task_id"]
            decided = {rec["call_id"] for rec in body["records"] if rec["event"] == "call_decided"}
            for o in load.outcomes:
                if o.task_id == task["task_id"] and o.status in (200, 403):
                    assert o.call_id in decided, o
    assert not [o for o in load.outcomes if o.status >= 500 and o.status != 503]
    await assert_every_forward_was_decided_first(g, upstream, True)


@pytest.mark.redis
async def test_kill_9_resumes_pending_approval_deliveries(
    guard_factory: Any, upstream: Upstream, upstream_factory: Any, redis_server: RedisServer
) -> None:
    receiver = upstream_factory()
    receiver.status = 503  # the approver's endpoint is down at first
    hooks = [{"name": "finance", "url": receiver.url + "/hook", "secret_env": "GUARD_WEBHOOK_SECRET_FINANCE"}]
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": redis_server.url},
                                                                "approvals": {"webhooks": hooks}},
                             env={"GUARD_WEBHOOK_SECRET_FINANCE": SECRET})
    async with aiohttp.ClientSession() as http:
        task = await create_task(http, g.url, g.token("spiffe://acme/agent/researcher"))
        h = bearer(task["task_token"])
        async with http.post(f"{g.url}/tools/echo/pay", json={"amount": 900}, headers=h) as r:
            approval_id = (await r.json())["approval_id"]

        async def attempted() -> bool:
            return bool(receiver.requests)

        await until(attempted, "a first (failing) delivery")
        g.kill()
        receiver.requests.clear()
        receiver.status = 200
        g.start()

        async def delivered() -> bool:
            return any(json.loads(s.body).get("approval_id") == approval_id for s in receiver.requests)

        await until(delivered, "the delivery to resume after the crash", 75)
        body = json.dumps({"decision": "approve", "approver": "carol@acme.example",
                           "approval_id": approval_id}).encode()
        async with http.post(f"{g.url}/v1/approvals/{approval_id}/decision", data=body,
                             headers={"Guard-Signature": sign(SECRET, body),
                                      "Content-Type": "application/json"}) as r:
            assert r.status == 200
        async with http.post(f"{g.url}/tools/echo/pay", json={"amount": 900}, headers=h) as r:
            assert r.status == 200
    assert len(upstream.requests) == 1
    await assert_every_forward_was_decided_first(g, upstream, True)
