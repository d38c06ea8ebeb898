"""guard.client against a real guard: tasks that end with their block, calls by action name,
guard's errors, step-ups raised or waited for, what is retried and what never is, DPoP, MCP,
and the sync client."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest

from guard.client import (
    Approval,
    ApprovalRequired,
    DpopKey,
    Guard,
    GuardError,
    SyncGuard,
    ToolError,
)
from guard.errors import Denied, Forbidden, TaskInactive, UnknownAction
from tests.support.client import AGENT, OTHER, bearer, echo_policy, files_policy
from tests.support.credentials import audit_of
from tests.support.guard import Guard as GuardProcess
from tests.support.upstream import Upstream

ADMIN, APPROVER = "root@acme.example", "carol@acme.example"


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def guard(guard_factory: Any, upstream: Upstream) -> GuardProcess:
    # a short hold, so that a waiting step-up goes on by polling the approval
    g: GuardProcess = guard_factory(echo_policy(upstream.url), {"approvals": {"max_wait_s": 1}})
    return g


async def task_status(http: aiohttp.ClientSession, g: GuardProcess, task_id: str) -> str:
    async with http.get(f"{g.url}/v1/tasks/{task_id}", headers=bearer(g.token(ADMIN, "guard:admin"))) as r:
        return str((await r.json())["status"])


async def test_calls_by_action_name_and_the_task_ends_with_the_block(
        guard: GuardProcess, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    async with Guard(guard.url, token=guard.token(AGENT)) as client:
        async with client.task(purpose="weekly report", tools=["echo"]) as t:
            read = await t.call("echo", "read", id="note 7")
            written = await t.call("echo", "write", title="hello", tags=["a"])
            assert await task_status(http, guard, t.task_id) == "active"
        assert await task_status(http, guard, t.task_id) == "completed"
    assert read == {"ok": True, "method": "GET", "path": "/items/note%207"}
    assert written["method"] == "POST"
    assert [(s.method, s.path_qs) for s in upstream.requests] == [("GET", "/items/note%207"), ("POST", "/items")]
    assert upstream.requests[1].body == b'{"title": "hello", "tags": ["a"]}'
    assert "Authorization" in upstream.requests[0].headers  # guard's credential, not the agent's token
    assert guard.token(AGENT) not in upstream.requests[0].headers["Authorization"]


async def test_refusals_are_guards_own_errors(guard: GuardProcess, upstream: Upstream) -> None:
    upstream.status = 418
    async with Guard(guard.url, token=guard.token(AGENT)) as client, client.task(purpose="errors") as t:
        with pytest.raises(Denied) as denied:
            await t.call("echo", "delete", id=1)
        assert isinstance(denied.value, Forbidden) and isinstance(denied.value, GuardError)
        assert denied.value.status == 403 and denied.value.code == "denied"
        assert denied.value.extra["rule_id"] == "no-delete" and denied.value.extra["task_id"] == t.task_id
        with pytest.raises(UnknownAction):
            await t.call("echo", "fly")
        with pytest.raises(ToolError) as tool_error:  # the tool's own answer is not guard's refusal
            await t.call("echo", "read", id=1)
        assert tool_error.value.status == 418 and tool_error.value.body["path"] == "/items/1"
        with pytest.raises(ApprovalRequired) as step_up:
            await t.call("echo", "pay", amount=500)
        assert step_up.value.approval_id is not None and step_up.value.approval_id.startswith("apr_")
        assert (await t.approval(step_up.value.approval_id)).status == "pending"
    assert [s.path_qs for s in upstream.requests] == ["/items/1"]


async def test_a_step_up_waits_for_the_webhooks_approver_with_progress(
        guard: GuardProcess, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    seen: list[str] = []
    approver = guard.token(APPROVER, "guard:approver")

    async def progress(approval: Approval, waited: float) -> None:
        seen.append(approval.status)
        if approval.status == "pending" and len(seen) == 2:  # a person decides while the agent waits
            async with http.post(f"{guard.url}/v1/approvals/{approval.approval_id}/decision",
                                 json={"decision": "approve"}, headers=bearer(approver)) as r:
                assert r.status == 200

    async with Guard(guard.url, token=guard.token(AGENT)) as client, \
            client.task(purpose="pay", step_up="wait", poll_s=0.1, progress=progress) as t:
        paid = await t.call("echo", "pay", amount=500)
    assert paid["path"] == "/pay"
    assert seen[:2] == ["pending", "pending"] and seen[-1] == "approved"
    assert [s.path_qs for s in upstream.requests] == ["/pay"]  # forwarded exactly once


async def test_a_denied_step_up_raises_while_waiting(guard: GuardProcess, http: aiohttp.ClientSession) -> None:
    approver = guard.token(APPROVER, "guard:approver")

    async def deny(approval: Approval, waited: float) -> None:
        if approval.status == "pending":
            async with http.post(f"{guard.url}/v1/approvals/{approval.approval_id}/decision",
                                 json={"decision": "deny"}, headers=bearer(approver)) as r:
                assert r.status in (200, 409)

    from guard.client import ApprovalDenied

    async with Guard(guard.url, token=guard.token(AGENT)) as client, \
            client.task(purpose="pay", step_up="wait", poll_s=0.1, progress=deny) as t:
        with pytest.raises(ApprovalDenied):
            await t.call("echo", "pay", amount=700)


async def test_an_exception_ends_the_task_as_the_caller_chose(guard: GuardProcess, http: aiohttp.ClientSession) -> None:
    async with Guard(guard.url, token=guard.token(AGENT)) as client:
        with pytest.raises(RuntimeError):
            async with client.task(purpose="p", on_error="revoke", admin_token=guard.token(ADMIN, "guard:admin")) as t:
                raise RuntimeError("the agent's model gave up")
        assert await task_status(http, guard, t.task_id) == "revoked"
        with pytest.raises(RuntimeError):
            async with client.task(purpose="p") as t2:
                raise RuntimeError("again")
        assert await task_status(http, guard, t2.task_id) == "completed"
        with pytest.raises(RuntimeError):
            async with client.task(purpose="p", on_error="leave") as t3:
                raise RuntimeError("keep it for a look")
        assert await task_status(http, guard, t3.task_id) == "active"
        with pytest.raises(TaskInactive):  # a completed task's token works no more
            await t2.call("echo", "read", id=1)
    with pytest.raises(ValueError, match="admin_token"):
        Guard(guard.url).task(purpose="p", on_error="revoke")


async def test_an_expired_token_is_fetched_again_once(guard: GuardProcess) -> None:
    handed: list[str] = []

    def token() -> str:
        handed.append(guard.token(AGENT, ttl=-3600) if not handed else guard.token(AGENT))
        return handed[-1]

    async with Guard(guard.url, token=token) as client, client.task(purpose="refresh") as t:
        assert (await t.call("echo", "read", id=1))["path"] == "/items/1"
    assert len(handed) == 2


async def test_a_guard_not_yet_listening_is_reached_on_a_later_attempt(guard_factory: Any, upstream: Upstream) -> None:
    g: GuardProcess = guard_factory(echo_policy(upstream.url), start=False, subdir="late")
    starter = threading.Timer(0.5, lambda: g.start(wait=False))
    starter.start()
    try:
        async with Guard(g.url, token=g.token(AGENT), connect_attempts=40) as client, \
                client.task(purpose="late start") as t:
            assert (await t.call("echo", "read", id=2))["path"] == "/items/2"
    finally:
        starter.join()


async def test_a_forwarded_call_is_never_sent_twice(guard: GuardProcess, upstream: Upstream) -> None:
    upstream.delay_s = 3.0
    async with Guard(guard.url, token=guard.token(AGENT)) as admin_side, admin_side.task(purpose="p") as t:
        slow = Guard(guard.url, token=guard.token(AGENT), timeout_s=0.5)
        t.guard = slow
        try:
            with pytest.raises(asyncio.TimeoutError):
                await t.call("echo", "read", id=3)
        finally:
            await slow.close()
            t.guard = admin_side
        await asyncio.sleep(3.0)
    assert [s.path_qs for s in upstream.requests] == ["/items/3"]


async def test_a_dpop_key_binds_the_task(guard: GuardProcess, http: aiohttp.ClientSession) -> None:
    async with Guard(guard.url, token=guard.token(AGENT), dpop_key=DpopKey()) as client, \
            client.task(purpose="bound") as t:
        assert t.scheme == "DPoP" and t.created["binding"] == "dpop"
        assert (await t.call("echo", "read", id=4))["path"] == "/items/4"
    records = await audit_of(http, guard, t.task_id)
    assert {r.get("binding") for r in records if r["event"] == "call_decided"} == {"dpop"}


async def test_only_the_tasks_agent_reads_its_tools(guard: GuardProcess, http: aiohttp.ClientSession) -> None:
    async with Guard(guard.url, token=guard.token(AGENT)) as client, client.task(purpose="p", tools=["echo"]) as t:
        tools = await t.tools()
        assert tools["echo"]["kind"] == "http"
        assert {"name": "read", "method": "GET", "path": "/items/{id}"} in tools["echo"]["actions"]
        async with http.get(f"{guard.url}/v1/tasks/{t.task_id}/tools", headers=bearer(guard.token(OTHER))) as r:
            assert r.status in (401, 403)


async def test_an_mcp_session_through_guard(guard_factory: Any, mcp_server: str) -> None:
    from mcp import MCPError

    g: GuardProcess = guard_factory(files_policy(mcp_server), subdir="mcp")
    async with Guard(g.url, token=g.token(AGENT)) as client, client.task(purpose="files") as t, \
            t.mcp("files") as session:
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "read_file" in names and "delete_file" not in names
        result = await session.call_tool("read_file", {"path": "reports/2026-w01.md"})
        assert not result.is_error
        with pytest.raises(MCPError) as refused:
            await session.call_tool("delete_file", {"path": "reports/2026-w01.md"})
        assert refused.value.data["code"] == "denied"


def test_the_sync_client(guard: GuardProcess, upstream: Upstream) -> None:
    with SyncGuard(guard.url, token=guard.token(AGENT)) as client, client.task(purpose="sync") as t:
        assert t.call("echo", "read", id=5)["path"] == "/items/5"
        with pytest.raises(Denied):
            t.call("echo", "delete", id=5)
    assert [s.path_qs for s in upstream.requests] == ["/items/5"]
