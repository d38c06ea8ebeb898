"""AuditLog: what the rest of the guard appends to and reads; fails closed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from guard.audit.trails import read_trail
from guard.audit.writer import AuditFiles
from guard.domain import AgentEvent, AuditRecord
from guard.stores.base import AuditStore

__all__ = ["AuditLog"]


class AuditLog:
    """Appends to the store's chain and, when configured, the durable folder; fails closed."""

    def __init__(self, store: AuditStore, files: AuditFiles | None,
                 observer: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.files = files
        self.observer = observer  # sees every durable record (metrics count calls from it)

    @staticmethod
    def draft(task_id: str, event: str, agent: str, **fields: Any) -> dict[str, Any]:
        """A record before the store chains it (for the store's fused operations)."""
        return {"ts": round(time.time(), 6), "task_id": task_id, "event": event, "agent": agent, **fields}

    async def keep(self, record: AuditRecord) -> None:
        """A record the store has chained: its durable copy (awaited; records kept in the same
        loop iteration share one write) and the observer."""
        if self.files is not None:
            await self.files.submit(record)
        if self.observer is not None:
            self.observer(record.fields)

    def keep_started(self, record: AuditRecord) -> Awaitable[None]:
        """keep, with the write started now (an idle writer takes the record at once): the
        caller may do other work before it awaits the record being durable."""
        durable = self.files.submit(record, start=True) if self.files is not None else None
        return self._kept(record, durable)

    async def _kept(self, record: AuditRecord, durable: asyncio.Future[None] | None) -> None:
        if durable is not None:
            await durable
        if self.observer is not None:
            self.observer(record.fields)

    async def append(self, task_id: str, event: str, agent: str, **fields: Any) -> AuditRecord:
        return await self.append_and_count(task_id, event, agent, None, **fields)

    async def append_and_count(self, task_id: str, event: str, agent: str, agent_event: AgentEvent | None,
                               **fields: Any) -> AuditRecord:
        """append, with `agent_event` counted for the agent in the same store operation."""
        record = await self.store.append_audit(task_id, self.draft(task_id, event, agent, **fields), agent_event)
        await self.keep(record)
        return record

    async def append_and_finish(self, task_id: str, call_id: str, event: str, agent: str,
                                **fields: Any) -> AuditRecord:
        """The call's last record, chained in the same store operation that ends the call."""
        draft = self.draft(task_id, event, agent, call_id=call_id, **fields)
        record = await self.store.record_and_finish(task_id, call_id, draft)
        await self.keep(record)
        return record

    async def records(self, task_id: str) -> list[dict[str, Any]]:
        recs = [r.fields for r in await self.store.read_audit(task_id)]
        if not recs and self.files is not None:
            recs = read_trail(self.files.dir, task_id)
        return recs
