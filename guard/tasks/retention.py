"""Retention: state that goes away when it should (config `retention`).

One sweeper per instance, every `interval_s`:
1. tasks past `expires_at` (or idle, in memory) that nobody ended are ended as expired
   (audited and announced through guard.tasks.ends, like any other end), so that they too
   reach retention;
2. the store forgets tasks that ended `retention.ended_task_s` ago (Store.purge_ended: in
   Redis the end set their TTL, this removes their index entries);
3. with `retention.audit_s`, trails in the audit folder untouched that long whose task is gone
   or ended are deleted (listed off the event loop); every `audit_s / 2`, at most every AUDIT_SWEEP_S.

The agent inventory and consumed-credential marks are not touched (marks expire by themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from guard.audit.trails import list_trails, trail_path
from guard.errors import GuardError
from guard.log import get_logger
from guard.stores.base import Store
from guard.tasks.ends import TaskEnds

__all__ = ["Sweeper", "sweep_interval"]

log = get_logger("guard.retention")
AUDIT_SWEEP_S = 60.0


def sweep_interval(ended_task_s: float | None) -> float:
    """Often enough for a short retention to hold, at most every 10 s."""
    return 10.0 if ended_task_s is None else min(10.0, max(0.5, ended_task_s / 2))


class Sweeper:
    def __init__(self, store: Store, ends: TaskEnds, audit_dir: str | None, interval_s: float | None = None) -> None:
        self.store, self.ends = store, ends
        self.audit_dir = Path(audit_dir) if audit_dir else None
        self.interval_s = interval_s or sweep_interval(store.retention.ended_task_s)
        self._task: asyncio.Task[None] | None = None
        self._audit_swept = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep(time.time())
            except GuardError as e:  # the store cannot answer now: the next sweep tries again
                log.warning("retention_sweep_failed", error=e.code)
            except Exception:  # a bug must not end retention for good
                log.exception("retention_sweep_crashed")

    async def sweep(self, now: float) -> None:
        expired = 0
        for task_id in await self.store.expired_tasks(now):
            state = await self.store.get_task(task_id)
            if state is not None and (await self.ends.expired(state, now)).task.status == "expired":
                expired += 1
        purged = 0
        while (n := await self.store.purge_ended(now)) > 0:
            purged += n
        deleted = await self._sweep_audit(now) if self._audit_due(now) else 0
        if expired or purged or deleted:
            log.info("retention_swept", expired_tasks=expired, purged_tasks=purged, deleted_trails=deleted)

    def _audit_due(self, now: float) -> bool:
        audit_s = self.store.retention.audit_s
        if self.audit_dir is None or audit_s is None or now - self._audit_swept < min(AUDIT_SWEEP_S, audit_s / 2):
            return False
        self._audit_swept = now
        return True

    async def _sweep_audit(self, now: float) -> int:
        """Trail files untouched for `audit_s` whose task is gone from the store or ended."""
        assert self.audit_dir is not None and self.store.retention.audit_s is not None
        old = await asyncio.to_thread(_untouched_since, self.audit_dir, now - self.store.retention.audit_s)
        deleted = 0
        for task_id, path in old:
            state = await self.store.get_task(task_id)
            if state is None or state.task.status != "active":
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(os.unlink, path)
                    deleted += 1
        return deleted


def _untouched_since(directory: Path, cutoff: float) -> list[tuple[str, Path]]:
    out = []
    for task_id in list_trails(directory):
        path = trail_path(directory, task_id)
        with contextlib.suppress(OSError):
            if path.stat().st_mtime <= cutoff:
                out.append((task_id, path))
    return out
