"""State store backends behind one protocol."""

from __future__ import annotations

from guard.stores.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str) -> Store:
    """The store for a `store.url`: memory:// or redis://host:port/db."""
    if url.startswith("memory://"):
        from guard.stores.memory import MemoryStore

        return MemoryStore()
    from guard.stores.redis import RedisStore

    redis_store: Store = RedisStore(url)
    await redis_store.connect()  # type: ignore[attr-defined]
    return redis_store
