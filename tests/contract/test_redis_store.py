"""What only the Redis store has to get right: state it keeps in the process must not outlive
what Redis lost."""

from __future__ import annotations

import pytest

from guard.errors import StoreUnavailable
from guard.stores import open_store
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis


async def test_an_agent_is_listed_again_after_redis_lost_its_data(redis_server: RedisServer) -> None:
    store = await open_store(redis_server.url)
    try:
        await store.record_agent_event("spiffe://a/listed", "task_created", 10.0)
        await store.record_agent_event("spiffe://a/listed", "call_denied", 11.0)  # listed once, not again
        assert set(await store.agent_stats()) == {"spiffe://a/listed"}

        redis_server.kill()  # a Redis that comes back empty: its append-only file is gone
        for aof in redis_server.dir.rglob("appendonly*"):
            if aof.is_file():
                aof.unlink()
        redis_server.start()

        for _ in range(3):  # the first command after the restart may find the old connection dead
            try:
                await store.record_agent_event("spiffe://a/listed", "call_denied", 12.0)
                break
            except StoreUnavailable:
                continue
        stats = await store.agent_stats()
        assert set(stats) == {"spiffe://a/listed"}
        assert (stats["spiffe://a/listed"].denied, stats["spiffe://a/listed"].first_seen) == (1, 12.0)
    finally:
        await store.close()
