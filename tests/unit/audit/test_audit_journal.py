"""The audit folder's write-ahead journal: one sync per batch however many tasks it spans, and
records that survive a writer killed at any point, replayed into the task files at the next start.
Writers run for real (the crash tests in their own process, killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from guard.audit.journal import JOURNAL_DIR, datasync
from guard.audit.trails import list_trails, read_trail
from guard.audit.writer import AuditFiles
from guard.hashchain import verify_chain
from tests.support.process import ROOT
from tests.unit.audit.journal_writer import records


class SyncLog:
    """Syncs for real and notes which file each one was for."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, fd: int) -> None:
        self.paths.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        datasync(fd)

    def journal_syncs(self) -> list[Path]:
        return [p for p in self.paths if p.parent.name == JOURNAL_DIR and p.suffix == ".wal"]

    def since(self, n: int) -> list[Path]:
        """Syncs after the n-th, but those preparing a next journal in the background."""
        return [p for p in self.paths[n:] if p.suffix != ".new" and p.name != JOURNAL_DIR]


def journals(d: Path) -> list[Path]:
    return sorted((d / JOURNAL_DIR).glob("*.wal"))


def journaled(path: Path) -> list[bytes]:
    """The whole lines of a journal (it is zero-filled past them)."""
    try:
        data = path.read_bytes().split(b"\0", 1)[0]
    except FileNotFoundError:
        return []
    return data.splitlines(keepends=True)[: data.count(b"\n")]


def writer(d: Path, tasks: int, batches: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.unit.audit.journal_writer", str(d), str(tasks), str(batches),
                             *extra], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def killed_mid_batch(d: Path, tasks: int, batches: int) -> list[str]:
    """Run a writer that dies right after the journal sync of its last batch; its acks."""
    p = writer(d, tasks, batches, "--die-after-journal-sync", str(batches))
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    return out.split("\n")[:-1]


def assert_trails(d: Path, tasks: int, seqs: int) -> None:
    assert sorted(list_trails(d)) == sorted(f"task-{t}" for t in range(tasks))
    for t in range(tasks):
        trail = read_trail(d, f"task-{t}")
        assert [r["seq"] for r in trail] == list(range(1, seqs + 1)), t
        assert verify_chain(trail).verified, t
        lines = (d / f"task-{t}.jsonl").read_bytes().splitlines()
        assert len(lines) == seqs, t  # nothing written twice


async def test_a_batch_spanning_50_tasks_costs_one_journal_sync(tmp_path: Path) -> None:
    syncs = SyncLog()
    files = AuditFiles(tmp_path, sync=syncs)
    files.start()
    for batch in records(50, 2):
        before = len(syncs.paths)
        for fut in [files.submit(r) for r in batch]:
            await fut
            assert len(syncs.journal_syncs()) >= 1  # acknowledged only after the journal sync
        assert syncs.since(before) == journals(tmp_path)  # one sync, and it is the journal's
    # readable before any task file was synced
    for t in range(50):
        assert [r["seq"] for r in read_trail(tmp_path, f"task-{t}")] == [1, 2]
    await files.close()
    # a clean close syncs every task file written, then deletes the journal
    assert {p.name for p in syncs.paths} >= {f"task-{t}.jsonl" for t in range(50)}
    assert journals(tmp_path) == []
    assert_trails(tmp_path, 50, 2)


async def test_a_started_record_is_written_while_the_loop_is_still_busy(tmp_path: Path) -> None:
    """The decision record is handed to an idle writer at once (keep_started), so it reaches the
    journal while the caller is still signing the credentials; a record submitted plainly waits
    for the loop to come round."""
    files = AuditFiles(tmp_path)
    files.start()
    (plain,), (started,) = records(1, 2)
    waiting = files.submit(plain)
    time.sleep(0.3)  # the event loop is busy (a blocking call, on purpose)
    assert sum(len(journaled(p)) for p in journals(tmp_path)) == 0  # not handed over yet
    await waiting
    early = files.submit(started, start=True)
    time.sleep(0.3)
    assert sum(len(journaled(p)) for p in journals(tmp_path)) == 2  # written without the loop
    await early
    await files.close()
    assert_trails(tmp_path, 1, 2)


