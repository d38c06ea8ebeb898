"""News every instance on one store must hear: approval decisions (they wake calls held with
`Prefer: wait`, guard.approvals) and task ends (they close what a task holds open, guard.tasks.ends).

`open_notifier(store_url, channel)` picks the kind that fits the store: in memory, everything
happens in this process, so publishing calls the local callback; with Redis, a message is published
on its channel (`guard:approvals` by default) and every instance subscribed to it hears it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from guard.log import get_logger
from guard.stores.redis.keys import APPROVALS_CHANNEL

__all__ = ["CHANNEL", "LocalNotifier", "Notifier", "RedisNotifier", "open_notifier"]

CHANNEL = APPROVALS_CHANNEL
log = get_logger("guard.notify")
OnDecided = Callable[[str], None]


class Notifier(Protocol):
    async def start(self, on_decided: OnDecided) -> None: ...

    async def publish(self, approval_id: str) -> None:
        """An approval was decided: wake whoever holds a call on it, here and elsewhere."""

    async def close(self) -> None: ...


class LocalNotifier:
    """One process: publishing is calling the callback."""

    def __init__(self) -> None:
        self._on_decided: OnDecided | None = None

    async def start(self, on_decided: OnDecided) -> None:
        self._on_decided = on_decided

    async def publish(self, approval_id: str) -> None:
        if self._on_decided is not None:
            self._on_decided(approval_id)

    async def close(self) -> None:
        self._on_decided = None


class RedisNotifier:
    """Redis pub/sub on one channel; the subscription reconnects with backoff when Redis drops."""

    def __init__(self, url: str, channel: str = CHANNEL, what: str = "approval") -> None:
        self.url = url
        self.channel = channel
        self.what = what  # names the log events: <what>_notified, <what>_publish_failed…
        self._on_decided: OnDecided | None = None
        self._redis: Any = None
        self._listener: asyncio.Task[None] | None = None

    async def start(self, on_decided: OnDecided) -> None:
        from guard.stores.redis.cluster import pubsub_client

        self._on_decided = on_decided
        self._redis = pubsub_client(self.url)  # one Redis, Sentinel's primary or the cluster
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def publish(self, approval_id: str) -> None:
        from redis.exceptions import RedisError

        if self._on_decided is not None:
            self._on_decided(approval_id)  # this instance at once, without the round trip
        try:
            await self._redis.publish(self.channel, approval_id)
        except (RedisError, OSError):
            log.warning(f"{self.what}_publish_failed", message=approval_id[:200])

    async def _listen(self) -> None:
        from redis.exceptions import RedisError

        delay = 0.2
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    delay = 0.2
                    async for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes) and self._on_decided is not None:
                            text = data.decode(errors="replace")
                            log.info(f"{self.what}_notified", message=text[:200])
                            self._on_decided(text)
            except (RedisError, OSError):
                log.warning(f"{self.what}_subscription_lost", retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._redis is not None:
            await self._redis.aclose()


def open_notifier(store_url: str, channel: str = CHANNEL, what: str = "approval") -> Notifier:
    """`channel`: the Redis pub/sub channel (approval decisions by default; guard.tasks.ends
    publishes task ends on its own)."""
    if store_url.startswith("memory://"):
        return LocalNotifier()
    return RedisNotifier(store_url, channel, what)
