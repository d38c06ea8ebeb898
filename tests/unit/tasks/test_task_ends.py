"""guard.tasks.ends.TaskEnds on the memory store: what a subscriber and a watch get, once each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from guard.audit.log import AuditLog
from guard.domain import Task
from guard.stores.memory import MemoryStore
from guard.tasks.ends import TaskEnded, TaskEnds, end_reason

AGENT = "spiffe://acme/agent/a"


@pytest.fixture
async def ends() -> AsyncIterator[TaskEnds]:
    store = MemoryStore()
    te = TaskEnds(store, AuditLog(store, None), "memory://", check_s=0.05)
    await te.start()
    yield te
    await te.close()


async def new_task(te: TaskEnds, ttl_s: float = 3600, task_id: str = "task_1") -> Task:
    now = time.time()
    task = Task(task_id, AGENT, "report", None, "active", now, now + ttl_s, idle_s=900.0)
    await te.store.create_task(task)
    return task


async def test_an_end_reaches_subscribers_and_watches_once(ends: TaskEnds) -> None:
    seen: list[TaskEnded] = []

    async def record(ended: TaskEnded) -> None:
        seen.append(ended)

    ends.subscribe(record)
    task = await new_task(ends)
    called: list[str] = []
    with ends.watch(task.task_id, AGENT) as watch:
        watch.on_end(lambda e: called.append(e.reason))
        assert await ends.end(task.task_id, "revoked", "ops", "agent suspended: incident", "agent_suspended")
        assert await ends.end(task.task_id, "completed", "agent", None) is None  # ended once
        assert await asyncio.wait_for(watch.wait(), 5) == "agent_suspended"
    await asyncio.sleep(0.2)  # the fallback check finds it ended too: still delivered once
    assert seen == [TaskEnded(task.task_id, AGENT, "agent_suspended")] and called == ["agent_suspended"]
    late = ends.watch(task.task_id, AGENT)
    assert late.ended.is_set() and late.reason == "agent_suspended"
    trail = [r.fields for r in await ends.store.read_audit(task.task_id)]
    assert [(r["event"], r.get("actor")) for r in trail] == [("task_revoked", "ops")]


async def test_a_watch_finds_an_expiry_by_itself(ends: TaskEnds) -> None:
    task = await new_task(ends, ttl_s=0.3)
    with ends.watch(task.task_id, AGENT) as watch:
        assert await asyncio.wait_for(watch.wait(), 5) == "task_expired"
    state = await ends.store.get_task(task.task_id)
    assert state is not None and state.task.status == "expired"
    assert [r.fields["event"] for r in await ends.store.read_audit(task.task_id)] == ["task_expired"]


async def test_the_reason_read_back_from_the_store() -> None:
    base = Task("t", AGENT, "p", None, "revoked", 0.0, 1.0, end_reason="agent suspended: x")
    assert end_reason(base) == "agent_suspended"
    assert end_reason(Task("t", AGENT, "p", None, "revoked", 0.0, 1.0, end_reason="leak")) == "task_revoked"
    assert end_reason(Task("t", AGENT, "p", None, "completed", 0.0, 1.0)) == "task_completed"
    assert end_reason(Task("t", AGENT, "p", None, "expired", 0.0, 1.0)) == "task_expired"
