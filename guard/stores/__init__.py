"""State store backends behind one protocol."""

from __future__ import annotations

from guard.domain import Retention
from guard.stores.base import RegistrationLimits, Store

__all__ = ["RegistrationLimits", "Store", "open_store"]


async def open_store(url: str, durable_audit: bool = False, retention: Retention | None = None,
                     wait_replicas: int = 0) -> Store:
    """The store for a `store.url`: memory://, redis://host:port/db, redis+cluster://… or
    redis+sentinel://… (guard/stores/redis/cluster.py). With `durable_audit` (the audit folder
    keeps every trail), the memory store keeps only each chain's tail and the Redis store keeps a
    trail only as long as its task's state. `retention`: how long ended tasks are kept (the
    defaults of `Retention` when None). A Redis store's writes wait for `wait_replicas` replicas."""
    if url.startswith("memory://"):
        from guard.stores.memory import MemoryStore

        return MemoryStore(tails_only=durable_audit, retention=retention)
    from guard.stores.redis.store import RedisStore

    redis_store: Store = RedisStore(url, retention, audit_in_folder=durable_audit, wait_replicas=wait_replicas)
    await redis_store.connect()  # type: ignore[attr-defined]
    return redis_store
