"""The example tools (examples/notes.py, research.py, payments.py) behind a real guard, as processes on ports of
their own: guard.tool checks each credential, and research's chained call saves a note."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task
from tests.support.guard import Guard
from tests.support.process import PY, ROOT, Proc, free_port, spawn, wait_port


@pytest.fixture
def tools() -> Iterator[dict[str, int]]:
    yield {"notes": free_port(), "research": free_port(), "payments": free_port()}


def _start(module: str, port: int, guard_url: str, logs: Path) -> Proc:
    proc = spawn([PY, "-m", module, "--port", str(port), "--guard-url", guard_url], logs,
                 f"{module.rsplit('.', 1)[-1]}.log", {"PYTHONPATH": str(ROOT)})
    wait_port(port, proc=proc.popen)
    return proc


async def test_research_saves_its_summary_as_a_note_through_guard(guard_factory: Any, tools: dict[str, int],
                                                                   tmp_path: Path) -> None:
    policy = {
        "tools": {
            "notes": {"kind": "http", "upstream": f"http://127.0.0.1:{tools['notes']}",
                      "actions": {"list": {"method": "GET", "path": "/notes"},
                                  "write": {"method": "POST", "path": "/notes"}}},
            "research": {"kind": "http", "upstream": f"http://127.0.0.1:{tools['research']}",
                         "actions": {"run": {"method": "POST", "path": "/research"}}},
            "payments": {"kind": "http", "upstream": f"http://127.0.0.1:{tools['payments']}",
                         "actions": {"pay": {"method": "POST", "path": "/payments"}}},
        },
        "rules": [
            {"id": "uses-research", "effect": "allow", "match": {"agent": [AGENT], "tool": "research"}},
            {"id": "pays", "effect": "allow",
             "match": {"agent": [AGENT], "tool": "payments", "chain": {"depth_lte": 0}}},
            {"id": "lists-notes", "effect": "allow",
             "match": {"agent": [AGENT], "tool": "notes", "action": ["list"], "chain": {"depth_lte": 0}}},
            {"id": "research-saves-notes", "effect": "allow",
             "match": {"agent": [AGENT], "tool": "notes", "action": ["write"],
                       "chain": {"caller": "research", "depth_lte": 1}}},
        ],
    }
    g: Guard = guard_factory(policy)
    procs = [_start(f"examples.{name}", port, g.url, tmp_path) for name, port in tools.items()]
    try:
        async with aiohttp.ClientSession() as http:
            task = await create_task(http, g.url, g.token(AGENT))
            auth = bearer(task["task_token"])
            async with http.post(f"{g.url}/tools/research/research", json={"topic": "agent sandboxes"},
                                 headers=auth) as r:
                assert r.status == 200, await r.text()
                (saved,) = (await r.json())["chained"]
            assert saved["status"] == 201 and saved["answer"]["author"] == AGENT
            assert saved["answer"]["task_id"] == task["task_id"]
            async with http.get(f"{g.url}/tools/notes/notes", headers=auth) as r:
                notes = (await r.json())["notes"]
            assert [n["title"] for n in notes] == ["Research: agent sandboxes"]
            async with http.get(f"http://127.0.0.1:{tools['notes']}/notes") as r:  # around guard: refused
                assert r.status == 401
            async with http.post(f"{g.url}/tools/payments/payments", headers=auth,
                                 json={"amount": 12.5, "currency": "EUR", "to": "acme"}) as r:
                assert r.status == 201, await r.text()
                paid = await r.json()
            assert paid["agent"] == AGENT and paid["task_id"] == task["task_id"] and paid["status"] == "settled"
    finally:
        for p in procs:
            p.stop()
