"""A real audit writer in its own process, for the journal tests:

    python -m tests.unit.audit.journal_writer DIR TASKS BATCHES [--die-after-journal-sync N] [--hold]

Writes BATCHES batches, each one record (the next seq) for each of TASKS tasks, printing
`acked <n>` once batch n is acknowledged. `--die-after-journal-sync N` SIGKILLs the process right
after the journal sync of batch N, before its records reach the task files. `--hold` waits for a
line on stdin before closing cleanly (the writer stays live meanwhile)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from guard.audit.journal import JOURNAL_DIR, datasync
from guard.audit.writer import AuditFiles
from guard.domain import AuditRecord
from guard.hashchain import GENESIS, chain_record


def records(tasks: int, batches: int) -> list[list[AuditRecord]]:
    out: list[list[AuditRecord]] = []
    prev = dict.fromkeys(range(tasks), GENESIS)
    for seq in range(1, batches + 1):
        batch = []
        for t in range(tasks):
            rec = chain_record({"ts": 1.0, "task_id": f"task-{t}", "event": "call_decided",
                                "agent": "spiffe://acme/agent/a", "call_id": f"c-{t}-{seq}"}, seq, prev[t])
            prev[t] = rec.hash
            batch.append(rec)
        out.append(batch)
    return out


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("tasks", type=int)
    p.add_argument("batches", type=int)
    p.add_argument("--die-after-journal-sync", type=int, default=0)
    p.add_argument("--hold", action="store_true")
    args = p.parse_args()
    journal_syncs = 0

    def sync(fd: int) -> None:
        nonlocal journal_syncs
        datasync(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent.name == JOURNAL_DIR and path.suffix == ".wal":
            journal_syncs += 1
            if journal_syncs == args.die_after_journal_sync:
                os.kill(os.getpid(), signal.SIGKILL)

    files = AuditFiles(args.dir, sync=sync)
    files.start()
    for n, batch in enumerate(records(args.tasks, args.batches), start=1):
        await asyncio.gather(*[files.submit(r) for r in batch])
        print(f"acked {n}", flush=True)
    if args.hold:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await files.close()


if __name__ == "__main__":
    asyncio.run(main())
