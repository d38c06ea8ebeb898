"""The store's content and tool integrity state, over every backend: a task's data labels and
remembered value digests (shared by instances, gone with the task's state) and MCP tool pins."""

from __future__ import annotations

import time

from guard.domain import Retention
from guard.stores import Store, open_store
from tests.contract.test_store_contract import new_task


async def test_data_labels_gather_on_the_task_for_every_instance(store: Store, peer: Store) -> None:
    task = await new_task(store)
    assert await peer.task_data(task.task_id) == frozenset()
    await store.add_task_data(task.task_id, ["private"])
    await peer.add_task_data(task.task_id, ["untrusted", "private"])
    assert await store.task_data(task.task_id) == {"private", "untrusted"}
    other = await new_task(store)
    assert await peer.task_data(other.task_id) == frozenset()


async def test_remembered_values_answer_by_digest_with_their_first_source(store: Store, peer: Store) -> None:
    task = await new_task(store)
    await store.remember_values(task.task_id, {"d1": "call_a", "d2": "call_a"})
    await peer.remember_values(task.task_id, {"d2": "call_b", "d3": "call_b"})
    assert await peer.recall_values(task.task_id, ["d1", "d2", "d3", "d4"]) == {
        "d1": "call_a", "d2": "call_a", "d3": "call_b"}
    assert await store.recall_values(task.task_id, []) == {}
    other = await new_task(store)
    assert await store.recall_values(other.task_id, ["d1"]) == {}


async def test_the_first_pin_stays_until_set_again(store: Store, peer: Store) -> None:
    tool = f"files{time.time_ns()}"
    assert await store.tool_pins(tool) == {}
    assert await store.pin_first(tool, {"read": "a" * 64}) == {"read": "a" * 64}
    assert await peer.pin_first(tool, {"read": "b" * 64, "write": "c" * 64}) == {"read": "a" * 64, "write": "c" * 64}
    await peer.set_pins(tool, {"read": "b" * 64})
    assert await store.tool_pins(tool) == {"read": "b" * 64, "write": "c" * 64}


async def test_content_state_goes_with_the_tasks_state(store_url: str) -> None:
    opened: list[Store] = []

    async def make() -> Store:
        s = await open_store(store_url, retention=Retention(ended_task_s=60.0))
        opened.append(s)
        return s

    try:
        store = await make()
        task = await new_task(store)
        await store.add_task_data(task.task_id, ["private"])
        await store.remember_values(task.task_id, {"d1": "call_a"})
        now = time.time()
        assert await store.end_task(task.task_id, "completed", now - 61, None) is not None
        assert await store.purge_ended(now) == 1
        assert await store.task_data(task.task_id) == frozenset()
        assert await store.recall_values(task.task_id, ["d1"]) == {}
    finally:
        for s in opened:
            await s.close()
