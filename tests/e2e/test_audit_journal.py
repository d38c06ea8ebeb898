"""The audit folder's journal under a real `guard serve`: killed with SIGKILL mid-load, then
restarted, every call the agents got an answer for is in a verified trail, even when the crash
also lost every task-file write that was never synced (a power cut); and a clean stop leaves no
journal behind."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from guard.audit.journal import JOURNAL_DIR
from guard.audit.trails import list_trails, read_trail
from tests.e2e.loadgen import Load, check_trails
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.upstream import Upstream


def journals(g: Guard) -> list[Path]:
    return sorted((g.audit_dir() / JOURNAL_DIR).glob("*.wal"))


def journaled(path: Path) -> set[tuple[str, int]]:
    """(task_id, seq) of every whole line of a journal."""
    out = set()
    for line in path.read_bytes().split(b"\0", 1)[0].splitlines(keepends=True):
        if line.endswith(b"\n"):
            rec = json.loads(line)
            out.add((rec["task_id"], rec["seq"]))
    return out


async def until_forwarded(upstream: Upstream, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(upstream.requests) < n:
        assert time.monotonic() < deadline, "the load never built up"
        await asyncio.sleep(0.05)


async def test_answered_calls_survive_kill_9_and_lost_task_file_writes(guard_factory: Any,
                                                                        upstream: Upstream) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url))
    load = await Load.create(g, 12)
    agents = [asyncio.ensure_future(load.agent(t)) for t in load.tasks]
    await until_forwarded(upstream, 300)
    g.kill()  # SIGKILL mid-load
    load.stop.set()
    await asyncio.gather(*agents)
    answered = [o for o in load.outcomes if o.status in (200, 403)]
    assert answered and any(o.status == 0 for o in load.outcomes)
    (orphan,) = journals(g)
    # no checkpoint ran: the journal holds every record of the folder, so a power cut could have
    # lost all the task-file writes; lose them
    on_disk = {(t, r["seq"]) for t in list_trails(g.audit_dir()) for r in read_trail(g.audit_dir(), t)}
    assert on_disk <= journaled(orphan)
    for t in list_trails(g.audit_dir()):
        (g.audit_dir() / f"{t}.jsonl").unlink()
    g.start()
    assert orphan not in journals(g)  # replayed and deleted before the guard listened
    events = check_trails({t["task_id"]: read_trail(g.audit_dir(), t["task_id"]) for t in load.tasks})
    for o in answered:
        assert o.call_id is not None
        seen = events[o.task_id].get(o.call_id, set())
        if o.status == 200:
            assert {"call_decided:allow", "call_forwarded:"} <= seen, o
        else:
            assert "call_decided:deny" in seen, o
    auditor = bearer(g.token("sec@acme.example", "guard:auditor"))
    async with aiohttp.ClientSession() as http:
        for task in load.tasks:
            async with http.get(f"{g.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
                assert (await r.json())["verified"] is True
    verify = g.cli("audit", "verify", load.tasks[0]["task_id"])
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_clean_stop_checkpoints_and_removes_the_journal(guard_factory: Any, upstream: Upstream) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url))
    async with aiohttp.ClientSession() as http:
        task = await create_task(http, g.url, g.token(AGENT))
        for i in range(5):
            async with http.get(f"{g.url}/tools/echo/items/{i}", headers=bearer(task["task_token"])) as r:
                assert r.status == 200
    (journal,) = journals(g)
    assert journaled(journal)
    g.stop()
    assert journals(g) == []
    trail = read_trail(g.audit_dir(), task["task_id"])
    assert [r["event"] for r in trail].count("call_forwarded") == 5
    check_trails({task["task_id"]: trail})
