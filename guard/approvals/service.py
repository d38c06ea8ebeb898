"""Approvals: requests to approvers, decisions, holds (`Prefer: wait`), audit of each event.

A held call is an `asyncio.Event` per waiter: a decision (made here, or at another instance and
published through the notifier) sets the events of that approval; a slow re-check of the store
is only the fallback for a lost notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from guard.approvals.webhooks import Webhooks, WebhookStore
from guard.audit.log import AuditLog
from guard.config import Config
from guard.domain import Approval, TaskState
from guard.log import get_logger
from guard.stores.notify import open_notifier
from guard.tasks.ends import TaskEnds, TaskWatch

__all__ = ["Approvals", "effective_status"]

log = get_logger("guard.approvals")
RECHECK_S = 5.0  # fallback re-read of a held approval when no notification arrived
CONNECTED_POLL_S = 0.5  # how often a hold looks whether its client is still there


def effective_status(approval: Approval | None, now: float) -> str:
    """The status with expiry applied as of `now`: a pending approval, or a granted one never
    used, past its `expires_at` is expired (so is one that vanished)."""
    if approval is None:
        return "expired"
    if approval.status in ("pending", "approved") and approval.expires_at <= now:
        return "expired"
    return approval.status


class Approvals:
    def __init__(self, cfg: Config, store: WebhookStore, audit: AuditLog, task_ends: TaskEnds) -> None:
        self.cfg = cfg
        self.task_ends = task_ends  # a held call ends with its task
        self.store = store
        self.audit = audit
        self.ttl_s = cfg.approvals.ttl_s
        self.max_wait_s = cfg.approvals.max_wait_s
        self.webhooks = Webhooks(cfg, store, audit)
        self.notifier = open_notifier(cfg.store.url)
        self._waiters: dict[str, set[asyncio.Event]] = {}

    async def start(self) -> None:
        await self.notifier.start(self.notify)
        await self.webhooks.start()

    async def close(self) -> None:
        await self.webhooks.close()
        await self.notifier.close()

    async def requested(self, approval: Approval, state: TaskState, call_id: str) -> None:
        """A new approval: audit it and hand it to the approvers' webhooks."""
        await self.audit.append(
            approval.task_id, "approval_requested", state.task.agent, call_id=call_id,
            approval_id=approval.approval_id, tool=approval.tool, action=approval.action,
            rule_id=approval.rule_id,
        )
        log.info("approval_requested", approval_id=approval.approval_id)
        await self.webhooks.request(approval, state)

    async def consumed(self, approval: Approval, call_id: str, state: TaskState) -> None:
        await self.audit.append(
            approval.task_id, "approval_consumed", state.task.agent, call_id=call_id,
            approval_id=approval.approval_id, tool=approval.tool, action=approval.action,
        )

    async def decided(self, approval: Approval, agent: str, decision: dict[str, Any]) -> None:
        """One approver's decision was recorded: audit it and wake held calls everywhere."""
        await self.audit.append(
            approval.task_id, "approval_decided", agent, approval_id=approval.approval_id,
            tool=approval.tool, action=approval.action, rule_id=approval.rule_id,
            approver=decision["approver"], decision=decision["decision"], via=decision["via"],
            detail=approval.status,
        )
        log.info("approval_decided", task_id=approval.task_id, approval_id=approval.approval_id,
                 decision=decision["decision"], via=decision["via"], status=approval.status)
        if approval.status != "pending":
            await self.notifier.publish(approval.approval_id)

    def notify(self, approval_id: str) -> None:
        """A decision was recorded: wake the calls holding on it."""
        for ev in self._waiters.get(approval_id, ()):
            ev.set()

    async def wait(self, approval_id: str, timeout: float, connected: Callable[[], bool] | None = None,
                   task: tuple[str, str] | None = None) -> str:
        """Hold until the approval leaves `pending`, `timeout` passes, the client goes away
        (`connected()` turns False) or the task (`(task_id, agent)`) ends; returns the
        approval's status, "pending", "gone" or "task_ended"."""
        watch: TaskWatch | None = None
        if task is not None:
            watch = self.task_ends.watch(*task)
        try:
            return await self._wait(approval_id, timeout, connected, watch)
        finally:
            if watch is not None:
                watch.close()

    async def _wait(self, approval_id: str, timeout: float, connected: Callable[[], bool] | None,
                    watch: TaskWatch | None) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ev = asyncio.Event()
        self._waiters.setdefault(approval_id, set()).add(ev)
        if watch is not None:
            watch.on_end(lambda _: ev.set())
        try:
            while True:
                ev.clear()  # before the read: a decision after it still wakes us
                if watch is not None and watch.ended.is_set():
                    return "task_ended"
                a = await self.store.get_approval(approval_id)
                now = time.time()
                status = effective_status(a, now)
                if watch is not None and (watch.ended.is_set() or (status == "expired" and a is not None
                                                                  and a.expires_at > now)):
                    return "task_ended"  # only a task's end expires a pending approval early
                if status != "pending" or a is None:
                    return status
                remaining = min(deadline - loop.time(), a.expires_at - now)
                if remaining <= 0:
                    return "pending"
                if not await _hold(ev, min(remaining, RECHECK_S), connected):
                    return "gone"
        finally:
            waiters = self._waiters.get(approval_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[approval_id]

    async def pending(self, task_id: str | None = None) -> list[Approval]:
        """Approvals still awaiting a decision: pending and not past `expires_at` (a store marks
        an expired one only when something next touches it)."""
        now = time.time()
        return [a for a in await self.store.list_approvals(task_id, "pending") if a.expires_at > now]

    def describe(self, approval: Approval) -> dict[str, Any]:
        return {
            "approval_id": approval.approval_id,
            "status": effective_status(approval, time.time()),
            "task_id": approval.task_id,
            "tool": approval.tool,
            "action": approval.action,
            "args": approval.args,
            "rule_id": approval.rule_id,
            "approvals_required": approval.required,
            "created_at": approval.created_at,
            "expires_at": approval.expires_at,
            "decisions": list(approval.decisions),
        }


async def _hold(ev: asyncio.Event, seconds: float, connected: Callable[[], bool] | None) -> bool:
    """Wait for `ev` up to `seconds`; False as soon as the client is seen gone."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not ev.is_set():
        if connected is not None and not connected():
            return False
        left = end - loop.time()
        if left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), min(left, CONNECTED_POLL_S if connected else left))
    return True
