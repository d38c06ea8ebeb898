"""The audit folder's write-ahead journal: one durable sync per group commit, however many task
files the commit touches.

A writer appends each batch's JSON lines to its own journal, `<audit dir>/journal/<id>.wal`, and
syncs that one file; then it appends the same lines to the task files without syncing them. A
checkpoint syncs the task files written since the previous one and empties the journal. While it
lives, a writer holds an exclusive `flock` on its journal; at start-up a writer replays every
journal nobody holds (its writer is gone: crashed, killed, or a disk error retired the journal):
the records the task files lack are appended to them and synced, then the journal is deleted.
A torn last line (a batch cut short by the crash) was never acknowledged and is ignored.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import structlog

__all__ = ["JOURNAL_DIR", "Journal", "Sync", "datasync", "replay_orphans", "sync_dir"]

JOURNAL_DIR = "journal"
Sync = Callable[[int], None]  # makes one descriptor's data durable (injectable, to count syncs)
log = structlog.get_logger("guard.audit")


def datasync(fd: int) -> None:
    """Data (and the size that makes it readable) on disk; fsync where fdatasync is missing."""
    sync = getattr(os, "fdatasync", os.fsync)
    try:
        sync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # a directory on a filesystem that cannot sync one
            raise


def sync_dir(path: Path, sync: Sync) -> None:
    """Make the names in a folder (new or deleted files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Journal:
    """This process's journal, locked for as long as it is open."""

    def __init__(self, audit_dir: Path, sync: Sync) -> None:
        self.dir = audit_dir / JOURNAL_DIR
        fresh_dir = not self.dir.is_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{secrets.token_hex(8)}.wal"
        self._sync = sync
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.size = 0
        sync_dir(self.dir, sync)
        if fresh_dir:
            sync_dir(audit_dir, sync)

    def write(self, data: bytes) -> None:
        """Append a batch (not yet durable); a failed write is cut off so the next batch's lines
        never run on from a fragment."""
        try:
            write_all(self._fd, data)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def sync(self) -> None:
        self._sync(self._fd)

    def reset(self) -> None:
        """Empty the journal (every record in it is durable in its task file)."""
        os.ftruncate(self._fd, 0)
        self.size = 0

    def close(self, remove: bool) -> None:
        """Release the journal; kept (`remove=False`), it is replayed by the next writer to start."""
        if remove:
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a journal that comes back is replayed again: harmless
                sync_dir(self.dir, self._sync)
        os.close(self._fd)


def replay_orphans(audit_dir: Path, task_file: Callable[[str], Path], sync: Sync) -> int:
    """Replay and delete every journal in the folder that no live writer holds; the number of
    records appended to task files."""
    jdir = audit_dir / JOURNAL_DIR
    if not jdir.is_dir():
        return 0
    appended = 0
    for path in sorted(jdir.glob("*.wal")):
        fd = _lock_orphan(path)
        if fd is None:
            continue
        try:
            n = _replay(fd, task_file, sync)
            if n:
                sync_dir(audit_dir, sync)  # task files the crash left unnamed on disk
            path.unlink()
            sync_dir(jdir, sync)
        finally:
            os.close(fd)
        appended += n
        log.info("audit_journal_replayed", journal=path.name, records=n)
    return appended


def _lock_orphan(path: Path) -> int | None:
    """A locked descriptor of a journal whose writer is gone; None if it is live or already gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(path).st_ino:  # not replayed and deleted meanwhile
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


def _replay(fd: int, task_file: Callable[[str], Path], sync: Sync) -> int:
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    complete = data[: data.rfind(b"\n") + 1]  # a torn last line was never acknowledged
    by_task: dict[str, list[tuple[int, bytes]]] = {}
    for line in complete.splitlines(keepends=True):
        try:
            rec = json.loads(line)
            task_id, seq = rec["task_id"], rec["seq"]
        except (ValueError, KeyError, TypeError):
            continue  # a line of a batch whose write failed (never acknowledged)
        if isinstance(task_id, str) and isinstance(seq, int):
            by_task.setdefault(task_id, []).append((seq, line))
    appended = 0
    for task_id, entries in by_task.items():
        try:
            path = task_file(task_id)
        except ValueError:
            continue
        appended += _append_missing(path, entries, len(data) + (1 << 20), sync)
    return appended


def _append_missing(path: Path, entries: list[tuple[int, bytes]], window: int, sync: Sync) -> int:
    """Append the lines whose seq the end of the task file lacks (records written after the last
    checkpoint are no further back than the journal is long); a line the crash tore in the task
    file is completed when it is the start of a replayed one."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - window)
        head, _, fragment = os.pread(fd, size - start, start).rpartition(b"\n")
        present = _seqs(head)
        out: list[bytes] = []
        for seq, line in entries:
            if seq in present:
                continue
            if fragment:
                out.append(line[len(fragment):] if line.startswith(fragment) else b"\n" + line)
                fragment = b""
            else:
                out.append(line)
            present.add(seq)
        if out:
            write_all(fd, b"".join(out))
            sync(fd)
        return len(out)
    finally:
        os.close(fd)


def _seqs(lines: bytes) -> set[int]:
    seqs: set[int] = set()
    for line in lines.splitlines():
        try:
            seq = json.loads(line).get("seq")
        except (ValueError, AttributeError):
            continue
        if isinstance(seq, int):
            seqs.add(seq)
    return seqs
