"""The Redis connection the calls of this process share (the commands of a call's hot path).

Redis answers the commands of one connection in the order they were sent, so concurrent calls
can share it: the commands queued during one event-loop iteration go out in one write, and one
reader hands each caller its replies in turn. Under load that is one write and one read for many
calls instead of one of each per call, and no pool lock, retry wrapper or pipeline object.

It is built on redis-py's own connection (connecting, AUTH/SELECT, TLS, reply parsing with
hiredis). Any failure of the connection fails every caller waiting on it and drops it; the next
command connects afresh. Nothing is ever re-sent here: a command that may have run is not repeated.
What is retried is only what sent nothing: connecting, and a connection the server closed while
it sat idle (a restart, a failover) is replaced before anything is written on it.
A caller that gives up (its deadline, its client gone) leaves its reply to be read and dropped,
so the replies of the others stay in step.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.log import get_logger, unbound

__all__ = ["TRANSIENT", "Multiplexer", "address_of", "closed_by_server", "closed_while_idle"]

log = get_logger("guard.store")
Command = tuple[Any, ...]
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)  # what a fresh connection may not meet


class _Waiter:
    __slots__ = ("future", "replies", "wanted")

    def __init__(self, future: asyncio.Future[list[Any]], wanted: int) -> None:
        self.future, self.wanted = future, wanted
        self.replies: list[Any] = []


class Multiplexer:
    def __init__(self, connect: Callable[[], aioredis.Connection]) -> None:
        self._connect = connect
        self._conn: aioredis.Connection | None = None
        self._unsent: list[bytes] = []  # packed commands queued since the last write
        self._waiting: deque[_Waiter] = deque()  # callers in the order their commands go out
        self._writer: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    def send(self, commands: list[Command]) -> asyncio.Future[list[Any]]:
        """Queue the commands (they go out together, in order); the future is their replies, an
        error reply in its place as its exception, or the exception that broke the connection."""
        packed = b"".join(hiredis.pack_command(c) for c in commands)  # raises before anything is queued
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), len(commands))
        self._waiting.append(waiter)
        self._unsent.append(packed)
        if self._writer is None:  # it writes for every caller (and starts the reader): no caller's log fields
            self._writer = loop.create_task(self._write(), context=unbound())
        return waiter.future

    async def _write(self) -> None:
        """Write what is queued, until nothing is; one write per loop iteration at most."""
        try:
            await asyncio.sleep(0)  # let the callers of this iteration queue theirs
            while self._unsent:
                batch, self._unsent = b"".join(self._unsent), []
                conn = await self._connection()
                await conn.send_packed_command(batch, check_health=False)
                if self._reader is None:
                    self._reader = asyncio.get_running_loop().create_task(self._read(conn))
        except asyncio.CancelledError:
            if self._writer is asyncio.current_task():  # not by reset(), which failed everyone already
                await self._fail(RedisConnectionError("the connection was closed"))
            raise
        except Exception as e:
            if self._writer is asyncio.current_task():
                await self._fail(e)
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _connection(self) -> aioredis.Connection:
        """The connection to write on. One the server closed while it sat idle (a restart, a
        failover, an idle timeout) is replaced before anything is written on it, and connecting
        is tried again a few times: nothing has been sent yet, so trying again is safe."""
        conn = self._conn
        if conn is not None and (self._reader is not None or not await closed_while_idle(conn)):
            return conn
        stale = conn is not None
        if conn is not None:
            await conn.disconnect(nowait=True)
        conn = self._conn = self._connect()
        async for attempt in AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential(0.05, max=0.2),
                                           retry=retry_if_exception_type(TRANSIENT), reraise=True):
            with attempt:
                await conn.connect()  # type: ignore[no-untyped-call]  # under Sentinel: where the primary is
        if stale:
            log.info("store_reconnected", address=address_of(conn), cause="closed while idle")
        return conn

    async def _read(self, conn: aioredis.Connection) -> None:
        """Hand out replies in order while anyone waits for one. With hiredis (redis-py's parser
        of choice when it is installed) they are taken straight from its reader, every reply one
        read from the socket brought: redis-py's read_response costs three coroutines and a
        deadline check per reply."""
        parser: Any = conn._parser
        reader = getattr(parser, "_reader", None)  # the hiredis.Reader of this connection
        try:
            while self._waiting:
                if reader is None:
                    try:
                        reply = await conn.read_response()
                    except ResponseError as e:  # a whole error reply: the next one follows
                        reply = e
                else:
                    reply = reader.gets()
                    if reply is NOT_ENOUGH_DATA:
                        try:
                            await parser.read_from_socket()  # ConnectionError once the server closed it
                        except OSError as e:  # a reset: as read_response says it
                            raise RedisConnectionError(f"Error while reading from {address_of(conn)}: {e}") from e
                        continue
                    if isinstance(reply, RedisConnectionError):  # LOADING and the like: as read_response raises
                        raise reply
                waiter = self._waiting[0]
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.wanted:
                    self._waiting.popleft()
                    if not waiter.future.done():
                        waiter.future.set_result(waiter.replies)
        except Exception as e:
            if self._reader is asyncio.current_task():  # not the reader of a connection dropped already
                await self._fail(e)
        finally:
            if self._reader is asyncio.current_task():
                self._reader = None

    async def _fail(self, error: Exception) -> None:
        """Drop the connection; everyone waiting gets the error."""
        waiting, self._waiting, self._unsent = self._waiting, deque(), []
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def reset(self) -> None:
        """Drop the connection now (a deadline passed, a failover): callers still waiting fail."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
        await self._fail(RedisConnectionError("the connection was reset"))

    async def ping(self) -> None:
        """PING on the shared connection (reconnected first if it went stale): what the calls use."""
        [reply] = await self.send([("PING",)])
        if isinstance(reply, Exception):
            raise reply

    async def close(self) -> None:
        await self.reset()


async def closed_while_idle(conn: aioredis.Connection) -> bool:
    """No command is waiting for a reply on `conn`: is it closed, or out of step? The server
    closed it (end of file, a reset), or it holds bytes nobody asked for."""
    if not conn.is_connected:
        return True
    try:
        return await conn.can_read()
    except (RedisConnectionError, OSError):
        return True


async def closed_by_server(conn: aioredis.Connection) -> bool:
    """Has the server closed `conn` (end of file, a reset)? Replies it holds do not count."""
    try:
        await conn.can_read()
    except (RedisConnectionError, OSError):
        return True
    return False


def address_of(conn: Any) -> str:
    """host:port of a connection (its path for a unix socket), for the log."""
    path = getattr(conn, "path", None)
    return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
