"""State store backends behind one protocol."""

from __future__ import annotations

from guard.stores.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, audit_dir: str | None = None, wait_replicas: int = 0) -> Store:
    """The store for a `store.url`: memory://, redis://host:port/db, redis+cluster://… or
    redis+sentinel://… (guard/stores/redis_cluster.py). The memory store reads trails back from
    `audit_dir` (the durable audit folder) instead of keeping them in memory; a Redis store's
    writes wait for `wait_replicas` replicas."""
    if url.startswith("memory://"):
        from guard.stores.memory import MemoryStore

        return MemoryStore(audit_dir)
    from guard.stores.redis import RedisStore

    redis_store: Store = RedisStore(url, wait_replicas)
    await redis_store.connect()  # type: ignore[attr-defined]
    return redis_store