async def test_the_journal_is_emptied_at_checkpoints(tmp_path: Path) -> None:
    syncs = SyncLog()
    files = AuditFiles(tmp_path, sync=syncs)
    files.CHECKPOINT_BYTES = 4096
    files.start()
    first = journals(tmp_path)
    for batch in records(20, 6):  # each batch is over 4 KiB
        await asyncio.gather(*[files.submit(r) for r in batch])
        # the batches before this one were checkpointed: their journals are gone
        assert sum(len(journaled(p)) for p in journals(tmp_path)) <= 20
    assert first[0] not in journals(tmp_path)
    assert {p.name for p in syncs.paths} >= {f"task-{t}.jsonl" for t in range(20)}
    await files.close()
    assert_trails(tmp_path, 20, 6)


async def test_a_batch_journaled_before_the_writer_was_killed_is_replayed(tmp_path: Path) -> None:
    acks = killed_mid_batch(tmp_path, 50, 3)
    assert acks == ["acked 1", "acked 2"]  # batch 3 reached the journal only
    assert [len(read_trail(tmp_path, f"task-{t}")) for t in range(50)] == [2] * 50
    (orphan,) = journals(tmp_path)
    files = AuditFiles(tmp_path)
    files.start()  # replays the dead writer's journal before anything else
    assert orphan not in journals(tmp_path)
    assert_trails(tmp_path, 50, 3)
    await files.close()
    assert journals(tmp_path) == []


async def test_acknowledged_records_survive_losing_the_unsynced_task_files(tmp_path: Path) -> None:
    """A power cut loses what was written but never synced: here, every task file (no
    checkpoint ran). Every acknowledged record is in the journal and comes back."""
    acks = killed_mid_batch(tmp_path, 30, 4)
    assert acks == ["acked 1", "acked 2", "acked 3"]
    for t in range(30):
        (tmp_path / f"task-{t}.jsonl").unlink()
    (tmp_path / "task-0.jsonl").write_bytes(b"")  # and one file that survived empty
    files = AuditFiles(tmp_path)
    files.start()
    assert_trails(tmp_path, 30, 4)
    await files.close()


async def test_a_torn_journal_tail_is_ignored_and_a_torn_task_line_completed(tmp_path: Path) -> None:
    killed_mid_batch(tmp_path, 5, 2)
    (orphan,) = journals(tmp_path)
    fourth = records(5, 3)[2][0]  # a batch whose journal write the crash cut short
    with orphan.open("r+b") as f:
        f.seek(sum(map(len, journaled(orphan))))
        f.write(f'{{"seq":3,"task_id":"task-0","hash":"{fourth.hash}","ev'.encode())
    line = next(ln for ln in journaled(orphan) if b'"task-1"' in ln)
    with (tmp_path / "task-1.jsonl").open("ab") as f:
        f.write(line[:40])  # the crash also tore task-1's append of seq 2
    files = AuditFiles(tmp_path)
    files.start()
    assert_trails(tmp_path, 5, 2)  # seq 3 was never acknowledged: not in any trail
    await files.close()


async def test_a_live_writers_journal_is_never_replayed_by_another(tmp_path: Path) -> None:
    live = writer(tmp_path, 10, 2, "--hold")
    assert live.stdout is not None and live.stdin is not None
    assert [live.stdout.readline().strip() for _ in range(2)] == ["acked 1", "acked 2"]
    (theirs,) = journals(tmp_path)
    content = theirs.read_bytes()
    other = AuditFiles(tmp_path)
    other.start()  # another guard instance on the same folder
    assert theirs in journals(tmp_path) and theirs.read_bytes() == content
    assert len(journals(tmp_path)) == 2  # each writer has its own
    await other.close()
    assert journals(tmp_path) == [theirs]
    os.kill(live.pid, signal.SIGKILL)  # now its writer is gone: the next start replays it
    live.communicate(timeout=30)
    files = AuditFiles(tmp_path)
    files.start()
    assert theirs not in journals(tmp_path)
    assert_trails(tmp_path, 10, 2)
    await files.close()
    assert journals(tmp_path) == []


async def test_a_clean_close_leaves_no_journal_and_nothing_to_replay(tmp_path: Path) -> None:
    live = writer(tmp_path, 3, 2, "--hold")
    out, _ = live.communicate("\n", timeout=60)
    assert live.returncode == 0 and out.split() == ["acked", "1", "acked", "2"]
    assert journals(tmp_path) == []
    assert_trails(tmp_path, 3, 2)


async def test_without_fsync_there_is_no_journal(tmp_path: Path) -> None:
    files = AuditFiles(tmp_path, fsync=False)
    files.start()
    for batch in records(3, 2):
        for r in batch:
            await files.submit(r)
    assert journals(tmp_path) == []
    await files.close()
    assert_trails(tmp_path, 3, 2)
