"""Retention end to end, on both stores: an ended task's state goes `retention.ended_task_s`
after its end (GET /v1/tasks/{id} answers 404), a task nobody ended expires and goes the same
way, its trail stays readable (API and `guard audit`) until `retention.audit_s`, and the agent
inventory stays."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support.client import AGENT, bearer, create_task, echo_policy, until
from tests.support.guard import Guard
from tests.support.upstream import Upstream


async def status_of(http: aiohttp.ClientSession, g: Guard, path: str, token: str) -> int:
    async with http.get(f"{g.url}{path}", headers=bearer(token)) as r:
        await r.read()
        return r.status


async def gone(http: aiohttp.ClientSession, g: Guard, task_id: str, auditor: str) -> None:
    async def probe() -> bool:
        return await status_of(http, g, f"/v1/tasks/{task_id}", auditor) == 404

    await until(probe, "the task's state to be deleted", 30)


async def test_an_ended_task_goes_and_its_trail_stays(guard_factory: Any, upstream: Upstream, store_url: str,
                                                     http: aiohttp.ClientSession) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url),
                             config={"store": {"url": store_url}, "retention": {"ended_task_s": 1}})
    auditor, admin = g.token("sec@acme.example", "guard:auditor"), g.token("ops@acme.example", "guard:admin")
    completed = await create_task(http, g.url, g.token(AGENT))
    untouched = await create_task(http, g.url, g.token(AGENT), ttl_s=2)  # nobody ends it: it expires
    async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(completed["task_token"])) as r:
        assert r.status == 200
    async with http.post(f"{g.url}/v1/tasks/{completed['task_id']}/complete",
                         headers=bearer(completed["task_token"])) as r:
        assert r.status == 200
    assert await status_of(http, g, f"/v1/tasks/{completed['task_id']}", auditor) == 200  # kept for a while

    for task, event in ((completed, "task_completed"), (untouched, "task_expired")):
        await gone(http, g, task["task_id"], auditor)
        async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(auditor)) as r:
            assert r.status == 200
            trail = await r.json()
        assert trail["verified"] is True
        assert event in [rec["event"] for rec in trail["records"]]
        shown = g.cli("audit", "show", task["task_id"])
        assert shown.returncode == 0 and event in shown.stdout, shown.stdout + shown.stderr
        assert g.cli("audit", "verify", task["task_id"]).returncode == 0

    async with http.get(f"{g.url}/v1/agents", headers=bearer(admin)) as r:
        [row] = [row for row in await r.json() if row["agent"] == AGENT]
    assert row["tasks_created"] == 2 and row["calls"] == 1 and row["active_tasks"] == 0
    async with http.get(f"{g.url}/tools/echo/items/2", headers=bearer(completed["task_token"])) as r:
        assert r.status == 403 and (await r.json())["code"] == "task_inactive"
    assert len(upstream.requests) == 1


async def test_the_trail_goes_after_audit_s(guard_factory: Any, upstream: Upstream, store_url: str,
                                            http: aiohttp.ClientSession) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), config={
        "store": {"url": store_url}, "retention": {"ended_task_s": 1, "audit_s": 2}})
    auditor = g.token("sec@acme.example", "guard:auditor")
    task = await create_task(http, g.url, g.token(AGENT))
    async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/complete", headers=bearer(task["task_token"])) as r:
        assert r.status == 200

    async def trail_gone() -> bool:
        return await status_of(http, g, f"/v1/tasks/{task['task_id']}/audit", auditor) == 404

    await until(trail_gone, "the trail to be deleted", 60)
    assert not (g.audit_dir() / f"{task['task_id']}.jsonl").exists()
    assert g.cli("audit", "show", task["task_id"]).returncode != 0
