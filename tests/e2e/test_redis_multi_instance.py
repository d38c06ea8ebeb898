"""Two `guard serve` processes on one real redis-server share every piece of state."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard, shared_keys
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.redis


@pytest.fixture
def pair(guard_factory: Any, upstream: Upstream, redis_server: RedisServer, tmp_path: Path) -> tuple[Guard, Guard]:
    """Instances A and B: one Redis, one signing key (tokens work at both), one audit folder."""
    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared", audit=True)}
    a: Guard = guard_factory(echo_policy(upstream.url), config=config, subdir="a")
    b: Guard = guard_factory(echo_policy(upstream.url), config=config, subdir="b")
    return a, b


async def call(http: aiohttp.ClientSession, g: Guard, token: str, path: str = "/items/1") -> tuple[int, Any]:
    async with http.get(f"{g.url}/tools/echo{path}", headers=bearer(token)) as r:
        return r.status, await r.json(content_type=None)


async def test_a_task_created_at_a_works_at_b(pair: tuple[Guard, Guard], upstream: Upstream,
                                             http: aiohttp.ClientSession) -> None:
    a, b = pair
    task = await create_task(http, a.url, a.token(AGENT))
    status, _ = await call(http, b, task["task_token"], "/items/42")
    assert status == 200
    assert [s.path_qs for s in upstream.requests] == ["/items/42"]
    async with http.get(f"{b.url}/v1/tasks/{task['task_id']}", headers=bearer(b.token(AGENT))) as r:
        body = await r.json()
        assert r.status == 200 and body["calls"] == 1 and body["status"] == "active"


async def test_a_credential_introspected_at_a_is_inactive_at_b(
    pair: tuple[Guard, Guard], upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    task = await create_task(http, a.url, a.token(AGENT))
    assert (await call(http, a, task["task_token"]))[0] == 200
    cred = upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    async with http.post(f"{a.url}/v1/credentials/introspect", data={"token": cred}) as r:
        first = await r.json()
    assert first["active"] is True and first["txn"] == task["task_id"]
    async with http.post(f"{b.url}/v1/credentials/introspect", data={"token": cred}) as r:
        assert await r.json() == {"active": False}


async def test_a_task_revoked_at_a_is_refused_at_b(pair: tuple[Guard, Guard], upstream: Upstream,
                                                   http: aiohttp.ClientSession) -> None:
    a, b = pair
    task = await create_task(http, a.url, a.token(AGENT))
    assert (await call(http, b, task["task_token"]))[0] == 200
    admin = bearer(a.token("ops@acme.example", "guard:admin"))
    async with http.post(f"{a.url}/v1/tasks/{task['task_id']}/revoke", json={"reason": "incident"},
                         headers=admin) as r:
        assert r.status == 200 and (await r.json())["status"] == "revoked"
    status, problem = await call(http, b, task["task_token"])
    assert (status, problem["code"]) == (403, "task_inactive")
    assert len(upstream.requests) == 1


async def test_calls_through_both_make_one_verified_audit_chain(
    pair: tuple[Guard, Guard], upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    task = await create_task(http, a.url, a.token(AGENT))
    results = await asyncio.gather(*(call(http, (a, b)[i % 2], task["task_token"], f"/items/{i}")
                                     for i in range(12)))
    assert [s for s, _ in results] == [200] * 12
    auditor = bearer(a.token("sec@acme.example", "guard:auditor"))
    bodies = []
    for g in (a, b):
        async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
            assert r.status == 200
            bodies.append(await r.json())
    assert bodies[0] == bodies[1]
    body = bodies[0]
    assert body["verified"] is True
    records = body["records"]
    assert [rec["seq"] for rec in records] == list(range(1, len(records) + 1))
    events = [rec["event"] for rec in records]
    assert events.count("call_decided") == 12 and events.count("call_forwarded") == 12
    # the audit folder both instances write to holds the same chain
    out = a.cli("audit", "verify", task["task_id"])
    assert out.returncode == 0, out.stdout + out.stderr


async def test_of_40_calls_split_across_both_exactly_max_calls_reach_the_tool(
    pair: tuple[Guard, Guard], upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    task = await create_task(http, a.url, a.token(AGENT), max_calls=5)
    results = await asyncio.gather(*(call(http, (a, b)[i % 2], task["task_token"], f"/items/{i}")
                                     for i in range(40)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 5
    assert {p["code"] for s, p in results if s != 200} == {"budget_exhausted"}
    assert len(upstream.requests) == 5


async def test_a_value_read_at_a_cannot_leave_through_b(
    guard_factory: Any, upstream: Upstream, redis_server: RedisServer, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Content integrity state is the store's: data labels and remembered values gathered at one
    instance hold at the other (exfiltration refused at B of a note read at A; the trifecta too)."""
    from tests.app.test_content import NOTE, content_policy, note_tool

    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared", audit=True)}
    policy = content_policy(upstream.url, redact=())
    a: Guard = guard_factory(policy, config=config, subdir="a")
    b: Guard = guard_factory(policy, config=config, subdir="b")
    note_tool(upstream)
    task = await create_task(http, a.url, a.token(AGENT))
    h = bearer(task["task_token"])
    async with http.get(f"{a.url}/tools/notes/notes/1", headers=h) as r:
        assert r.status == 200
    async with http.post(f"{b.url}/tools/mail/send", json={"body": f"fyi: {NOTE}"}, headers=h) as r:
        assert (await r.json())["code"] == "exfiltration_blocked"
    async with http.get(f"{a.url}/tools/web/page", headers=h) as r:
        assert r.status == 200
    async with http.post(f"{b.url}/tools/mail/send", json={"body": "hello"}, headers=h) as r:
        body = await r.json()
        assert body["code"] == "approval_required" and body["rule_id"] == "trifecta"
    assert not any(s.path_qs == "/send" for s in upstream.requests)
