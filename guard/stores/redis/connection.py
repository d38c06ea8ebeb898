"""The store's Redis plumbing: the client (hiredis packing, no retries of anything that may have
run) on one Redis, a Redis Cluster or Sentinel (cluster.py), one deadline per operation that
turns every failure into StoreUnavailable, idempotent reads and the scripts that may run twice
(scripts.IDEMPOTENT) retried once, readiness asked on the connections the calls use, the
scripts and every write sent over the shared connection of mux.py (or the cluster's pipeline),
followed by WAIT with `wait_replicas`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.errors import StoreUnavailable
from guard.log import Repeats, get_logger, network_cause, without_userinfo
from guard.stores.redis import scripts as lua
from guard.stores.redis.cluster import (
    ClusterSender,
    Sender,
    WaitingSender,
    close_sentinels,
    cluster_client,
    parse_topology,
    sentinel_client,
)
from guard.stores.redis.mux import TRANSIENT, Multiplexer

__all__ = ["TRANSIENT", "HiredisPacking", "RedisConnection"]

log = get_logger("guard.store")
T = TypeVar("T")


class _FailClosed:
    """`async with store._fail_closed(op)`: the operation has `op_timeout` seconds, and a Redis
    or socket error, or running out of time, becomes StoreUnavailable. (A class, not
    @asynccontextmanager: it is entered on every call; and its deadline is one timer handle that
    cancels the task, as asyncio.timeout does, without that one's two coroutines and states.)"""

    __slots__ = ("cancelling", "expired", "handle", "op", "store", "task")

    def __init__(self, store: RedisConnection, op: str) -> None:
        self.store, self.op = store, op

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task, self.cancelling, self.expired = task, task.cancelling(), False
        loop = task.get_loop()
        self.handle = loop.call_at(loop.time() + self.store.op_timeout, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        self.handle.cancel()
        if self.expired and self.task.uncancel() <= self.cancelling and kind is asyncio.CancelledError:
            e = TimeoutError()  # the deadline cancelled the operation (no other cancellation is pending)
        if e is not None and isinstance(e, TimeoutError | RedisError | OSError):
            await self.store._failed(self.op, e)  # raises StoreUnavailable


class HiredisPacking(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python (about 14 us for a script call of
    ours); hiredis, which already parses the replies, packs the same bytes in about 2 us."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD": the words go separately
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class RedisConnection:
    """What every store operation goes through; RedisStore adds the operations themselves."""

    def __init__(self, url: str, wait_replicas: int = 0) -> None:
        """`url`: one Redis, a Redis Cluster or Sentinel (cluster.py); `wait_replicas`: writes
        wait for that many replicas (WAIT) before they count as done."""
        self.url = url
        self.where = without_userinfo(url)  # for the log
        self._repeats = Repeats()
        topology = parse_topology(url)
        options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 0.5,
                                   "socket_timeout": topology.op_timeout, "health_check_interval": 5}
        self._r: Any
        if topology.kind == "cluster":
            self._r = cluster_client(topology, **options)
            self.op_timeout: float = topology.op_timeout
            sender: Sender = ClusterSender(self._r, self.op_timeout, wait_replicas, int(self.op_timeout * 500))
        else:
            if topology.kind == "sentinel":
                self._r = sentinel_client(topology, HiredisPacking, retry=Retry(NoBackoff(), 0), **options)
            else:
                packing: dict[str, Any] = {"connection_class": HiredisPacking} if url.startswith("redis://") else {}
                self._r = aioredis.from_url(
                    url,
                    **packing,
                    **options,
                    retry=Retry(NoBackoff(), 0),  # never re-send a command that may have run
                )
            # One deadline per store operation (_FailClosed) instead of redis-py's per socket read
            # and write: its write timeout costs a task per command on Python 3.11.
            kwargs = self._r.connection_pool.connection_kwargs
            self.op_timeout = float(kwargs.get("socket_timeout") or 1.0)
            kwargs["socket_timeout"] = None
            mux = Multiplexer(self._r.connection_pool.make_connection)
            # WAIT's own timeout is half the operation's deadline, so a lagging replica answers
            # 503 rather than the deadline dropping the shared connection
            sender = WaitingSender(mux, wait_replicas, int(self.op_timeout * 500)) if wait_replicas else mux
        self._sender = sender
        self._scripts = {
            name: self._r.register_script(getattr(lua, name))
            for name in ("ADMIT_CALL", "END_TASK", "POP_DUE", "OPEN_APPROVAL", "DECIDE_APPROVAL", "CONSUME_APPROVAL",
                         "LATEST_APPROVAL", "APPEND_AUDIT", "SET_SUSPENDED", "CLAIM_DELIVERIES",
                         "ADMIT_AND_RECORD", "RECORD_AND_FINISH", "ROTATE_REFRESH", "REGISTER_CLIENT",
                         "HOLD_CREDENTIAL", "CLAIM_CREDENTIALS", "OBSERVE_ACTIVITY")
        }

    # -- plumbing ------------------------------------------------------------
    async def connect(self) -> None:
        """Check that Redis answers (a few bounded tries); start anyway when it does not:
        every request then answers 503 store_unavailable until it comes back."""
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential(0.1, max=1),
                                               retry=retry_if_exception_type(TRANSIENT), reraise=True):
                with attempt:
                    async with asyncio.timeout(self.op_timeout):
                        await self._r.ping()
        except (RedisError, OSError) as e:
            log.warning("store_unreachable", error=type(e).__name__, store=self.where, detail=network_cause(e))

    def _fail_closed(self, op: str) -> _FailClosed:
        return _FailClosed(self, op)

    async def _failed(self, op: str, e: BaseException) -> None:
        """A store operation failed: say why and where (the first of a kind at once, then one every
        10 s with the number of failures left out: a Redis that is down fails every loop)."""
        repeated = self._repeats.due(type(e).__name__)
        if repeated is not None:
            detail = str(e)[:200] if isinstance(e, ResponseError) else network_cause(e)  # a script error: its line
            log.warning("store_failed", op=op, error=type(e).__name__, store=self.where, detail=detail,
                        repeated=repeated)
        if isinstance(e, ReadOnlyError):  # a failover: reconnect to whoever is primary now
            await self._sender.reset()
            if hasattr(self._r, "connection_pool"):
                await self._r.connection_pool.disconnect()
        elif isinstance(e, TimeoutError):  # Redis stopped answering: do not wait on that connection
            await self._sender.reset()
        raise StoreUnavailable("the state store is unreachable") from e

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of the commands, sent together on the shared connection (an error reply in
        its place as its exception). Call it inside _fail_closed: the deadline bounds the wait."""
        return await self._sender.send(commands)

    async def _eval(self, script: str, keys: list[str], args: list[Any],
                    also: list[tuple[Any, ...]] | None = None) -> Any:
        """EVALSHA a script of scripts.py, and the commands `also` in the same round trip (they run
        whatever the script answers). A Redis that lost its scripts (NOSCRIPT: nothing ran) gets
        the script's source with EVAL (which caches it again). An error reply of the script raises."""
        command = ("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)
        out = await self._send([command, *(also or ())])
        if isinstance(out[0], NoScriptError):  # EVAL runs the source and caches it again
            out = await self._send([("EVAL", getattr(lua, script), *command[2:])])
        if isinstance(out[0], Exception):
            raise out[0]
        return out[0]

    async def _read(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """An idempotent read: one more try on a fresh connection after a transient error."""
        async with self._fail_closed(op):
            async for attempt in AsyncRetrying(stop=stop_after_attempt(2), wait=wait_exponential(0.05, max=0.2),
                                               retry=retry_if_exception_type(TRANSIENT), reraise=True):
                with attempt:
                    return await fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run a script of scripts.py. One that may run twice (scripts.IDEMPOTENT) is tried once
        more after a connection error, on a fresh connection: its round trip may have been lost
        on a connection that broke under it. Any other is never sent again: it may have run."""
        async with self._fail_closed(name.lower()):
            if name not in lua.IDEMPOTENT:
                return await self._eval(name, keys, args)
            async for attempt in AsyncRetrying(stop=stop_after_attempt(2), wait=wait_exponential(0.05, max=0.2),
                                               retry=retry_if_exception_type(TRANSIENT), reraise=True):
                with attempt:
                    return await self._eval(name, keys, args)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, op: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands that change state, in one round trip; an error reply raises."""
        async with self._fail_closed(op):
            out = await self._send(commands)
        for reply in out:
            if isinstance(reply, Exception):
                await self._failed(op, reply)
        return out

    async def _members(self, key: str) -> list[str]:
        async def fetch() -> set[str]:
            return {str(m) for m in await self._r.smembers(key)}

        return sorted(await self._read("smembers", fetch))

    async def ping(self) -> None:
        """Readiness, on the connections the calls use (reconnected first where Redis closed
        them): once this answers, so do the calls."""
        await self._read("ping", self._sender.ping)

    async def close(self) -> None:
        await self._sender.close()
        if not isinstance(self._sender, ClusterSender):  # which closed its client already
            await close_sentinels(self._r)
            await self._r.aclose()
