"""Step-up approvals with processes: examples/approver.py as the webhook receiver, a guard
restarted with deliveries pending, a decision at another `guard serve` instance waking the first
through Redis. (The request path of approvals, in process: tests/app/test_approvals.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.approvals import ENV, SECRET, Receiver, World, guard_config, pending_approval, policy
from tests.support.client import until
from tests.support.guard import shared_keys
from tests.support.process import PY, ROOT, Proc, free_port, spawn, wait_port
from tests.support.upstream import Upstream

# ---------------------------------------------------------------------------- helpers


def approver_process(tmp: Path, port: int, auto: str, approver: str = "carol@acme.example") -> Proc:
    proc = spawn([PY, "-m", "examples.approver", "--port", str(port), "--auto", auto, "--approver", approver],
                 tmp, f"approver-{port}.log", {"GUARD_WEBHOOK_SECRET_FINANCE": SECRET, "PYTHONPATH": str(ROOT)})
    wait_port(port, proc=proc.popen)
    return proc


# ---------------------------------------------------------------------------- tests


async def test_deliveries_are_retried_until_the_receiver_is_up(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, store_url: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here yet
    g = guard_factory(policy(upstream.url), guard_config(store_url, f"http://127.0.0.1:{port}/hook"), env=ENV)
    w = World(g, http, upstream, None)
    task = await w.task()
    approval_id = await pending_approval(w, task, 650)
    await until(lambda: w.events(task["task_id"], "webhook_failed"), "a failed attempt")
    approver = approver_process(tmp_path, port, "approve")  # examples/approver.py, started late
    try:
        status, body = await w.call(task, 650, wait=25)
        assert status == 200, (body, approver.log())
    finally:
        approver.stop()
    assert w.forwarded() == 1
    delivered = await w.events(task["task_id"], "webhook_delivered")
    failed = await w.events(task["task_id"], "webhook_failed")
    assert len(delivered) == 1 and delivered[0]["attempt"] == len(failed) + 1
    assert {f["detail"] for f in failed} == {"connection_error"}
    decided = await w.events(task["task_id"], "approval_decided")
    assert [(d["approver"], d["via"]) for d in decided] == [("carol@acme.example", "webhook:finance")]
    assert approval_id in approver.log()


async def test_the_example_approver_can_deny(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = free_port()
    approver = approver_process(tmp_path, port, "deny", approver="dave@acme.example")
    try:
        g = guard_factory(policy(upstream.url), guard_config("memory://", f"http://127.0.0.1:{port}/hook"), env=ENV)
        w = World(g, http, upstream, None)
        task = await w.task()
        status, body = await w.call(task, 999, wait=25)
        assert (status, body["code"]) == (403, "approval_denied"), approver.log()
    finally:
        approver.stop()
    assert w.forwarded() == 0


@pytest.mark.redis
async def test_a_restart_resumes_pending_deliveries(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, redis_server: Any, tmp_path: Path
) -> None:
    port = free_port()
    g = guard_factory(policy(upstream.url), guard_config(redis_server.url, f"http://127.0.0.1:{port}/hook"),
                      env=ENV)
    w = World(g, http, upstream, None)
    task = await w.task()
    approval_id = await pending_approval(w, task, 750)
    await until(lambda: w.events(task["task_id"], "webhook_failed"), "a failed attempt")
    g.stop()
    approver = approver_process(tmp_path, port, "approve")
    try:
        g.start()

        async def approved() -> bool:
            return bool((await w.approval(approval_id))["status"] == "approved")

        await until(approved, "the resumed delivery to be approved", 60)
    finally:
        approver.stop()
    status, _ = await w.call(task, 750)
    assert status == 200 and w.forwarded() == 1
    assert len(await w.events(task["task_id"], "webhook_delivered")) == 1
    assert len(await w.events(task["task_id"], "approval_requested")) == 1


@pytest.mark.redis
async def test_a_decision_at_another_instance_releases_the_hold(
    guard_factory: Any, upstream: Upstream, receiver: Receiver, http: aiohttp.ClientSession, redis_server: Any,
    tmp_path: Path,
) -> None:
    config = {**guard_config(redis_server.url, receiver.url), **shared_keys(tmp_path / "shared")}
    a = guard_factory(policy(upstream.url), config, env=ENV, subdir="a")
    b = guard_factory(policy(upstream.url), config, env=ENV, subdir="b")
    wa, wb = World(a, http, upstream, receiver), World(b, http, upstream, receiver)
    task = await wa.task()
    held, approval_id = await wa.held(task, 444)
    assert (await wb.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    status, body = await asyncio.wait_for(held, 20)
    assert status == 200, body
    assert upstream.requests and wa.forwarded() == 1
    notified = [line for line in a.log().splitlines() if "approval_notified" in line and approval_id in line]
    assert notified, "instance a was not woken through Redis pub/sub"
    assert len(receiver.requests) == 1
