"""Baselines in process: after `learn_s` of an agent's activity, a call to a tool.action it never
used, or above 3x its busiest earlier hour, matches `match.agent: {unusual: true}`, is audited
`anomaly`, counted in /metrics, and the inventory shows each agent's baseline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from guard.routes.common import DEPS
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.upstream import Upstream

LEARN_S = 1


def policy(upstream: Upstream) -> dict[str, Any]:
    p = echo_policy(upstream.url)
    p["rules"].insert(0, {"id": "unusual-refused", "effect": "deny", "match": {"agent": {"unusual": True}}})
    return p


async def get(http: aiohttp.ClientSession, g: AppGuard, task: dict[str, Any], path: str) -> tuple[int, Any]:
    async with http.get(f"{g.url}/tools/echo{path}", headers=bearer(task["task_token"])) as r:
        return r.status, await r.json(content_type=None)


async def records(http: aiohttp.ClientSession, g: AppGuard, task_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        return list((await r.json())["records"])


async def inventory_row(http: aiohttp.ClientSession, g: AppGuard) -> dict[str, Any]:
    async with http.get(f"{g.url}/v1/agents", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        return next(x for x in await r.json() if x["agent"] == AGENT)


async def test_a_never_used_action_after_learning_is_unusual(
        app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    g = await app_factory(policy(upstream), {"baseline": {"learn_s": LEARN_S}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await get(http, g, task, "/items/1"))[0] == 200  # learning: every call is usual
    assert (await inventory_row(http, g))["baseline"]["learning"] is True
    await asyncio.sleep(LEARN_S + 0.2)
    assert (await get(http, g, task, "/items/2"))[0] == 200  # a known action
    status, body = await get(http, g, task, "/limited")  # never used before
    assert (status, body["code"], body["rule_id"]) == (403, "denied", "unusual-refused")
    anomaly = next(r for r in await records(http, g, task["task_id"]) if r["event"] == "anomaly")
    assert anomaly["tool"] == "echo" and anomaly["action"] == "limited"
    assert anomaly["detail"]["reason"] == "new_action"
    async with http.get(f"{g.url}/metrics") as r:
        assert 'guard_anomalies_total{reason="new_action"} 1.0' in await r.text()
    row = await inventory_row(http, g)
    assert row["baseline"]["learning"] is False
    assert row["baseline"]["actions"] == ["echo.limited", "echo.read"]


async def test_a_burst_above_three_times_the_busiest_hour_is_unusual(
        app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    g = await app_factory(policy(upstream), {"baseline": {"learn_s": LEARN_S}})
    # two hours ago the agent made one call: its busiest earlier hour is 1 call
    await g.client.app[DEPS].store.observe_activity(AGENT, "echo.read", time.time() - 7200)
    task = await create_task(http, g.url, g.token(AGENT))
    statuses = [(await get(http, g, task, f"/items/{i}"))[0] for i in range(4)]
    assert statuses[:3] == [200, 200, 200] and statuses[3] == 403  # the 4th call of the hour: above 3 x 1
    anomaly = next(r for r in await records(http, g, task["task_id"]) if r["event"] == "anomaly")
    assert anomaly["detail"] == {"reason": "rate", "hour_calls": 4, "busiest_hour": 1}
    assert (await inventory_row(http, g))["baseline"]["busiest_hour_calls"] == 1


async def test_without_baseline_the_unusual_rule_never_matches(
        app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    g = await app_factory(policy(upstream))
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await get(http, g, task, "/limited"))[0] == 200
    assert not [r for r in await records(http, g, task["task_id"]) if r["event"] == "anomaly"]
    assert "baseline" not in await inventory_row(http, g)
