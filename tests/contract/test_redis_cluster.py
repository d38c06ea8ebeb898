"""What only the Redis store on a Redis Cluster has to get right: a task's slot moving to another
primary (a resharding) while the store is in use. The store follows MOVED and carries on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from guard.domain import CallLimits, Task
from guard.hashchain import verify_chain
from guard.identity.tokens import new_id
from guard.stores import open_store
from guard.stores.redis.keys import task_key
from tests.support.process import require
from tests.support.redis import redis_missing_reason
from tests.support.redis_topology import ClusterTopology

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_a_task_whose_slot_moves_to_another_primary_carries_on(tmp_path: Path) -> None:
    require(redis_missing_reason())
    with ClusterTopology(tmp_path / "cluster").start() as cluster:
        store = await open_store(cluster.url, wait_replicas=1)
        now = time.time()
        task = Task(new_id("task"), "spiffe://a/moved", "resharding", None, "active", now, now + 600,
                    max_calls=30)
        agent = task.agent

        async def call(i: int) -> bool:
            lim = CallLimits(f"call_{i}", time.time(), "notes.read", agent=agent)
            adm, _ = await store.admit_and_record(task.task_id, lim, {
                "ts": time.time(), "task_id": task.task_id, "event": "call_decided", "agent": agent,
                "call_id": lim.call_id})
            if adm.ok:
                await store.record_and_finish(task.task_id, lim.call_id, {
                    "ts": time.time(), "task_id": task.task_id, "event": "call_forwarded", "agent": agent,
                    "call_id": lim.call_id})
            return adm.ok

        try:
            await store.create_task(task)
            assert all(await asyncio.gather(*(call(i) for i in range(10))))
            key = task_key(task.task_id, "task")
            before = cluster.primary_of(key)
            after = next(n for n in cluster.primaries() if n is not before)
            cluster.move_slot(cluster.keyslot(key), after)
            assert cluster.primary_of(key) is after
            admitted = await asyncio.gather(*(call(i) for i in range(10, 40)))
            assert sum(admitted) == 20  # max_calls holds across the move
            trail = [r.fields for r in await store.read_audit(task.task_id)]
            assert len(trail) == 60 and verify_chain(trail).verified
            state = await store.get_task(task.task_id)
            assert state is not None and state.calls == 30
            assert before.cli("exists", key).startswith("MOVED")  # the old primary sends clients on
        finally:
            await store.close()
