"""Approvals: requests to approvers, decisions, holds (`Prefer: wait`), audit of each event."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from guard.audit import AuditLog
from guard.config import Config
from guard.domain import Approval, TaskState
from guard.stores.base import Store

__all__ = ["Approvals"]

log = structlog.get_logger("guard.approvals")


class Approvals:
    def __init__(self, cfg: Config, store: Store, audit: AuditLog) -> None:
        self.cfg = cfg
        self.store = store
        self.audit = audit
        self.ttl_s = cfg.approvals.ttl_s
        self.max_wait_s = cfg.approvals.max_wait_s
        self._waiters: dict[str, asyncio.Event] = {}

    async def requested(self, approval: Approval, state: TaskState, call_id: str) -> None:
        """A new approval: audit it and hand it to the approvers' webhooks."""
        await self.audit.append(
            approval.task_id, "approval_requested", state.task.agent, call_id=call_id,
            approval_id=approval.approval_id, tool=approval.tool, action=approval.action,
            rule_id=approval.rule_id,
        )
        log.info("approval_requested", task_id=approval.task_id, call_id=call_id, approval_id=approval.approval_id)

    async def consumed(self, approval: Approval, call_id: str, state: TaskState) -> None:
        await self.audit.append(
            approval.task_id, "approval_consumed", state.task.agent, call_id=call_id,
            approval_id=approval.approval_id, tool=approval.tool, action=approval.action,
        )

    def notify(self, approval_id: str) -> None:
        """A decision was recorded: wake the calls holding on it."""
        ev = self._waiters.get(approval_id)
        if ev is not None:
            ev.set()

    async def wait(self, approval_id: str, timeout: float) -> str:
        """Hold until the approval leaves `pending` or `timeout` passes; returns its status."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ev = self._waiters.setdefault(approval_id, asyncio.Event())
        try:
            while True:
                a = await self.store.get_approval(approval_id)
                if a is None:
                    return "expired"
                if a.status != "pending":
                    return a.status
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return "pending"
                ev.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ev.wait(), min(remaining, 1.0))
        finally:
            if not ev.is_set():
                self._waiters.pop(approval_id, None)

    def describe(self, approval: Approval) -> dict[str, Any]:
        return {
            "approval_id": approval.approval_id,
            "status": approval.status,
            "task_id": approval.task_id,
            "tool": approval.tool,
            "action": approval.action,
            "args": approval.args,
            "rule_id": approval.rule_id,
            "expires_at": approval.expires_at,
            "decisions": list(approval.decisions),
        }
