"""The durable audit folder: per-task JSON-lines files, group-committed through a write-ahead
journal (guard/audit/journal.py). Each group commit is made durable by one sync of the journal
before the caller is answered; the task files are synced at checkpoints.

One job: the writer thread and its batches, which is why it runs past 250 lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from guard.audit.journal import JOURNAL_DIR, Journal, Sync, datasync, journal_dir, replay_orphans, write_all
from guard.audit.trails import trail_path
from guard.domain import AuditRecord
from guard.errors import AuditUnavailable
from guard.log import get_logger

__all__ = ["AuditFiles"]

log = get_logger("guard.audit")


class AuditFiles:
    """Durable per-task JSON-lines files, group-committed through a write-ahead journal.

    Each batch of queued records is appended to this process's journal and synced once, however
    many tasks it spans; then the same lines go to the task files (unsynced) and the records'
    futures resolve. The task files are synced at checkpoints (the journal past CHECKPOINT_BYTES,
    and a clean close), after which the journal is deleted for a fresh one. Journals left by
    writers that are gone are replayed into the task files by `start()`, before anything is
    served. Without `fsync` there is no journal and nothing is synced.

    One writer thread owns the files: the event loop hands it a batch (everything queued since
    the last one) and it hands back the outcome with one `call_soon_threadsafe`, so a batch costs
    the loop one wakeup, not a task, an event and an executor round trip.
    """

    MAX_OPEN = 256  # file descriptors kept open between batches
    SYNC_THREADS = 32  # task files of one checkpoint synced at once
    CHECKPOINT_BYTES = 8 << 20  # journaled bytes that trigger a checkpoint
    JOURNAL_SLACK = 1 << 20  # preallocated beyond CHECKPOINT_BYTES for the batch that crosses it

    def __init__(self, directory: str | Path, fsync: bool = True, sync: Sync = datasync) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._sync = sync
        # on the event loop: records waiting for the writer, and whether it holds a batch now
        self._queue: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._busy = False
        self._scheduled = False  # a _dispatch is due in this loop iteration
        self._idle: asyncio.Future[None] | None = None  # close() waits on it for the batch in hand
        self._loop: asyncio.AbstractEventLoop | None = None
        # the writer thread's inbox: jobs run one after the other, None ends the thread
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # the writer thread's own state
        self._fds: dict[str, int] = {}
        self._jdir = self.dir / JOURNAL_DIR
        self._journal: Journal | None = None
        self._spare: Future[Journal] | None = None  # the next journal, prepared in the background
        self._dirty: set[str] = set()  # task files written since the last checkpoint
        self._new_files = False
        self._retire = False  # a task-file write failed: the journal holds records they lack
        self._syncers = ThreadPoolExecutor(self.SYNC_THREADS, thread_name_prefix="audit-sync")
        self._closed = False

    def start(self) -> None:
        """Replay journals of writers that are gone, open this writer's journal, start writing."""
        replay_orphans(self.dir, lambda task_id: trail_path(self.dir, task_id), self._sync)
        if self.fsync:
            self._jdir = journal_dir(self.dir, self._sync)
            self._journal = self._new_journal()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="audit-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Write what was submitted, then the last checkpoint; submissions after this fail."""
        self._closed = True
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        while self._busy or self._queue:
            self._idle = loop.create_future()
            await self._idle
        done: asyncio.Future[None] = loop.create_future()

        def shutdown() -> None:
            try:
                self._shutdown()
            except Exception as e:
                loop.call_soon_threadsafe(done.set_exception, e)
            else:
                loop.call_soon_threadsafe(done.set_result, None)

        self._inbox.put(shutdown)
        self._inbox.put(None)
        await done
        self._thread.join()
        self._syncers.shutdown(wait=True)

    def submit(self, record: AuditRecord, start: bool = False) -> asyncio.Future[None]:
        """Queue a record; the future resolves once it is on disk. Everything queued in the same
        loop iteration, or while the writer holds a batch, forms one batch (group commit);
        `start` hands an idle writer the queue at once instead."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            fut.set_exception(AuditUnavailable("audit writer closed"))
            return fut
        self._queue.append((record, fut))
        if start:
            self._dispatch()
        else:
            self._schedule()
        return fut

    def _schedule(self) -> None:
        if not self._busy and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        """On the event loop: the queue goes to the writer thread, unless it holds a batch."""
        self._scheduled = False
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._busy = True
        self._inbox.put(partial(self._commit, batch))

    def _writer(self) -> None:
        while (job := self._inbox.get()) is not None:
            try:
                job()
            except Exception as e:  # the thread lives on: a dead writer would strand every caller
                log.error("audit_writer_error", error=type(e).__name__)

    def _commit(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]]) -> None:
        """In the writer thread: write the batch, hand its outcome to the loop, then checkpoint
        (or prepare the next journal) before taking the next batch."""
        error: str | None = None
        try:
            self._write_batch([r for r, _ in batch])
        except OSError as e:
            error = str(e.strerror)
        except Exception as e:  # a bug must fail the batch closed, not strand its callers
            error = type(e).__name__
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, batch, error)
        journal = self._journal
        if journal is not None and journal.size >= self.CHECKPOINT_BYTES:
            self._try_checkpoint()
        elif journal is not None and journal.size >= self.CHECKPOINT_BYTES // 2 and self._spare is None:
            self._spare = self._syncers.submit(self._new_journal)

    def _settle(self, batch: list[tuple[AuditRecord, asyncio.Future[None]]], error: str | None) -> None:
        """On the event loop: resolve a written batch's futures and hand over the next one."""
        if error is not None:
            log.error("audit_write_failed", error=error)
        for _, fut in batch:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(AuditUnavailable("audit write failed"))
        self._busy = False
        if self._queue:
            self._schedule()
        elif self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fd(self, task_id: str) -> int:
        fd = self._fds.get(task_id)
        if fd is None:
            path = trail_path(self.dir, task_id)
            self._new_files |= not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
            self._fds[task_id] = fd
        return fd

    def _evict(self, keep: dict[str, list[bytes]]) -> None:
        """Close idle descriptors beyond MAX_OPEN (never one this batch writes to)."""
        if len(self._fds) + len(keep) <= self.MAX_OPEN:
            return
        for task_id in [t for t in self._fds if t not in keep]:
            os.close(self._fds.pop(task_id))

    def _write_batch(self, records: list[AuditRecord]) -> None:
        """Journal the batch and sync it (the one sync the batch costs), then append it to the
        task files. A journal that could not be synced still gets its lines into the task files
        (as a failed file sync always did); the batch fails either way."""
        by_task: dict[str, list[bytes]] = {}
        for rec in records:
            by_task.setdefault(str(rec.fields["task_id"]), []).append(rec.json_line() + b"\n")
        journal = self._journal
        if journal is None:
            self._write_tasks(by_task)
            return
        if self._retire:
            journal = self._rotate(journal)
        try:
            journal.write(b"".join(line for lines in by_task.values() for line in lines))
            journal.sync()
        except OSError:
            self._retire = True  # its end may hold part of this batch: kept for replay, not reused
            raise
        finally:
            self._write_tasks(by_task)

    def _write_tasks(self, by_task: dict[str, list[bytes]]) -> None:
        self._evict(by_task)
        try:
            for task_id, lines in by_task.items():
                write_all(self._fd(task_id), b"".join(lines))
                if self._journal is not None:
                    self._dirty.add(task_id)
        except OSError:
            self._retire = self._journal is not None
            raise

    def _new_journal(self) -> Journal:
        return Journal(self._jdir, self.CHECKPOINT_BYTES + self.JOURNAL_SLACK, self._sync)

    def _next_journal(self) -> Journal:
        spare, self._spare = self._spare, None
        return spare.result() if spare is not None else self._new_journal()

    def _rotate(self, journal: Journal) -> Journal:
        """Leave a journal that failed, or whose records some task file lacks, for replay at the
        next start; carry on in a new one."""
        self._journal = self._next_journal()
        journal.close(remove=False)
        self._retire = False
        log.warning("audit_journal_retired", journal=journal.path.name)
        return self._journal

    def _checkpoint(self, closing: bool = False) -> None:
        """Sync the task files written since the last checkpoint, then move on to a new journal
        (none when closing) and delete the old one."""
        self._sync_task_files()
        old = self._journal
        if old is not None:
            self._journal = None if closing else self._next_journal()
            old.close(remove=True)

    def _sync_task_files(self) -> None:
        """The task files written since the last checkpoint, and the folder for new ones."""
        fds, opened = [], []
        try:
            for task_id in self._dirty:
                fd = self._fds.get(task_id)
                if fd is None:
                    fd = os.open(trail_path(self.dir, task_id), os.O_RDONLY | os.O_CLOEXEC)
                    opened.append(fd)
                fds.append(fd)
            if self._new_files:
                fds.append(os.open(self.dir, os.O_RDONLY))
                opened.append(fds[-1])
            for _ in self._syncers.map(self._sync, fds):
                pass
        finally:
            for fd in opened:
                os.close(fd)
        self._dirty.clear()
        self._new_files = False

    def _try_checkpoint(self, closing: bool = False) -> bool:
        try:
            self._checkpoint(closing)
        except OSError as e:
            log.error("audit_checkpoint_failed", error=str(e.strerror))  # retried after the next batch
            return False
        return True

    def _shutdown(self) -> None:
        """Last checkpoint; the journal is deleted only when every task file is synced."""
        journal = self._journal
        if journal is not None and (self._retire or not self._try_checkpoint(closing=True)):
            journal.close(remove=False)
        if self._spare is not None:
            with contextlib.suppress(OSError):
                self._next_journal().close(remove=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
