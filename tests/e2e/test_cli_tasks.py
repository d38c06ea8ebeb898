"""`guard tasks list|show|revoke` and `guard approvals list|decide` against a running guard."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.upstream import Upstream

ADMIN, AUDITOR, APPROVER = "root@acme.example", "audit@acme.example", "carol@acme.example"


@pytest.fixture
def guard(guard_factory: Any, upstream: Upstream) -> Guard:
    g: Guard = guard_factory(echo_policy(upstream.url))
    return g


async def test_an_approver_lists_and_approves_a_step_up_from_the_command_line(
        http: aiohttp.ClientSession, guard: Guard, upstream: Upstream) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    pay: dict[str, Any] = {"url": f"{guard.url}/tools/echo/pay", "json": {"amount": 500},
                           "headers": bearer(task["task_token"])}
    async with http.post(**pay) as r:
        assert r.status == 403
        approval_id = (await r.json())["approval_id"]
    approver = guard.token(APPROVER, "guard:approver")

    listed = guard.cli("approvals", "list", "--token", approver)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(approval_id)]
    assert "pending" in row and "echo.pay" in row and "big-pay" in row and task["task_id"] in row

    decided = guard.cli("approvals", "decide", approval_id, "approve", "--reason", "invoice 42", "--token", approver)
    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.strip() == f"approve: {approval_id} is now approved"
    async with http.post(**pay) as r:
        assert r.status == 200  # the approved call goes through, once
    assert [s.path_qs for s in upstream.requests] == ["/pay"]

    again = guard.cli("approvals", "decide", approval_id, "deny", "--token", approver)
    assert again.returncode == 1 and "409" in again.stderr  # no longer pending: said, nothing changes
    none_left = guard.cli("approvals", "list", "--json", "--token", approver)
    assert json.loads(none_left.stdout) == {"approvals": []}


async def test_an_admin_lists_shows_and_revokes_a_task(http: aiohttp.ClientSession, guard: Guard) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT), purpose="quarterly numbers")
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    admin, auditor = guard.token(ADMIN, "guard:admin"), guard.token(AUDITOR, "guard:auditor")

    listed = guard.cli("tasks", "list", "--token", auditor)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith(task["task_id"])]
    assert AGENT in row and "active" in row and "quarterly numbers" in row

    shown = guard.cli("tasks", "show", task["task_id"], "--json", "--token", auditor)
    view = json.loads(shown.stdout)
    assert view["status"] == "active" and view["calls"] == 1

    refused = guard.cli("tasks", "revoke", task["task_id"], "--reason", "done", "--token", auditor)
    assert refused.returncode == 1 and "403" in refused.stderr  # an auditor cannot end a task
    revoked = guard.cli("tasks", "revoke", task["task_id"], "--reason", "left the company", "--token", admin)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked: {task['task_id']} (revoked)"
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 403 and (await r.json())["code"] == "task_inactive"
    active = guard.cli("tasks", "list", "--status", "active", "--token", auditor)
    assert task["task_id"] not in active.stdout


def test_without_a_token_the_commands_say_what_is_missing(guard: Guard) -> None:
    done = guard.cli("tasks", "list")
    assert done.returncode == 1 and "a token is needed" in done.stderr
