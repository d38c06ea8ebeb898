"""One request at a time per key: concurrent callers that need the same thing await one answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["shared"]

K = TypeVar("K")
V = TypeVar("V")


async def shared(inflight: dict[K, asyncio.Future[V]], key: K, make: Callable[[], Awaitable[V]]) -> V:
    """The answer of `make()` for `key`, started once however many callers ask meanwhile; a
    caller that goes away does not cancel it for the others."""
    fut = inflight.get(key)
    if fut is None or fut.done():
        fut = inflight[key] = asyncio.ensure_future(make())

        def done(f: asyncio.Future[V]) -> None:
            if inflight.get(key) is f:
                del inflight[key]
            if not f.cancelled():
                f.exception()  # retrieved: a failure reaches the callers, never "never retrieved"

        fut.add_done_callback(done)
    return await asyncio.shield(fut)
