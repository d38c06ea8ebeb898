"""Retention soak (`make test-long`): 10,000 task lifecycles (create, one call, complete) through
a guard on Redis with `retention.ended_task_s: 1`. Once retention has caught up, Redis's key
count and `used_memory` and the guard's RSS are back within 10 % of what they were after the
warm-up: state does not grow with the number of tasks a deployment has seen. `used_memory` is
taken without the buffers of the connected clients (`mem_clients_normal`): with the guard's
fifty-odd connections they move by a few hundred KB from one moment to the next, which is more
than 10 % of an almost empty Redis and says nothing about retained state. The warm-up goes
past the audit journal's first checkpoint, whose sync threads are a one-time step of the guard's
RSS. GUARD_SOAK_TASKS and GUARD_SOAK_WARMUP set the number of lifecycles (10,000 and 6,000)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis

from guard.stores.redis import keys
from tests.support.client import AGENT, bearer, echo_policy, until
from tests.support.guard import Guard
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = [pytest.mark.slow, pytest.mark.redis]

TASKS = int(os.environ.get("GUARD_SOAK_TASKS", "10000"))
WARMUP = int(os.environ.get("GUARD_SOAK_WARMUP", "6000"))
CONCURRENCY = 24


async def lifecycles(g: Guard, idp: str, count: int) -> None:
    """`count` tasks, each created, called once and completed, CONCURRENCY at a time."""
    left = iter(range(count))
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            async with http.post(f"{g.url}/v1/tasks", json={"purpose": "soak"}, headers=bearer(idp)) as r:
                assert r.status == 201, await r.text()
                task = await r.json()
            async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
                assert r.status == 200, await r.text()
            async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/complete",
                                 headers=bearer(task["task_token"])) as r:
                assert r.status == 200, await r.text()

        async def worker() -> None:
            for _ in left:
                await one()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def settled(raw: Any, g: Guard) -> tuple[int, int, int]:
    """(keys, used_memory without client buffers, guard RSS KiB) once retention has removed
    every ended task."""

    async def caught_up() -> bool:
        counts = [await raw.scard(keys.TASKS), await raw.zcard(keys.ENDED), await raw.zcard(keys.EXPIRING)]
        return counts == [0, 0, 0]

    await until(caught_up, "retention to catch up", 120)
    await asyncio.sleep(2)  # TTLs that fell due meanwhile
    assert g.proc is not None
    memory = await raw.info("memory")
    return int(await raw.dbsize()), int(memory["used_memory"]) - int(memory["mem_clients_normal"]), g.proc.rss_kib()


@pytest.mark.timeout(1800)
async def test_state_comes_back_after_10000_lifecycles(guard_factory: Any, upstream: Upstream,
                                                       redis_server: RedisServer,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), config={
        "store": {"url": redis_server.url}, "retention": {"ended_task_s": 1}})
    idp = g.token(AGENT)
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await lifecycles(g, idp, WARMUP)
        keys0, mem0, rss0 = await settled(raw, g)
        await lifecycles(g, idp, TASKS)
        keys1, mem1, rss1 = await settled(raw, g)
    finally:
        await raw.aclose()
    with capsys.disabled():
        print(f"\n[retention soak] {TASKS} lifecycles after {WARMUP}: keys {keys0} -> {keys1}, "
              f"used_memory without client buffers {mem0} -> {mem1} B, guard RSS {rss0} -> {rss1} KiB")
    assert len(upstream.requests) == WARMUP + TASKS
    assert keys1 <= keys0 * 1.1, (keys0, keys1)
    assert mem1 <= mem0 * 1.1, (mem0, mem1)
    assert rss1 <= rss0 * 1.1, (rss0, rss1)
