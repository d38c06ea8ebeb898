"""Task ends, learned by every instance: the one mechanism that closes what a task still holds open.

A task ends when it is completed, revoked or expired (idle included), or when its agent is
suspended (which revokes it). Whatever this guard keeps open for a task (a streamed answer, a
call held on an approval, a per-task OAuth token or database lease) must end with it, on
every instance, within a second. `TaskEnds` (one per app, `deps.task_ends`) is how:

    ends.subscribe(fn)             # async fn(TaskEnded), once for every end this instance learns of
    with ends.watch(task_id, agent) as watch:
        ...                        # watch.ended (an asyncio.Event) is set when the task ends;
                                   # watch.reason says why; watch.on_end(cb) calls cb(TaskEnded) then
    await ends.end(task_id, "revoked", actor, detail, reason="agent_suspended")  # end a task here

How an end is learned, from the fastest to the fallback:
1. ended here: `end()` (and `expired()`, for an expiry found on the way) ends the task in the
   store, audits `task_<status>`, and announces it at once to this instance;
2. ended at another instance: with Redis, every announcement is published on the
   `guard:task_ends` channel and every instance delivers it to its own watches and subscribers;
3. the fallback: while a task is watched here, this instance reads it from the store at least
   once a second (after the watch is CHECK_S old): an end whose publication was lost is found,
   and an expiry (`expires_at` passed, or idle for `idle_s`) is persisted, audited and announced.

An end is delivered once per instance and task (ends are remembered REMEMBERED_S): subscribers
are called once (each in its own asyncio task; an exception is logged, not raised), watches are
set once. A watch opened after its task's end was delivered is set at once (or, once the end is
forgotten, by its first check). A task that is deleted from the store while watched
(retention) counts as expired.

`reason` is one of task_completed | task_revoked | task_expired | agent_suspended; found in the
store, a revocation whose end_reason starts with "agent suspended" is agent_suspended.

Which to use: `subscribe` sees every end announced anywhere (Redis pub/sub does not queue, so a
message lost while Redis reconnects is lost to subscribers), and the expiry of a task nobody
watches only when something finds it (a call, a read, or guard.tasks.retention's sweep, which ends
tasks past `expires_at` within its interval). Something that must end within a second, whatever
happens (a stream, a per-task token or lease), holds a watch for as long as it lives:

    watch = ends.watch(task_id, agent)
    forget = watch.on_end(lambda e: revoke_soon(e))   # plain callable; schedule async work from it
    ...
    forget(); watch.close()                           # the thing ended first
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from guard.audit.log import AuditLog
from guard.domain import Task, TaskState
from guard.errors import GuardError
from guard.log import get_logger
from guard.stores.base import Store
from guard.stores.notify import Notifier, open_notifier
from guard.stores.redis.keys import TASK_ENDS_CHANNEL

__all__ = ["CHANNEL", "CHECK_S", "EndReason", "TaskEnded", "TaskEnds", "TaskWatch", "end_reason"]

log = get_logger("guard.lifecycle")
CHANNEL = TASK_ENDS_CHANNEL
CHECK_S = 0.4  # the fallback read of watched tasks: an end is found within 2 * CHECK_S
REMEMBERED_S = 10.0  # how long an end is remembered, so that it is delivered once (later: found again by a check)
REMEMBERED_MAX = 10_000
EndReason = Literal["task_completed", "task_revoked", "task_expired", "agent_suspended"]
_REASONS: frozenset[str] = frozenset({"task_completed", "task_revoked", "task_expired", "agent_suspended"})


@dataclass(frozen=True, slots=True)
class TaskEnded:
    task_id: str
    agent: str
    reason: EndReason


def end_reason(task: Task) -> EndReason:
    """Why a task that is no longer active ended, from what the store holds."""
    if task.status == "completed":
        return "task_completed"
    if task.status == "revoked":
        return "agent_suspended" if (task.end_reason or "").startswith("agent suspended") else "task_revoked"
    return "task_expired"


class TaskWatch:
    """One watcher of one task, from `TaskEnds.watch`; close it (or leave its `with`) when done."""

    __slots__ = ("_callbacks", "_ends", "_event", "agent", "reason", "since", "task_id")

    def __init__(self, ends: TaskEnds, task_id: str, agent: str) -> None:
        self._ends = ends
        self.task_id, self.agent = task_id, agent
        self._event: asyncio.Event | None = None  # made when asked for: most watches never are
        self.reason: EndReason | None = None
        self.since = time.monotonic()
        self._callbacks: list[Callable[[TaskEnded], None]] = []

    @property
    def ended(self) -> asyncio.Event:
        """Set when the task has ended (then `reason` says why)."""
        if self._event is None:
            self._event = asyncio.Event()
            if self.reason is not None:
                self._event.set()
        return self._event

    def on_end(self, fn: Callable[[TaskEnded], None]) -> Callable[[], None]:
        """Call `fn` (plain, not async: it runs inside the delivery) when the task ends, at once
        if it already has. Returns a function that forgets `fn`."""
        if self.reason is not None:
            fn(TaskEnded(self.task_id, self.agent, self.reason))
            return lambda: None
        self._callbacks.append(fn)

        def forget() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(fn)

        return forget

    def _fire(self, ended: TaskEnded) -> None:
        if self.reason is not None:
            return
        self.reason = ended.reason
        if self._event is not None:
            self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(ended)
            except Exception:
                log.exception("task_end_callback_failed", task_id=self.task_id)

    async def wait(self) -> EndReason:
        await self.ended.wait()
        assert self.reason is not None
        return self.reason

    def close(self) -> None:
        self._ends._unwatch(self)

    def __enter__(self) -> TaskWatch:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class TaskEnds:
    """Task ends for this instance: see the module's docstring. `start()` and `close()` belong
    to the app's lifecycle."""

    def __init__(self, store: Store, audit: AuditLog, store_url: str, check_s: float = CHECK_S) -> None:
        self.store, self.audit, self.check_s = store, audit, check_s
        self._notifier: Notifier = open_notifier(store_url, CHANNEL, "task_end")
        self._subscribers: list[Callable[[TaskEnded], Awaitable[None]]] = []
        self._watches: dict[str, set[TaskWatch]] = {}
        self._delivered: OrderedDict[str, tuple[float, TaskEnded]] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None
        self._enders: list[Callable[[Task], None]] = []  # told of each end made here (guard.signals sends it)
        self._suspenders: list[Callable[[str, str], None]] = []  # told of each agent suspended here

    async def start(self) -> None:
        await self._notifier.start(self._received)
        self._checker = asyncio.get_running_loop().create_task(self._check_forever())

    async def close(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        await self._notifier.close()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the interface ------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[TaskEnded], Awaitable[None]]) -> None:
        """`await fn(ended)` for every end this instance learns of from now on."""
        self._subscribers.append(fn)

    def watch(self, task_id: str, agent: str) -> TaskWatch:
        """A watch on the task, set when it ends (checked here at least once a second meanwhile)."""
        w = TaskWatch(self, task_id, agent)
        known = self._delivered.get(task_id)
        if known is not None:
            w._fire(known[1])
        else:
            self._watches.setdefault(task_id, set()).add(w)
        return w

    async def end(self, task_id: str, status: str, actor: str | None, detail: str | None,
                  reason: EndReason | None = None, fields: Mapping[str, Any] | None = None) -> Task | None:
        """End an active task here: the store moves it to `status` (completed | revoked |
        expired), `task_<status>` is audited (with `actor` when given, `detail` as its
        end_reason, and `fields`, e.g. the jti of the signal behind it), and the end is
        announced everywhere. None when it was not active."""
        ended = await self.store.end_task(task_id, status, time.time(), detail)
        if ended is None:
            return None
        extra: dict[str, Any] = dict(fields or {})
        if actor is not None:
            extra["actor"] = actor
        try:
            await self.audit.append(ended.task_id, f"task_{status}", ended.agent, detail=detail, **extra)
        finally:  # ended in the store: announced even when the record could not be written (an error)
            await self.announce(TaskEnded(ended.task_id, ended.agent, reason or end_reason(ended)))
            for fn in self._enders:
                fn(ended)
        return ended

    def on_ended_here(self, fn: Callable[[Task], None]) -> None:
        """`fn(task)` (plain, not async: it must not block) for every task this instance ends:
        once per end in the whole deployment, unlike `subscribe`."""
        self._enders.append(fn)

    def on_suspended_here(self, fn: Callable[[str, str], None]) -> None:
        """`fn(agent, reason)` (plain, must not block) for every agent newly suspended here
        (guard.tasks.suspend), before its tasks are revoked."""
        self._suspenders.append(fn)

    def suspended_here(self, agent: str, reason: str) -> None:
        for fn in self._suspenders:
            fn(agent, reason)

    async def expired(self, state: TaskState, now: float) -> TaskState:
        """Persist (and audit, and announce) the expiry of a task past `expires_at` or idle for
        `idle_s`; the state unchanged when it is not due or another instance ended it first."""
        if state.task.status != "active" or state.effective_status(now) != "expired":
            return state
        why = "expires_at reached" if now >= state.task.expires_at else "idle"
        ended = await self.end(state.task.task_id, "expired", None, why, "task_expired")
        return state if ended is None else TaskState(ended, state.calls, state.last_call_at, state.history)

    async def announce(self, ended: TaskEnded) -> None:
        """A task ended (in the store already): deliver it here, and publish it to the others."""
        await self._notifier.publish(json.dumps([ended.task_id, ended.agent, ended.reason]))

    # -- delivery -------------------------------------------------------------------------------
    def _received(self, message: str) -> None:
        try:
            task_id, agent, reason = json.loads(message)
        except (ValueError, TypeError):
            log.warning("task_end_unreadable", message=message[:200])
            return
        if isinstance(task_id, str) and isinstance(agent, str) and reason in _REASONS:
            self._deliver(TaskEnded(task_id, agent, reason))

    def _deliver(self, ended: TaskEnded) -> None:
        if ended.task_id in self._delivered:
            return
        now = time.monotonic()
        self._delivered[ended.task_id] = (now, ended)
        while self._delivered and (len(self._delivered) > REMEMBERED_MAX
                                   or next(iter(self._delivered.values()))[0] < now - REMEMBERED_S):
            self._delivered.popitem(last=False)
        watches = self._watches.pop(ended.task_id, set())
        log.info("task_end_delivered", task_id=ended.task_id, reason=ended.reason, watches=len(watches))
        for w in watches:
            w._fire(ended)
        for fn in self._subscribers:
            task = asyncio.get_running_loop().create_task(self._run(fn, ended))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    @staticmethod
    async def _run(fn: Callable[[TaskEnded], Awaitable[None]], ended: TaskEnded) -> None:
        try:
            await fn(ended)
        except Exception:
            log.exception("task_end_subscriber_failed", task_id=ended.task_id, reason=ended.reason)

    def _unwatch(self, w: TaskWatch) -> None:
        watches = self._watches.get(w.task_id)
        if watches is not None:
            watches.discard(w)
            if not watches:
                del self._watches[w.task_id]

    # -- the fallback check ---------------------------------------------------------------------
    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            due = time.monotonic() - self.check_s
            tasks = {tid: next(iter(ws)).agent for tid, ws in self._watches.items()
                     if any(w.since <= due for w in ws)}
            try:
                if tasks:
                    await asyncio.gather(*(self._check(tid, agent) for tid, agent in tasks.items()))
            except Exception:  # a bug must not end the fallback for good
                log.exception("task_check_crashed")

    async def _check(self, task_id: str, agent: str) -> None:
        try:
            state = await self.store.get_task(task_id)
            if state is None:
                self._deliver(TaskEnded(task_id, agent, "task_expired"))
            elif state.task.status != "active":
                self._deliver(TaskEnded(task_id, state.task.agent, end_reason(state.task)))
            else:
                await self.expired(state, time.time())
        except GuardError as e:  # the store or the audit cannot answer: the next check tries again
            log.warning("task_check_failed", task_id=task_id, error=e.code)
