"""Baselines live in the store: a `guard serve` on a real redis-server learns an agent, is stopped
and started again, and the agent's baseline (and what is unusual for it) is still there."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.redis
LEARN_S = 1


async def test_a_baseline_survives_a_restart(guard_factory: Any, upstream: Upstream, redis_server: RedisServer,
                                             http: aiohttp.ClientSession) -> None:
    policy = echo_policy(upstream.url)
    policy["rules"].insert(0, {"id": "unusual-refused", "effect": "deny", "match": {"agent": {"unusual": True}}})
    g: Guard = guard_factory(policy, config={"store": {"url": redis_server.url}, "baseline": {"learn_s": LEARN_S}})
    task = await create_task(http, g.url, g.token(AGENT))
    async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    g.stop()
    await asyncio.sleep(LEARN_S + 0.2)
    g.start()
    async with http.get(f"{g.url}/v1/agents", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        row = next(x for x in await r.json() if x["agent"] == AGENT)
    assert row["baseline"]["actions"] == ["echo.read"] and row["baseline"]["learning"] is False
    async with http.get(f"{g.url}/tools/echo/items/2", headers=bearer(task["task_token"])) as r:
        assert r.status == 200  # learned before the restart: usual
    async with http.get(f"{g.url}/tools/echo/limited", headers=bearer(task["task_token"])) as r:
        assert r.status == 403 and (await r.json())["rule_id"] == "unusual-refused"
