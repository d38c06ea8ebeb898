"""State store backends behind one protocol."""

from __future__ import annotations

from guard.stores.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, audit_dir: str | None = None) -> Store:
    """The store for a `store.url`: memory:// or redis://host:port/db. The memory store reads
    trails back from `audit_dir` (the durable audit folder) instead of keeping them in memory."""
    if url.startswith("memory://"):
        from guard.stores.memory import MemoryStore

        return MemoryStore(audit_dir)
    from guard.stores.redis.store import RedisStore

    redis_store: Store = RedisStore(url)
    await redis_store.connect()  # type: ignore[attr-defined]
    return redis_store
