"""A small load generator for the long tests: many agents, each with its own task and one
keep-alive connection, calling the `echo` tool of tests.e2e.helpers.echo_policy in a loop
(allowed reads and writes, denied deletes, small payments) until told to stop."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from guard.audit.trails import read_trail
from guard.hashchain import verify_chain
from tests.support.client import AGENT, bearer, create_task
from tests.support.guard import Guard


@dataclass(frozen=True)
class Outcome:
    task_id: str
    call_id: str | None
    status: int  # 0: the connection failed (no answer)
    code: str | None


@dataclass
class Load:
    url: str
    tasks: list[dict[str, Any]]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    pause_s: float = 0.0

    @classmethod
    async def create(cls, guard: Guard, agents: int) -> Load:
        idp = guard.token(AGENT)
        async with aiohttp.ClientSession() as http:
            tasks = [await create_task(http, guard.url, idp, purpose=f"load agent {i}") for i in range(agents)]
        return cls(guard.url, tasks)

    def request(self, i: int) -> tuple[str, str, Any]:
        kind = i % 5
        if kind in (0, 1):
            return "GET", f"/tools/echo/items/{i}", None
        if kind == 2:
            return "POST", "/tools/echo/items", {"title": f"note {i}", "tags": ["public"]}
        if kind == 3:
            return "DELETE", f"/tools/echo/items/{i}", None
        return "POST", "/tools/echo/pay", {"amount": i % 100}

    async def agent(self, task: dict[str, Any]) -> None:
        headers = bearer(task["task_token"])
        connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=10)
        async with aiohttp.ClientSession(connector=connector) as http:
            i = 0
            while not self.stop.is_set():
                i += 1
                method, path, body = self.request(i)
                self.outcomes.append(await self._one(http, task["task_id"], method, path, body, headers))
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)

    async def _one(self, http: aiohttp.ClientSession, task_id: str, method: str, path: str, body: Any,
                   headers: dict[str, str]) -> Outcome:
        try:
            async with http.request(method, self.url + path, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=30)) as r:
                data = await r.read()
                call_id = r.headers.get("Guard-Call-Id")
                code = None
                if r.status >= 400:
                    problem = json.loads(data) if data else {}
                    call_id, code = problem.get("call_id"), problem.get("code")
                return Outcome(task_id, call_id, r.status, code)
        except (aiohttp.ClientError, TimeoutError, ConnectionError):
            await asyncio.sleep(0.05)
            return Outcome(task_id, None, 0, None)

    async def run(self, seconds: float) -> None:
        """Run every agent for `seconds`, then stop them."""
        running = asyncio.ensure_future(self.run_until_stopped())
        await asyncio.sleep(seconds)
        self.stop.set()
        await running

    async def run_until_stopped(self) -> None:
        """Run every agent until `stop` is set."""
        self.stop.clear()
        await asyncio.gather(*(self.agent(t) for t in self.tasks))

    def answered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status]


def trails(guard: Guard, task_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each task's durable audit trail, read from the guard's audit folder."""
    return {t: read_trail(guard.audit_dir(), t) for t in task_ids}


def check_trails(records: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, set[str]]]:
    """Assert every trail verifies; return call_id -> the events recorded for it, per task."""
    events: dict[str, dict[str, set[str]]] = {}
    for task_id, recs in records.items():
        v = verify_chain(recs)
        assert v.verified, (task_id, v)
        by_call: dict[str, set[str]] = defaultdict(set)
        for r in recs:
            if r.get("call_id"):
                by_call[r["call_id"]].add(f"{r['event']}:{r.get('effect') or ''}")
        events[task_id] = by_call
    return events


def elapsed_since(t0: float) -> float:
    return time.monotonic() - t0
