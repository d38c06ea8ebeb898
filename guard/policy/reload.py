"""Policy hot reload: on SIGHUP and when a file under the policies folder changes.

The new set is loaded and compiled off the event loop first; only a set that loads whole
replaces `PolicyHolder.current` (one attribute assignment, so atomic for every reader). A call
reads the holder once when it starts, so calls in flight finish under the set they started
with. A set that fails keeps the old one and logs one `policy_reload_failed` line naming
file:line:reason; the same broken files are not reported again until they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from guard.errors import ConfigError
from guard.log import get_logger
from guard.metrics import Metrics
from guard.policy import PolicySet

__all__ = ["PolicyHolder", "PolicyReloader"]

log = get_logger("guard.reload")
Snapshot = dict[str, tuple[int, int]]


class PolicyHolder:
    """The current compiled policy set; swapped whole on reload, read once per call."""

    def __init__(self, policies: PolicySet) -> None:
        self.current = policies


def snapshot(folder: Path) -> Snapshot:
    """(mtime_ns, size) of every YAML file under the folder."""
    out: Snapshot = {}
    if not folder.is_dir():
        return out
    for p in folder.rglob("*"):
        if p.suffix in (".yaml", ".yml"):
            with contextlib.suppress(OSError):
                st = p.stat()
                out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


class PolicyReloader:
    def __init__(self, folder: str | Path, load: Callable[[], PolicySet], holder: PolicyHolder,
                 metrics: Metrics, poll_s: float = 1.0) -> None:
        self.folder = Path(folder)
        self.load = load
        self.holder = holder
        self.metrics = metrics
        self.poll_s = poll_s
        self._seen = snapshot(self.folder)
        self._lock = asyncio.Lock()
        metrics.policy_rules.set(len(holder.current.rules))

    async def reload(self, trigger: str) -> bool:
        """Load, compile and swap; keeps the old set (and says why) when the new one fails."""
        async with self._lock:
            self._seen = await asyncio.to_thread(snapshot, self.folder)
            try:
                policies = await asyncio.to_thread(self.load)
            except ConfigError as e:
                self.metrics.policy_reloads.labels("failed").inc()
                log.error("policy_reload_failed", trigger=trigger, error=str(e), file=e.file, line=e.line,
                          reason=e.reason, kept="previous policy set")
                return False
            self.holder.current = policies
            self.metrics.policy_reloads.labels("ok").inc()
            self.metrics.policy_rules.set(len(policies.rules))
            log.info("policy_reloaded", trigger=trigger, tools=sorted(policies.tools), rules=len(policies.rules))
            return True

    async def watch(self) -> None:
        """Poll the folder's mtimes; reload when anything under it changed."""
        while True:
            await asyncio.sleep(self.poll_s)
            current = await asyncio.to_thread(snapshot, self.folder)
            if current != self._seen:
                await self.reload("file_changed")

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: the watcher task and the SIGHUP handler live as long as the app."""
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            t = loop.create_task(self.reload("sighup"))
            pending.add(t)
            t.add_done_callback(pending.discard)

        watcher = loop.create_task(self.watch())
        hup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
            hup = True
        yield
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        watcher.cancel()
        for t in (watcher, *pending):
            with contextlib.suppress(asyncio.CancelledError):
                await t
