"""Retention, part of the Store contract (every backend): an ended task's state goes
`ended_task_s` after its end, its trail stays as `audit_s` says, the inventory stays."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis

from guard.domain import Delivery, Retention
from guard.identity.tokens import new_id
from guard.stores import Store, open_store
from guard.stores.redis.keys import ENDED, approval_key, task_key, task_keys
from tests.contract.test_store_contract import limits, make_approval, new_task
from tests.support.redis import RedisServer

KEEP_S = 60.0


@pytest.fixture
async def opened(store_url: str) -> AsyncIterator[Callable[..., Any]]:
    stores: list[Store] = []

    async def make(retention: Retention, durable_audit: bool = False) -> Store:
        s = await open_store(store_url, durable_audit=durable_audit, retention=retention)
        stores.append(s)
        return s

    yield make
    for s in stores:
        await s.close()


async def busy_task(store: Store, agent: str = "spiffe://acme/agent/a") -> tuple[str, str]:
    """A task with a call, a rate window, an approval, a pending delivery and an audit trail."""
    task = await new_task(store, agent=agent)
    adm = await store.admit_call(task.task_id, limits(rates=(("r1", 5, 60.0),), agent=agent))
    assert adm.ok
    approval, _ = await store.open_approval(make_approval(task))
    await store.save_delivery(Delivery(new_id("dlv"), approval.approval_id, task.task_id, agent, "finance", "{}",
                                       time.time() + 900))
    await store.append_audit(task.task_id, {"ts": time.time(), "task_id": task.task_id, "event": "task_created",
                                            "agent": agent})
    return task.task_id, approval.approval_id


async def test_an_ended_tasks_state_is_forgotten_after_retention(opened: Callable[..., Any]) -> None:
    store: Store = await opened(Retention(ended_task_s=KEEP_S))
    task_id, approval_id = await busy_task(store)
    now = time.time()
    assert await store.end_task(task_id, "completed", now - KEEP_S - 1, None) is not None

    assert await store.purge_ended(now) == 1
    assert await store.get_task(task_id) is None
    assert task_id not in {s.task.task_id for s in await store.list_tasks()}
    assert task_id not in {s.task.task_id for s in await store.list_tasks(agent="spiffe://acme/agent/a")}
    assert await store.get_approval(approval_id) is None
    assert await store.list_approvals(task_id) == []
    assert not await store.call_in_flight(task_id, "any")
    # the trail stays (audit_s: null), and so does the agent's inventory entry
    assert [r.fields["event"] for r in await store.read_audit(task_id)] == ["task_created"]
    stats = await store.agent_stats()
    assert stats["spiffe://acme/agent/a"].calls == 1 and stats["spiffe://acme/agent/a"].tools_used == {"notes"}
    assert await store.purge_ended(now) == 0


async def test_a_recently_ended_or_active_task_is_kept(opened: Callable[..., Any]) -> None:
    store: Store = await opened(Retention(ended_task_s=KEEP_S))
    ended_id, _ = await busy_task(store)
    active_id, _ = await busy_task(store)
    now = time.time()
    await store.end_task(ended_id, "revoked", now - KEEP_S + 30, "incident")
    assert await store.purge_ended(now) == 0
    ended, active = await store.get_task(ended_id), await store.get_task(active_id)
    assert ended is not None and ended.task.status == "revoked" and ended.calls == 1
    assert active is not None and active.task.status == "active"


async def test_null_keeps_every_ended_task(opened: Callable[..., Any]) -> None:
    store: Store = await opened(Retention(ended_task_s=None))
    task_id, approval_id = await busy_task(store)
    await store.end_task(task_id, "completed", time.time() - 10 * 365 * 86400, None)
    assert await store.purge_ended(time.time()) == 0
    assert await store.get_task(task_id) is not None
    assert await store.get_approval(approval_id) is not None


async def test_a_trail_goes_with_its_task_after_audit_s(opened: Callable[..., Any]) -> None:
    store: Store = await opened(Retention(ended_task_s=KEEP_S, audit_s=KEEP_S / 2))
    task_id, _ = await busy_task(store)
    now = time.time()
    await store.end_task(task_id, "completed", now - KEEP_S - 1, None)
    await store.purge_ended(now)
    assert await store.read_audit(task_id) == []


async def test_tasks_past_expiry_are_handed_out_until_ended(opened: Callable[..., Any]) -> None:
    store: Store = await opened(Retention(ended_task_s=KEEP_S))
    now = time.time()
    due = await new_task(store, created_at=now - 100, expires_at=now - 1)
    later = await new_task(store)
    assert due.task_id in await store.expired_tasks(now)
    assert later.task_id not in await store.expired_tasks(now)
    await store.end_task(due.task_id, "expired", now, "expires_at reached")
    assert due.task_id not in await store.expired_tasks(now)


@pytest.mark.redis
async def test_redis_sets_the_ttl_in_the_script_that_ends_the_task(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url, retention=Retention(ended_task_s=KEEP_S))
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        task_id, approval_id = await busy_task(store)
        keys = task_keys(task_id, "task", "hist", "apr", "apr:latest")
        assert [await raw.pttl(k) for k in keys] == [-1] * 4
        await store.end_task(task_id, "completed", time.time(), None)
        for key in [*keys, approval_key(approval_id)]:
            assert 0 < await raw.pttl(key) <= KEEP_S * 1000, key
        assert await raw.pttl(task_key(task_id, "audit")) == -1  # no audit folder: the trail is kept here
        assert await raw.zscore(ENDED, f"{task_id} spiffe://acme/agent/a") is not None
    finally:
        await raw.aclose()
        await store.close()
