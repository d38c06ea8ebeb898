"""The inventory part of the Store contract, run against every backend."""

from __future__ import annotations

import time

from guard.domain import CallLimits, Task
from guard.identity.tokens import new_id
from guard.stores import Store


def _task(agent: str, now: float) -> Task:
    return Task(new_id("task"), agent, "inventory test", None, "active", now, now + 3600, idle_s=900.0)


async def test_events_count_and_stamp_first_and_last_seen(store: Store) -> None:
    await store.record_agent_event("spiffe://a/1", "task_created", 100.0)
    await store.record_agent_event("spiffe://a/1", "call_denied", 105.0)
    await store.record_agent_event("spiffe://a/1", "call_allowed", 110.0, tool="notes")
    await store.record_agent_event("spiffe://a/1", "call_allowed", 111.0, tool="files")
    await store.record_agent_event("spiffe://a/1", "call_allowed", 112.0, tool="notes")
    stats = (await store.agent_stats())["spiffe://a/1"]
    assert (stats.first_seen, stats.last_seen) == (100.0, 112.0)
    assert (stats.tasks_created, stats.calls, stats.denied, stats.attempts) == (1, 3, 1, 0)
    assert stats.tools_used == frozenset({"notes", "files"})
    assert stats.suspended is False


async def test_unregistered_attempts_are_counted_per_agent(store: Store) -> None:
    for t in (1.0, 2.0, 3.0):
        await store.record_agent_event("rogue", "unregistered_attempt", t)
    await store.record_agent_event("other", "unregistered_attempt", 4.0)
    stats = await store.agent_stats()
    assert stats["rogue"].attempts == 3
    assert (stats["rogue"].first_seen, stats["rogue"].last_seen) == (1.0, 3.0)
    assert stats["other"].attempts == 1


async def test_admitted_call_with_agent_counts_in_the_same_operation(store: Store) -> None:
    now = time.time()
    task = _task("spiffe://a/2", now)
    await store.create_task(task)
    adm = await store.admit_call(task.task_id, CallLimits("call_1", now, "notes.read", agent="spiffe://a/2"))
    assert adm.ok
    refused = await store.admit_call(
        task.task_id, CallLimits("call_2", now, "notes.read", parent_call_id="call_gone", agent="spiffe://a/2")
    )
    assert not refused.ok
    await store.admit_call(task.task_id, CallLimits("call_3", now, "files.search", agent=None))
    stats = (await store.agent_stats())["spiffe://a/2"]
    assert stats.calls == 1  # the refused call and the one without `agent` do not count
    assert stats.tools_used == frozenset({"notes"})
    assert stats.last_seen == now


async def test_suspend_and_restore(store: Store) -> None:
    assert await store.is_suspended("spiffe://a/3") is False
    assert await store.suspend_agent("spiffe://a/3", "leaked key", "admin@x", 50.0) is True
    assert await store.suspend_agent("spiffe://a/3", "again", "other@x", 60.0) is False
    assert await store.is_suspended("spiffe://a/3") is True
    stats = (await store.agent_stats())["spiffe://a/3"]  # a suspended agent is listed even if never seen
    assert (stats.suspended, stats.suspended_reason, stats.suspended_by, stats.suspended_at) == (
        True, "leaked key", "admin@x", 50.0)
    assert await store.restore_agent("spiffe://a/3") is True
    assert await store.restore_agent("spiffe://a/3") is False
    assert await store.is_suspended("spiffe://a/3") is False
    assert (await store.agent_stats())["spiffe://a/3"].suspended is False


async def test_suspension_keeps_counters(store: Store) -> None:
    await store.record_agent_event("spiffe://a/4", "task_created", 10.0)
    await store.suspend_agent("spiffe://a/4", "incident", "admin", 20.0)
    await store.record_agent_event("spiffe://a/4", "call_denied", 30.0)
    stats = (await store.agent_stats())["spiffe://a/4"]
    assert (stats.tasks_created, stats.denied, stats.suspended, stats.first_seen) == (1, 1, True, 10.0)
