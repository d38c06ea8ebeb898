"""Two `guard serve` processes on a real Redis Cluster (3 primaries, 3 replicas) and on a primary
with two replicas behind three sentinels, with `store.wait_replicas: 1`: they share tasks,
budgets and consumed credentials, and a primary killed under load costs 503 store_unavailable
until a replica is promoted, then calls succeed again with no restart of the guards. Every call
answered 2xx is in its task's audit chain afterwards, the chains verify, consumed credentials
stay consumed and no budget is over-spent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guard.stores.redis.keys import CREDENTIAL_TASKS, credential_key, task_key
from guard.stores.redis.store import RedisStore
from tests.support.client import AGENT, bearer, create_task, echo_policy, until
from tests.support.guard import Guard, shared_keys
from tests.support.process import require
from tests.support.redis import redis_missing_reason
from tests.support.redis_topology import ClusterTopology, RedisNode, SentinelTopology
from tests.support.upstream import Upstream

pytestmark = [pytest.mark.redis, pytest.mark.slow]

Topology = ClusterTopology | SentinelTopology


@pytest.fixture(params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Topology]:
    require(redis_missing_reason())
    kind = ClusterTopology if request.param == "cluster" else SentinelTopology
    with kind(tmp_path / "redis").start() as t:
        yield t


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


@pytest.fixture
def pair(guard_factory: Any, upstream: Upstream, topology: Topology, tmp_path: Path) -> tuple[Guard, Guard]:
    """Instances A and B on the topology, one signing key (tokens work at both)."""
    config = {"store": {"url": topology.url, "wait_replicas": 1}, **shared_keys(tmp_path / "shared")}
    a: Guard = guard_factory(echo_policy(upstream.url), config=config, subdir="a")
    b: Guard = guard_factory(echo_policy(upstream.url), config=config, subdir="b")
    return a, b


@dataclass
class Answer:
    task_id: str
    status: int
    code: str | None
    call_id: str | None
    at: float


async def call(http: aiohttp.ClientSession, g: Guard, task: dict[str, Any]) -> Answer:
    async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        body = await r.json(content_type=None)
        code = body.get("code") if isinstance(body, dict) else None
        return Answer(task["task_id"], r.status, code, r.headers.get("Guard-Call-Id"), time.monotonic())


async def trail(http: aiohttp.ClientSession, g: Guard, task_id: str, auditor: str) -> dict[str, Any]:
    async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=bearer(auditor)) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
        return data


async def introspect(http: aiohttp.ClientSession, g: Guard, credential: str) -> dict[str, Any]:
    async with http.post(f"{g.url}/v1/credentials/introspect", data={"token": credential}) as r:
        data: dict[str, Any] = await r.json()
        return data


async def test_two_instances_share_tasks_budgets_and_credentials(
    pair: tuple[Guard, Guard], upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    tasks = [await create_task(http, a.url, a.token(AGENT), max_calls=10) for _ in range(6)]  # over every slot
    answers = await asyncio.gather(*(call(http, (a, b)[i % 2], tasks[i % 6]) for i in range(90)))
    for task in tasks:
        mine = [x for x in answers if x.task_id == task["task_id"]]
        assert sorted(x.status for x in mine) == [200] * 10 + [429] * 5, mine
        assert {x.code for x in mine if x.status == 429} == {"budget_exhausted"}
    credential = upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    assert (await introspect(http, a, credential))["active"] is True
    assert (await introspect(http, b, credential)) == {"active": False}
    auditor = a.token("audit@acme.example", "guard:auditor")
    for task in tasks:
        data = await trail(http, b, task["task_id"], auditor)
        forwarded = {r["call_id"] for r in data["records"] if r["event"] == "call_forwarded"}
        assert data["verified"] and forwarded == {x.call_id for x in answers
                                                  if x.task_id == task["task_id"] and x.status == 200}


def victim_of(topology: Topology, task_id: str) -> RedisNode:
    if isinstance(topology, ClusterTopology):
        return topology.primary_of(task_key(task_id, "task"))
    return topology.primary()


async def wait_promoted(topology: Topology, victim: RedisNode) -> None:
    """A replica is promoted; in a cluster the killed node then comes back as its replica (a
    promoted replica has no replica of its own, and `wait_replicas: 1` needs one)."""
    if isinstance(topology, SentinelTopology):
        await asyncio.to_thread(topology.wait_promoted, victim)
        return
    await asyncio.to_thread(topology.wait_ok)
    victim.start()
    await asyncio.to_thread(topology.wait_replicated)


async def test_a_primary_killed_under_load_fails_closed_then_serves_again(
    pair: tuple[Guard, Guard], upstream: Upstream, topology: Topology, http: aiohttp.ClientSession
) -> None:
    a, b = pair
    idp = a.token(AGENT)
    tasks = [await create_task(http, a.url, idp) for _ in range(5)]
    tasks.append(await create_task(http, a.url, idp, max_calls=25))  # a budget the load exhausts
    victim = victim_of(topology, tasks[0]["task_id"])
    on_victim = {t["task_id"] for t in tasks if victim_of(topology, t["task_id"]) is victim}

    before = [await call(http, (a, b)[i % 2], tasks[i % len(tasks)]) for i in range(6)]
    assert all(x.status == 200 for x in before), before
    consumed = [s.headers["Authorization"].removeprefix("Bearer ") for s in upstream.requests[:3]]
    for c in consumed:
        assert (await introspect(http, a, c))["active"] is True

    answers: list[Answer] = [*before]
    stop = asyncio.Event()

    async def load(n: int) -> None:
        i = n
        while not stop.is_set():
            answers.append(await call(http, (a, b)[i % 2], tasks[i % len(tasks)]))
            i += 1

    async def refused_on_victim() -> bool:
        return any(x.status == 503 and x.task_id in on_victim for x in answers)

    async def served_again() -> bool:  # the budgeted task may have run out by then
        return all(any(x.status == 200 and x.at > promoted_at and x.task_id == t for x in answers)
                   for t in on_victim - {tasks[-1]["task_id"]})

    workers = [asyncio.create_task(load(n)) for n in range(8)]
    try:
        await asyncio.sleep(1.0)
        victim.kill()
        killed_at = time.monotonic()
        await until(refused_on_victim, "a call on the killed primary to fail closed")
        await wait_promoted(topology, victim)
        promoted_at = time.monotonic()
        await until(served_again, "calls on the promoted replica to succeed", timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*workers)

    assert not [x for x in answers if x.status not in (200, 429, 503)], "only 200, 429 and 503 are answered"
    assert {x.code for x in answers if x.status == 503} == {"store_unavailable"}
    assert {x.code for x in answers if x.status == 429} <= {"budget_exhausted"}
    assert any(x.status == 503 and x.task_id in on_victim and x.at >= killed_at for x in answers)

    auditor = a.token("audit@acme.example", "guard:auditor")
    for task in tasks:
        answered = {x.call_id for x in answers if x.task_id == task["task_id"] and x.status == 200}
        data = await trail(http, (a, b)[len(answered) % 2], task["task_id"], auditor)
        assert data["verified"], data.get("first_bad_seq")
        decided = {r["call_id"] for r in data["records"] if r["event"] == "call_decided"}
        forwarded = {r["call_id"] for r in data["records"] if r["event"] == "call_forwarded"}
        assert answered <= decided and answered <= forwarded, answered - forwarded
    budgeted = tasks[-1]
    assert sum(x.status == 200 for x in answers if x.task_id == budgeted["task_id"]) <= 25
    async with http.get(f"{b.url}/v1/tasks/{budgeted['task_id']}", headers=bearer(idp)) as r:
        assert (await r.json())["calls"] <= 25
    for c in consumed:
        assert await introspect(http, b, c) == {"active": False}, "a consumed credential stays consumed"


async def test_an_approval_decided_at_one_instance_wakes_the_others(topology: Topology) -> None:
    """Held calls (`Prefer: wait`) are woken through pub/sub on the same topology: a decision
    published by one instance reaches the subscription of another (any cluster node, or the
    primary behind Sentinel)."""
    from guard.stores.notify import RedisNotifier

    a, b = RedisNotifier(topology.url), RedisNotifier(topology.url)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await a.start(lambda approval_id: None)
    await b.start(woken.put_nowait)
    try:
        async def delivered() -> str | None:
            await a.publish("apr_decided")  # until b's subscription is up: publishing is idempotent
            try:
                return await asyncio.wait_for(woken.get(), 0.5)
            except TimeoutError:
                return None

        assert await until(delivered, "b to hear a's decision", timeout=20) == "apr_decided"
    finally:
        await a.close()
        await b.close()


async def test_after_a_failover_or_a_restart_calls_succeed_once_ready(
    guard_factory: Any, upstream: Upstream, topology: Topology, http: aiohttp.ClientSession
) -> None:
    """The guard sits idle while a primary goes away: under Sentinel it is killed and a replica
    is promoted; in a cluster one primary restarts (its connections go stale, and for a moment
    it answers PING but refuses keys), then another is killed and its replica takes over. The
    first calls after the topology has settled reconnect before they answer, and once /readyz
    answers 200 no call answers 503 store_unavailable. (In a cluster, neither primary is the one
    the guard's background sweep reads from: its own errors would refresh the connections.)"""
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": topology.url}})
    tasks = [await create_task(http, g.url, g.token(AGENT))]
    victims = [victim_of(topology, tasks[0]["task_id"])]
    if isinstance(topology, ClusterTopology):
        swept = topology.primary_of(CREDENTIAL_TASKS)
        victims = [n for n in topology.primaries() if n is not swept]
        for _ in range(60):  # a task on each primary
            if {victim_of(topology, t["task_id"]) for t in tasks} >= set(victims):
                break
            tasks.append(await create_task(http, g.url, g.token(AGENT)))

    async def ready() -> bool:
        async with http.get(f"{g.url}/readyz") as r:
            return r.status == 200

    async def calls_succeed() -> None:
        for task in tasks:
            answer = await call(http, g, task)
            assert answer.status == 200, answer

    await calls_succeed()
    if isinstance(topology, SentinelTopology):
        victims[0].kill()
        await asyncio.to_thread(topology.wait_promoted, victims[0])
    else:
        # a call reads its task first, and that read's retry would refresh the node's
        # connections; a store of this process writes first
        store = RedisStore(topology.url)
        jtis = (f"jti-{i}" for i in range(1000) if topology.primary_of(credential_key(f"jti-{i}")) is victims[0])
        try:
            assert await store.consume_credential(next(jtis), time.time() + 60)
            await asyncio.to_thread(victims[0].stop)
            await asyncio.to_thread(victims[0].start)
            await asyncio.to_thread(topology.wait_ok)
            assert await store.consume_credential(next(jtis), time.time() + 60)
        finally:
            await store.close()
    await calls_succeed()  # nobody asked /readyz
    await until(ready, "the guard to be ready")
    if isinstance(topology, ClusterTopology):
        victims[1].kill()
        await asyncio.to_thread(topology.wait_ok)
        await until(ready, "the guard to be ready again")
        await calls_succeed()
