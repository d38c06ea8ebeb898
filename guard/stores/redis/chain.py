"""Appends to the audit chains of the Redis store, batched per task.

Every record of a task chains on the one before it, so the appends of one task cannot run side
by side: each script checks the tail it was hashed on, and a losing append is rehashed and sent
again. One append at a time per task, each waiting for the round trip of the one before, made a
busy task (many calls at once) as slow as one call at a time.

Here the records of a task queued while its previous batch was on the wire are hashed in order,
each on the one before, and sent together: one write, one round trip, the scripts running one
after the other in Redis (one connection answers in order). All of them land unless another
instance appended in between (or a call was refused); then the first that lost answers the tail
it found, every later one finds the tail moved too, and they are all hashed again on that tail
and sent as the next batch. A batch costs at most one retry per interruption, not one per record.
The chain stays one total order per task, whichever instance appends.

A script answers `{1, ...}` when it appended, `{conflict, tail seq, tail hash, ...}` when the
tail had moved (nothing changed), and anything else is final (an admission refused: nothing
appended). Nothing is re-sent that may have run: a batch whose round trip failed fails every
record in it, and the next batch learns the tail afresh from Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from guard.domain import AuditRecord
from guard.errors import StoreUnavailable
from guard.hashchain import GENESIS, chain_record

__all__ = ["ChainAppender", "Link"]

Command = tuple[Any, ...]
Send = Callable[[list[Command]], Awaitable[list[Any]]]
Outcome = tuple[list[Any], AuditRecord | None]  # the script's reply, the record when it was appended


class Link:
    """One record waiting for its place in a task's chain. The script gets KEYS `keys` and ARGV
    `head`, then seq, prev_hash, hash and the record's line, then `tail`."""

    __slots__ = ("also", "attempts", "conflict", "fields", "future", "head", "keys", "record", "script", "tail",
                 "use_eval")

    def __init__(self, script: str, keys: list[str], head: list[Any], tail: list[Any], fields: dict[str, Any],
                 also: list[Command], conflict: int) -> None:
        self.script, self.keys, self.head, self.tail = script, keys, head, tail
        self.fields, self.also, self.conflict = fields, also, conflict
        self.future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.record: AuditRecord | None = None
        self.attempts = 0
        self.use_eval = False  # Redis lost its scripts: send the source (EVAL caches it again)


class _Chain:
    __slots__ = ("busy", "queue", "scheduled")

    def __init__(self) -> None:
        self.queue: list[Link] = []
        self.busy = False  # a batch is on the wire
        self.scheduled = False  # a flush is due in this loop iteration


class ChainAppender:
    """`append(task_id, link)`: the link's future is (reply, record) once its script ran and
    answered appended or refused; it fails with the error of its round trip, or StoreUnavailable
    after `attempts` tries that all found the tail moved."""

    MAX_BATCH = 256
    MAX_TAILS = 10_000

    def __init__(self, send: Send, scripts: dict[str, tuple[str, str]], attempts: int = 32) -> None:
        self._send = send
        self._scripts = scripts  # name -> (sha1, source)
        self._attempts = attempts
        self._chains: dict[str, _Chain] = {}  # tasks with records queued or on the wire
        self._tails: dict[str, tuple[int, str]] = {}  # the last tail seen per task

    def append(self, task_id: str, link: Link) -> asyncio.Future[Outcome]:
        chain = self._chains.get(task_id)
        if chain is None:  # nothing of this task on the wire: hashed and sent now (the shared
            chain = self._chains[task_id] = _Chain()  # connection writes once per loop iteration)
            chain.queue.append(link)
            self._flush(task_id)
            return link.future
        chain.queue.append(link)  # goes with the next batch, when the one on the wire has answered
        if not chain.busy and not chain.scheduled:
            chain.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, task_id)
        return link.future

    def _flush(self, task_id: str) -> None:
        chain = self._chains[task_id]
        chain.scheduled = False
        if chain.busy:
            return
        waiting = [link for link in chain.queue if not link.future.done()]  # a caller gone: never sent
        batch, chain.queue = waiting[:self.MAX_BATCH], waiting[self.MAX_BATCH:]
        if not batch:
            del self._chains[task_id]
            return
        seq, prev = self._tails.get(task_id, (0, GENESIS))
        commands: list[Command] = []
        sent: list[tuple[Link, int]] = []  # each link and the index of its script's reply
        for link in batch:
            try:
                record = chain_record(link.fields, seq + 1, prev)
            except Exception as e:  # a record that cannot be serialized fails alone
                link.future.set_exception(e)
                continue
            link.record = record
            sent.append((link, len(commands)))
            commands.append(self._command(link, record, prev))
            commands += link.also  # they run whatever the script answers: sent once
            link.also = []
            seq, prev = record.seq, record.hash
        if not sent:
            self._flush_next(task_id, chain)
            return
        chain.busy = True
        replies: asyncio.Future[list[Any]]
        try:
            replies = asyncio.ensure_future(self._send(commands))
        except Exception as e:  # nothing was sent
            replies = asyncio.get_running_loop().create_future()
            replies.set_exception(e)
        replies.add_done_callback(partial(self._settle, task_id, sent))

    def _command(self, link: Link, record: AuditRecord, prev: str) -> Command:
        sha, source = self._scripts[link.script]
        args = [*link.head, record.seq, prev, record.hash, record.json_line(), *link.tail]
        if link.use_eval:
            return ("EVAL", source, len(link.keys), *link.keys, *args)
        return ("EVALSHA", sha, len(link.keys), *link.keys, *args)

    def _settle(self, task_id: str, sent: list[tuple[Link, int]], done: asyncio.Future[list[Any]]) -> None:
        """The replies of a batch, in the order the scripts ran."""
        chain = self._chains[task_id]
        chain.busy = False
        error = RedisConnectionError("the round trip was cancelled") if done.cancelled() else done.exception()
        if error is not None:
            self._tails.pop(task_id, None)  # whether they ran is unknown: learn the tail afresh
            for link, _ in sent:
                if not link.future.done():
                    link.future.set_exception(error)
            self._flush_next(task_id, chain)
            return
        replies = done.result()
        again: list[Link] = []
        for link, i in sent:
            reply = replies[i]
            if isinstance(reply, NoScriptError):  # nothing ran
                link.use_eval = True
                again.append(link)
            elif isinstance(reply, Exception):
                if not link.future.done():
                    link.future.set_exception(reply)
            elif reply[0] == 1:
                assert link.record is not None
                self._remember(task_id, link.record.seq, link.record.hash)
                if not link.future.done():
                    link.future.set_result((reply, link.record))
            elif reply[0] == link.conflict:  # the tail moved: rehash on the tail found
                self._remember(task_id, int(reply[1]), str(reply[2]))
                again.append(link)
            elif not link.future.done():
                link.future.set_result((reply, None))
        for link in again:
            link.attempts += 1
            if link.attempts >= self._attempts and not link.future.done():
                link.future.set_exception(StoreUnavailable("the audit trail is too contended to append to"))
        chain.queue[:0] = [link for link in again if not link.future.done()]  # before the newer ones
        self._flush_next(task_id, chain)

    def _flush_next(self, task_id: str, chain: _Chain) -> None:
        if chain.queue:
            self._flush(task_id)
        elif not chain.busy and not chain.scheduled:
            del self._chains[task_id]

    def _remember(self, task_id: str, seq: int, hash_: str) -> None:
        if len(self._tails) >= self.MAX_TAILS and task_id not in self._tails:
            self._tails.pop(next(iter(self._tails)))
        self._tails[task_id] = (seq, hash_)
