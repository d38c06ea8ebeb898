"""The audit folder's write-ahead journal: one durable sync per group commit, however many task
files the commit touches.

A writer appends each batch's JSON lines to its own journal, `<audit dir>/journal/<id>.wal`, and
syncs that one file; then it appends the same lines to the task files without syncing them. A
checkpoint syncs the task files written since the previous one, moves on to a fresh journal and
deletes the old one. While it lives, a writer holds an exclusive `flock` on its journal; at
start-up a writer replays every journal nobody holds (its writer is gone: crashed, killed, or a
disk error retired the journal): the records the task files lack are appended to them and
synced, then the journal is deleted. Journals are zero-filled up front; a torn last line (a batch
cut short by the crash) was never acknowledged and is ignored.
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

from guard.log import get_logger

__all__ = ["JOURNAL_DIR", "Journal", "Sync", "datasync", "journal_dir", "replay_orphans", "sync_dir", "write_all"]

JOURNAL_DIR = "journal"
Sync = Callable[[int], None]  # makes one descriptor's data durable (injectable, to count syncs)
log = get_logger("guard.audit")


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


def journal_dir(audit_dir: Path, sync: Sync) -> Path:
    jdir = audit_dir / JOURNAL_DIR
    if not jdir.is_dir():
        jdir.mkdir(parents=True, exist_ok=True)
        sync_dir(audit_dir, sync)
    return jdir


class Journal:
    """A journal of this process, locked for as long as it is open. It is zero-filled up front, so
    syncing a batch writes data blocks only, never the file's size or block map (which would cost
    a filesystem commit per sync); it is never reused: a checkpoint moves on to a fresh one."""

    def __init__(self, jdir: Path, capacity: int, sync: Sync) -> None:
        tmp = jdir / f"{secrets.token_hex(8)}.new"  # named *.wal only once locked and filled
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            zeros = bytes(min(capacity, 1 << 20))
            for offset in range(0, capacity, len(zeros)):
                os.pwrite(fd, zeros[: capacity - offset], offset)
            sync(fd)
            self.path = tmp.with_suffix(".wal")
            os.rename(tmp, self.path)
            sync_dir(jdir, sync)
        except OSError:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self._fd = fd
        self._sync = sync
        self.size = 0

    def write(self, data: bytes) -> None:
        """Write a batch after the last one (not yet durable)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.size)
            self.size += n
            view = view[n:]

    def sync(self) -> None:
        self._sync(self._fd)

    def close(self, remove: bool) -> None:
        """Release the journal; kept (`remove=False`), it is replayed by the next writer to start."""
        if remove:
            self.path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # a journal that comes back is replayed again: harmless
                sync_dir(self.path.parent, self._sync)
        os.close(self._fd)


def replay_orphans(audit_dir: Path, task_file: Callable[[str], Path], sync: Sync) -> int:
    """Replay and delete every journal in the folder that no live writer holds; the number of
    records appended to task files."""
    jdir = audit_dir / JOURNAL_DIR
    if not jdir.is_dir():
        return 0
    appended = 0
    for path in sorted(jdir.glob("*.wal")) + sorted(jdir.glob("*.new")):  # *.new: cut off while created
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
    data = os.pread(fd, os.fstat(fd).st_size, 0).split(b"\0", 1)[0]  # JSON lines hold no NUL
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
