"""State store backends behind one protocol."""

from __future__ import annotations

from guard.domain import Retention
from guard.stores.base import Store

__all__ = ["Store", "open_store"]


async def open_store(url: str, audit_dir: str | None = None, retention: Retention | None = None) -> Store:
    """The store for a `store.url`: memory:// or redis://host:port/db. The memory store reads
    trails back from `audit_dir` (the durable audit folder) instead of keeping them in memory;
    with it, the Redis store keeps a trail only as long as its task's state. `retention`: how
    long ended tasks are kept (the defaults of `Retention` when None)."""
    if url.startswith("memory://"):
        from guard.stores.memory import MemoryStore

        return MemoryStore(audit_dir, retention)
    from guard.stores.redis import RedisStore

    redis_store: Store = RedisStore(url, retention, audit_in_folder=audit_dir is not None)
    await redis_store.connect()  # type: ignore[attr-defined]
    return redis_store
