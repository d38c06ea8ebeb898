"""`guard serve --workers N`: N processes on one port, which needs the Redis store."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.process import PY, spawn, wait_port
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return kids


def test_workers_refuse_the_memory_store(guard_factory: Any, upstream: Upstream) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), start=False)
    out = subprocess.run([PY, "-m", "guard", "--config", str(g.config_path), "serve", "--workers", "2"],
                         cwd=g.dir, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "--workers needs a shared store" in out.stderr and "redis://" in out.stderr
    assert "guard_started" not in out.stderr


@pytest.mark.redis
async def test_two_workers_on_redis_answer_calls(
    guard_factory: Any, upstream: Upstream, redis_server: RedisServer
) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": redis_server.url}}, start=False)
    proc = spawn([PY, "-m", "guard", "--config", str(g.config_path), "serve", "--workers", "2"], g.dir,
                 "workers.log", g.env)
    try:
        wait_port(g.port, proc=proc.popen)
        deadline = time.monotonic() + 20
        while proc.log().count("guard_started") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.log().count("guard_started") == 2, proc.log()
        workers = children_of(proc.pid)
        assert len(workers) == 2
        async with aiohttp.ClientSession() as http:
            task = await create_task(http, g.url, g.token(AGENT))
        for _ in range(12):  # a new connection each time: the kernel spreads them over both workers
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{g.url}/tools/echo/items/7", headers=bearer(task["task_token"])) as r:
                assert r.status == 200, await r.text()
        assert len(upstream.requests) == 12
        async with aiohttp.ClientSession() as http, \
                http.get(f"{g.url}/v1/tasks/{task['task_id']}", headers=bearer(task["task_token"])) as r:
            assert (await r.json())["calls"] == 12
    finally:
        proc.stop()
    assert proc.popen.returncode == 0  # SIGTERM passed on: both workers ended cleanly
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
