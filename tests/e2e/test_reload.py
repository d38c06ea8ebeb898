"""Policy hot reload on SIGHUP and on file change, against a real guard process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard, write_guard
from tests.support.upstream import Upstream


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def policy_file(guard: Guard) -> Path:
    return guard.dir / "policies" / "policy.yaml"


def deny_reads(upstream_url: str) -> dict[str, Any]:
    """The echo policy with reads taken out of the allow rule and a deny rule for them."""
    p = echo_policy(upstream_url)
    p["rules"][0]["match"]["action"] = ["write"]
    p["rules"].append({"id": "reads-frozen", "effect": "deny", "match": {"tool": "echo", "action": "read"}})
    return p


def log_events(guard: Guard, event: str) -> list[dict[str, Any]]:
    out = []
    for line in guard.log().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == event:
            out.append(rec)
    return out


async def wait_for(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def read_status(http: aiohttp.ClientSession, guard: Guard, token: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(token)) as r:
        return r.status, await r.json()


async def test_file_change_swaps_the_policy_set(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT))
    assert (await read_status(http, guard, task["task_token"]))[0] == 200

    policy_file(guard).write_text(yaml.safe_dump(deny_reads(upstream.url)))

    async def denied() -> bool:
        status, body = await read_status(http, guard, task["task_token"])
        return status == 403 and body["rule_id"] == "reads-frozen"

    await wait_for(denied)
    reloaded = await wait_for(lambda: log_events(guard, "policy_reloaded"))
    assert reloaded[0]["trigger"] == "file_changed"


async def test_sighup_reloads(guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT))
    assert (await read_status(http, guard, task["task_token"]))[0] == 200
    path = policy_file(guard)
    before = path.stat()
    text = path.read_text()
    # the same size and mtime, so only the signal (not the folder watcher) can notice the change
    changed = text.replace("effect: allow", "effect: deny ", 1)
    assert changed != text and len(changed) == len(text)
    path.write_text(changed)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert guard.proc is not None
    os.kill(guard.proc.pid, signal.SIGHUP)

    async def denied() -> bool:
        status, body = await read_status(http, guard, task["task_token"])
        return status == 403 and body["rule_id"] == "read-ok"

    await wait_for(denied)
    await wait_for(lambda: "sighup" in [e["trigger"] for e in log_events(guard, "policy_reloaded")])


async def test_invalid_set_keeps_the_old_one(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT))
    broken = deny_reads(upstream.url)
    broken["rules"][-1]["match"]["tool"] = "no-such-tool"
    policy_file(guard).write_text(yaml.safe_dump(broken, sort_keys=False))

    failures = await wait_for(lambda: log_events(guard, "policy_reload_failed"))
    err = failures[0]
    assert err["level"] == "error"
    assert str(policy_file(guard)) in err["error"] and err["line"] is not None
    assert "no-such-tool" in err["error"]
    assert (await read_status(http, guard, task["task_token"]))[0] == 200  # the old set still rules
    async with http.get(f"{guard.url}/metrics") as r:
        assert 'guard_policy_reloads_total{result="failed"} 1.0' in await r.text()
    # the watcher keeps polling but says it once per change, not once per poll
    await asyncio.sleep(2.5)
    assert len(log_events(guard, "policy_reload_failed")) == 1

    policy_file(guard).write_text(yaml.safe_dump(deny_reads(upstream.url)))  # fixed: now it applies
    await wait_for(lambda: log_events(guard, "policy_reloaded"))
    assert (await read_status(http, guard, task["task_token"]))[0] == 403


async def test_call_in_flight_finishes_under_the_old_set(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT))
    release = threading.Event()  # the tool holds the call until released: it is in flight during the reload

    async def slow(request: web.Request, seen: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)

    upstream.handler = slow
    try:
        in_flight = asyncio.ensure_future(read_status(http, guard, task["task_token"]))
        await wait_for(lambda: len(upstream.requests) == 1)

        policy_file(guard).write_text(yaml.safe_dump(deny_reads(upstream.url)))
        await wait_for(lambda: log_events(guard, "policy_reloaded"))
        async with aiohttp.ClientSession() as other:  # a new call now meets the new set
            status, body = await read_status(other, guard, task["task_token"])
            assert status == 403 and body["rule_id"] == "reads-frozen"
        assert not in_flight.done()
    finally:
        release.set()
    status, _ = await in_flight
    assert status == 200
    trail = guard.cli("audit", "show", task["task_id"], "--json")
    records = [json.loads(line) for line in trail.stdout.splitlines()]
    first = [r for r in records if r.get("event") == "call_forwarded"]
    assert len(first) == 1 and first[0]["status"] == 200
    decided = [r for r in records if r.get("event") == "call_decided"]
    assert [(r["effect"], r.get("rule_id")) for r in decided] == [("allow", "read-ok"), ("deny", "reads-frozen")]


def test_policy_check_and_test_name_file_line_reason(tmp_path: Path) -> None:
    """What an operator runs before reloading: both exit non-zero and say where and why."""
    broken = echo_policy("http://127.0.0.1:9")
    broken["rules"][1]["match"]["tool"] = "no-such-tool"
    guard = write_guard(tmp_path / "g", broken)
    check = guard.cli("policy", "check")
    assert check.returncode == 1
    assert re.search(re.escape(str(guard.dir / "policies" / "policy.yaml")) + r":\d+: rules\[1\]", check.stderr)
    assert "unknown tool 'no-such-tool'" in check.stderr

    good = write_guard(tmp_path / "h", echo_policy("http://127.0.0.1:9"))
    cases = good.dir / "policies" / "tests"
    cases.mkdir()
    (cases / "cases.yaml").write_text(yaml.safe_dump([
        {"name": "deletes are allowed", "call": {"agent": AGENT, "tool": "echo", "action": "delete",
                                                 "args": {"id": "1"}}, "expect": "allow"},
        {"name": "reads are allowed", "call": {"agent": AGENT, "tool": "echo", "action": "read",
                                               "args": {"id": "1"}}, "expect": "allow"},
    ]))
    test = good.cli("policy", "test")
    assert test.returncode == 1
    lines = test.stdout.splitlines()
    assert lines[0].startswith("FAIL ") and "cases.yaml:1 deletes are allowed" in lines[0]
    assert "got deny by rule 'no-delete'" in lines[0]
    assert lines[1].startswith("ok ") and "reads are allowed" in lines[1]
