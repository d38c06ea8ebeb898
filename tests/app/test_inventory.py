"""The NHI inventory in process (guard's app on real sockets, the CLI run by its entry point):
registration, discovery of unregistered agents, the tools cap, counters shared by instances, the
kill switch, restore and idle expiry. (`guard policy check`: tests/e2e/test_inventory_cli.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.guard import shared_keys
from tests.support.redis import RedisServer
from tests.support.upstream import Seen, Upstream

ROGUE = "spiffe://elsewhere/agent/crawler"
BILLING = "spiffe://acme/agent/billing-eu"
ADMIN = "ops@acme.example"


def inventory_policy(upstream_url: str) -> dict[str, Any]:
    actions = {"read": {"method": "GET", "path": "/items/{id}"}, "pay": {"method": "POST", "path": "/pay"}}
    return {
        "tools": {name: {"kind": "http", "upstream": upstream_url, "actions": actions} for name in ("echo", "ledger")},
        "agents": {
            AGENT: {"owner": "alice@acme.example", "purpose": "weekly research reports", "tools": ["echo"]},
            "spiffe://acme/agent/billing-*": {"owner": "bob@acme.example", "purpose": "pays invoices"},
        },
        "rules": [
            {"id": "reads", "effect": "allow", "match": {"action": ["read"]}},
            {"id": "big-pay", "effect": "step_up", "approvers": "finance", "match": {"action": "pay"}},
        ],
    }


async def agents_of(http: aiohttp.ClientSession, g: AppGuard, token: str | None = None) -> dict[str, dict[str, Any]]:
    token = token or g.token("auditor@acme.example", "guard:auditor")
    async with http.get(f"{g.url}/v1/agents", headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
        return {row["agent"]: row for row in await r.json()}


async def read(http: aiohttp.ClientSession, g: AppGuard, task: dict[str, Any], tool: str = "echo") -> tuple[int, Any]:
    async with http.get(f"{g.url}/tools/{tool}/items/1", headers=bearer(task["task_token"])) as r:
        return r.status, await r.json(content_type=None)


async def post_task(http: aiohttp.ClientSession, g: AppGuard, sub: str) -> tuple[int, Any]:
    async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(g.token(sub))) as r:
        return r.status, await r.json()


async def test_unregistered_agent_is_refused_and_discovered(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    g = await app_factory(inventory_policy(upstream.url), config={"store": {"url": store_url}})
    for _ in range(2):
        status, problem = await post_task(http, g, ROGUE)
        assert (status, problem["code"]) == (403, "unregistered_agent")
    assert (await post_task(http, g, BILLING))[0] == 201  # a glob entry registers it
    rows = await agents_of(http, g)
    rogue = rows[ROGUE]
    assert (rogue["registered"], rogue["owner"], rogue["unregistered_attempts"]) == (False, None, 2)
    assert rogue["first_seen"] <= rogue["last_seen"] and rogue["active_tasks"] == 0
    billing = rows[BILLING]
    assert (billing["registered"], billing["owner"], billing["active_tasks"]) == (True, "bob@acme.example", 1)
    never_seen = rows[AGENT]
    assert (never_seen["registered"], never_seen["owner"], never_seen["first_seen"]) == (
        True, "alice@acme.example", None)
    async with http.get(f"{g.url}/v1/agents", headers=bearer(g.token(AGENT))) as r:
        assert (r.status, (await r.json())["code"]) == (403, "forbidden")

    admin = g.token(ADMIN, "guard:admin")
    out = await g.cli("agents", "--url", g.url, "--token", admin)
    assert out.returncode == 0, out.stderr
    rogue_line = next(line for line in out.stdout.splitlines() if line.startswith(ROGUE))
    assert " NO " in rogue_line and " 2 " in rogue_line
    assert (await g.cli("agents", "--url", g.url, "--token", g.token(AGENT))).returncode == 1
    # without --url or GUARD_URL: the guard the config describes (its listen address here)
    assert "GUARD_URL" not in os.environ
    from_config = await g.cli("agents", "--token", admin, "--json")
    assert from_config.returncode == 0, from_config.stderr
    assert ROGUE in {row["agent"] for row in json.loads(from_config.stdout)}


async def test_entry_tools_cap_every_task_and_counters(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    g = await app_factory(inventory_policy(upstream.url), config={"store": {"url": store_url}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await read(http, g, task))[0] == 200
    status, problem = await read(http, g, task, tool="ledger")  # the rule allows it; the entry's cap does not
    assert (status, problem["code"]) == (403, "denied")
    asked_for_more = await create_task(http, g.url, g.token(AGENT), tools=["echo", "ledger"])
    assert (await read(http, g, asked_for_more, tool="ledger"))[0] == 403
    row = (await agents_of(http, g))[AGENT]
    assert (row["calls"], row["denied"], row["tools_used"], row["active_tasks"]) == (1, 2, ["echo"], 2)
    assert row["tools_cap"] == ["echo"] and row["last_seen"] >= row["first_seen"]


@pytest.mark.redis
async def test_counters_cover_every_instance(
    app_factory: AppFactory, upstream: Upstream, redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared")}
    a = await app_factory(inventory_policy(upstream.url), config=config, subdir="a")
    b = await app_factory(inventory_policy(upstream.url), config=config, subdir="b")
    task = await create_task(http, a.url, a.token(AGENT))
    assert (await read(http, a, task))[0] == 200
    assert (await read(http, b, task))[0] == 200
    assert (await read(http, b, task, tool="ledger"))[0] == 403
    assert (await post_task(http, b, ROGUE))[0] == 403
    for g in (a, b):
        rows = await agents_of(http, g)
        assert (rows[AGENT]["calls"], rows[AGENT]["denied"], rows[AGENT]["active_tasks"]) == (2, 1, 1)
        assert rows[ROGUE]["unregistered_attempts"] == 1
    admin = bearer(b.token(ADMIN, "guard:admin"))
    async with http.post(f"{b.url}/v1/agents/{quote(AGENT, safe='')}/suspend", json={"reason": "x"},
                         headers=admin) as r:
        assert r.status == 200
    status, problem = await read(http, a, task)  # the kill switch at B stops the task at A
    assert (status, problem["code"]) == (403, "task_inactive")
    assert (await agents_of(http, a))[AGENT]["suspended"] is True


class HeldUpstream:
    """Holds each request until released, so a call can be in flight while the test acts."""

    def __init__(self, upstream: Upstream) -> None:
        self.release = threading.Event()
        upstream.handler = self.handle

    async def handle(self, request: web.Request, seen: Seen) -> None:
        while not self.release.is_set():
            await asyncio.sleep(0.02)


async def test_suspension_mid_task_and_restore(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    g = await app_factory(inventory_policy(upstream.url), config={"store": {"url": store_url}})
    task = await create_task(http, g.url, g.token(AGENT))
    async with http.post(f"{g.url}/tools/echo/pay", json={"amount": 5}, headers=bearer(task["task_token"])) as r:
        approval_id = (await r.json())["approval_id"]  # a pending approval, to be expired by the kill switch
    held = HeldUpstream(upstream)
    in_flight = asyncio.create_task(read(http, g, task))
    seen = await until(lambda: asyncio.sleep(0, upstream.requests[-1:]), "the call to reach the tool")
    credential = seen[0].headers["Authorization"].removeprefix("Bearer ")
    txn_token = seen[0].headers["Txn-Token"]

    admin = g.token(ADMIN, "guard:admin")
    async with http.post(f"{g.url}/v1/agents/{quote(AGENT, safe='')}/suspend",
                         json={"reason": "key leaked in a public repo"}, headers=bearer(admin)) as r:
        body = await r.json()
        assert r.status == 200 and body["revoked_tasks"] == [task["task_id"]]
    async with http.post(f"{g.url}/tools/echo/items/2", headers={"Txn-Token": txn_token}) as r:
        assert (r.status, (await r.json())["code"]) == (403, "task_inactive")  # its chained calls too
    held.release.set()
    assert (await in_flight)[0] == 200  # the call in flight finishes
    status, problem = await read(http, g, task)
    assert (status, problem["code"]) == (403, "task_inactive")  # the next one does not
    async with http.post(f"{g.url}/v1/credentials/introspect", data={"token": credential}) as r:
        assert await r.json() == {"active": False}
    async with http.get(f"{g.url}/v1/approvals/{approval_id}", headers=bearer(admin)) as r:
        assert (await r.json())["status"] == "expired"
    status, problem = await post_task(http, g, AGENT)
    assert (status, problem["code"]) == (403, "agent_suspended")
    row = (await agents_of(http, g))[AGENT]
    assert (row["suspended"], row["suspended_by"], row["active_tasks"]) == (True, ADMIN, 0)
    async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(admin)) as r:
        revoked = [rec for rec in (await r.json())["records"] if rec["event"] == "task_revoked"]
    assert revoked[0]["actor"] == ADMIN and "key leaked in a public repo" in revoked[0]["detail"]

    async with http.post(f"{g.url}/v1/agents/{quote(AGENT, safe='')}/restore", headers=bearer(admin)) as r:
        assert r.status == 200 and (await r.json())["restored"] is True
    fresh = await create_task(http, g.url, g.token(AGENT))
    assert (await read(http, g, fresh))[0] == 200
    assert (await read(http, g, task))[0] == 403  # restoring does not revive revoked tasks
    assert (await agents_of(http, g))[AGENT]["suspended"] is False
    async with http.post(f"{g.url}/v1/agents/{quote(AGENT, safe='')}/suspend", json={"reason": "x"},
                         headers=bearer(g.token("auditor@acme.example", "guard:auditor"))) as r:
        assert r.status == 403  # only an admin pulls the switch


async def test_idle_task_expires(
    app_factory: AppFactory, upstream: Upstream, store_url: str, http: aiohttp.ClientSession
) -> None:
    g = await app_factory(inventory_policy(upstream.url),
                             config={"store": {"url": store_url}, "limits": {"task_idle_s": 1}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await read(http, g, task))[0] == 200

    async def no_active_task() -> bool:
        active: int = (await agents_of(http, g))[AGENT]["active_tasks"]
        return active == 0

    await until(no_active_task, "the idle task to expire")
    async with http.get(f"{g.url}/v1/tasks/{task['task_id']}", headers=bearer(task["task_token"])) as r:
        assert (await r.json())["status"] == "expired"
    status, problem = await read(http, g, task)
    assert (status, problem["code"]) == (403, "task_inactive")
    admin = g.token(ADMIN, "guard:admin")
    async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(admin)) as r:
        expired = [rec for rec in (await r.json())["records"] if rec["event"] == "task_expired"]
    assert [rec["detail"] for rec in expired] == ["idle"]
