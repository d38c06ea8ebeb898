"""`guard audit show|verify|export` on the audit folder and against a running guard."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.upstream import Upstream

AUDITOR = "auditor@acme.example"


@pytest.fixture
def guard(guard_factory: Any, upstream: Upstream) -> Guard:
    g: Guard = guard_factory(echo_policy(upstream.url))
    return g


async def busy_task(http: aiohttp.ClientSession, guard: Guard, purpose: str = "weekly research report") -> str:
    """A task with an allowed call (forwarded) and a denied one."""
    task = await create_task(http, guard.url, guard.token(AGENT), purpose=purpose)
    auth = bearer(task["task_token"])
    async with http.get(f"{guard.url}/tools/echo/items/7", headers=auth) as r:
        assert r.status == 200
    async with http.delete(f"{guard.url}/tools/echo/items/7", headers=auth) as r:
        assert r.status == 403
    return str(task["task_id"])


def trail_file(guard: Guard, task_id: str) -> Path:
    return guard.audit_dir() / f"{task_id}.jsonl"


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_show_prints_the_timeline(guard: Guard, http: aiohttp.ClientSession) -> None:
    task_id = await busy_task(http, guard)
    out = guard.cli("audit", "show", task_id)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"task {task_id}: ")
    allowed = next(line for line in lines if "call_decided" in line and "echo.read" in line)
    assert "allow" in allowed and "rule=read-ok" in allowed
    forwarded = next(line for line in lines if "call_forwarded" in line)
    assert "echo.read" in forwarded and "status=200" in forwarded and forwarded.rstrip().endswith("ms")
    denied = next(line for line in lines if "call_decided" in line and "echo.delete" in line)
    assert "deny" in denied and "rule=no-delete" in denied and "status=403" in denied
    day = datetime.fromtimestamp(lines_of(trail_file(guard, task_id))[0]["ts"], UTC).strftime("%Y-%m-%d")
    assert lines[0].endswith(f"times UTC from {day}")
    assert lines[-1] == "chain: verified"


async def test_verify_ok_and_tampered(guard: Guard, http: aiohttp.ClientSession) -> None:
    task_id = await busy_task(http, guard)
    ok = guard.cli("audit", "verify", task_id)
    assert ok.returncode == 0 and ok.stdout.startswith("verified:"), ok.stdout + ok.stderr

    path = trail_file(guard, task_id)
    records = lines_of(path)
    victim = next(r for r in records if r.get("event") == "call_decided" and r.get("effect") == "deny")
    victim["effect"] = "allow"  # someone hides the denial
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))

    bad = guard.cli("audit", "verify", task_id)
    assert bad.returncode != 0
    assert f"first bad record #{victim['seq']} (call_decided, call {victim['call_id']})" in bad.stdout
    assert "hash does not match" in bad.stdout
    show = guard.cli("audit", "show", task_id)
    assert f"BROKEN: first bad record #{victim['seq']}" in show.stdout.splitlines()[-1]


async def test_verify_names_a_removed_record(guard: Guard, http: aiohttp.ClientSession) -> None:
    task_id = await busy_task(http, guard)
    path = trail_file(guard, task_id)
    records = lines_of(path)
    del records[1]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    bad = guard.cli("audit", "verify", task_id)
    assert bad.returncode != 0 and "first bad record #3" in bad.stdout, bad.stdout


async def test_export_since(guard: Guard, http: aiohttp.ClientSession) -> None:
    first = await busy_task(http, guard, "first")
    second = await busy_task(http, guard, "second")
    last_of_first = lines_of(trail_file(guard, first))[-1]["ts"]
    first_of_second = lines_of(trail_file(guard, second))[0]["ts"]
    assert first_of_second > last_of_first
    cut = (last_of_first + first_of_second) / 2

    for since in (repr(cut), datetime.fromtimestamp(cut, UTC).isoformat()):
        out = guard.cli("audit", "export", "--since", since, "--format", "ndjson")
        assert out.returncode == 0, out.stderr
        exported = [json.loads(line) for line in out.stdout.splitlines()]
        assert {r["task_id"] for r in exported} == {second}
        assert exported == lines_of(trail_file(guard, second))

    everything = guard.cli("audit", "export")
    assert {json.loads(line)["task_id"] for line in everything.stdout.splitlines()} == {first, second}
    wrong = guard.cli("audit", "export", "--since", "last tuesday")
    assert wrong.returncode == 1 and "since" in wrong.stderr


async def test_url_mode(guard: Guard, http: aiohttp.ClientSession) -> None:
    first = await busy_task(http, guard, "first")
    second = await busy_task(http, guard, "second")
    token = guard.token(AUDITOR, "guard:auditor")
    guard.env["GUARD_TOKEN"] = token

    show = guard.cli("audit", "show", second, "--url", guard.url)
    assert show.returncode == 0, show.stderr
    assert "echo.read" in show.stdout and show.stdout.splitlines()[-1] == "chain: verified"
    verify = guard.cli("audit", "verify", first, "--url", guard.url)
    assert verify.returncode == 0 and verify.stdout.startswith("verified:")

    cut = lines_of(trail_file(guard, second))[0]["ts"]
    export = guard.cli("audit", "export", "--url", guard.url, "--since", repr(cut))
    assert export.returncode == 0, export.stderr
    exported = [json.loads(line) for line in export.stdout.splitlines()]
    assert {r["task_id"] for r in exported} == {second}
    assert [r["seq"] for r in exported] == [r["seq"] for r in lines_of(trail_file(guard, second))]

    guard.env["GUARD_TOKEN"] = guard.token("nobody@acme.example")
    refused = guard.cli("audit", "show", second, "--url", guard.url)
    assert refused.returncode == 1 and "403" in refused.stderr and "forbidden" in refused.stderr
    missing = guard.cli("audit", "verify", "task_nope", "--url", guard.url, "--token", token)
    assert missing.returncode == 1 and "404" in missing.stderr
