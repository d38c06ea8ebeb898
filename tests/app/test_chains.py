"""Chained calls in process: guard's app and a tool (tests/support/chain_tool.py) on real sockets
in this loop, the tool calling other tools through the guard with the Txn-Token it received,
over every store backend."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.chain_tool import make_app
from tests.support.client import AGENT, bearer, create_task
from tests.support.process import free_port

ADMIN = "admin@acme.example"


def chain_policy(tool_url: str) -> dict[str, Any]:
    run = {"run": {"method": "POST", "path": "/run"}}
    tools: dict[str, Any] = {name: {"kind": "http", "upstream": tool_url, "actions": run} for name in "abcd"}
    tools["vault"] = {"kind": "http", "upstream": tool_url, "actions": {"read": {"method": "POST", "path": "/read"}}}
    tools["email"] = {"kind": "http", "upstream": tool_url, "actions": {"send": {"method": "POST", "path": "/send"}}}

    def allow(rule_id: str, tool: str, **chain: Any) -> dict[str, Any]:
        return {"id": rule_id, "effect": "allow", "match": {"agent": [AGENT], "tool": tool, "chain": chain}}

    return {
        "tools": tools,
        "rules": [
            allow("direct-a", "a", depth_lte=0),
            allow("a-calls-b", "b", caller="a"),
            allow("b-calls-a", "a", caller="b"),  # a loop: refused, since it does not say loop: true
            allow("b-calls-c", "c", caller="b"),
            allow("c-calls-d", "d", caller="c"),
            allow("c-recurses", "c", caller="c", loop=True),
            allow("a-reads-vault", "vault", caller="a"),
            allow("d-reads-vault", "vault", caller="d"),
            allow("a-sends-email", "email", caller="a"),
            allow("email-direct", "email", depth_lte=0),
            {"id": "mass-email-needs-approval", "effect": "step_up", "approvers": "finance",
             "match": {"tool": "email", "args": [{"path": "$.to", "eq": "all@acme.example"}]}},
            {"id": "no-email-after-vault", "effect": "deny",
             "match": {"tool": "email", "history": {"called": ["vault.read"]}}},
        ],
    }


@dataclass
class Env:
    guard: AppGuard
    tool_url: str
    http: aiohttp.ClientSession

    async def task(self, **body: Any) -> dict[str, Any]:
        return await create_task(self.http, self.guard.url, self.guard.token(AGENT), **body)

    async def call(self, task: dict[str, Any], tool: str, steps: list[dict[str, Any]] | None = None,
                   path: str = "/run", **args: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(f"{self.guard.url}/tools/{tool}{path}", json={"steps": steps or [], **args},
                                  headers=bearer(task["task_token"])) as r:
            return r.status, await r.json()


def step(tool: str, *then: dict[str, Any], path: str = "/run", wait_for: str | None = None,
         **args: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"tool": tool, "path": path, "body": {"steps": list(then), **args}}
    if wait_for:
        s["wait_for"] = wait_for
    return s


@pytest.fixture
async def env(app_factory: AppFactory, store_url: str) -> AsyncIterator[Env]:
    port = free_port()
    tool_url = f"http://127.0.0.1:{port}"
    guard = await app_factory(chain_policy(tool_url),
                              config={"store": {"url": store_url}, "limits": {"max_chain_depth": 3}})
    tool = web.AppRunner(make_app(guard.url), access_log=None)
    await tool.setup()
    await web.TCPSite(tool, "127.0.0.1", port).start()
    async with aiohttp.ClientSession() as http:
        yield Env(guard, tool_url, http)
    await tool.cleanup()


async def test_allowed_chain_extends_the_chain_in_credential_and_txn_token(env: Env) -> None:
    task = await env.task()
    status, a = await env.call(task, "a", [step("b", step("c"))])
    assert status == 200, a
    assert a["credential"]["active"] is True and a["credential"]["chain"] == []
    assert a["txn"]["tctx"]["chain"] == ["a"] and a["txn"]["txn"] == task["task_id"]
    b = a["results"][0]
    assert b["status"] == 200, b
    b_seen = b["answer"]
    assert b_seen["credential"]["chain"] == ["a"] and b_seen["credential"]["scope"] == "b.run"
    assert b_seen["credential"]["sub"] == AGENT and b_seen["credential"]["txn"] == task["task_id"]
    assert b_seen["txn"]["tctx"]["chain"] == ["a", "b"] and b_seen["txn"]["req_wl"] == "tool:b"
    c_seen = b_seen["results"][0]["answer"]
    assert c_seen["credential"]["chain"] == ["a", "b"]
    assert c_seen["txn"]["tctx"]["chain"] == ["a", "b", "c"]


async def test_caller_based_rule(env: Env) -> None:
    task = await env.task()
    status, a = await env.call(task, "a", [step("vault", path="/read"), step("b", step("vault", path="/read"))])
    assert status == 200
    assert a["results"][0]["status"] == 200  # vault called by a: rule a-reads-vault
    from_b = a["results"][1]["answer"]["results"][0]
    assert (from_b["status"], from_b["code"], from_b["rule_id"]) == (403, "denied", None)  # no rule for caller b
    status, direct = await env.call(task, "vault", path="/read")
    assert (status, direct["code"]) == (403, "denied")  # and not directly either


async def test_depth_limit(env: Env) -> None:
    task = await env.task()
    status, a = await env.call(task, "a", [step("b", step("c", step("d", step("vault", path="/read"))))])
    assert status == 200
    c = a["results"][0]["answer"]["results"][0]
    d = c["answer"]["results"][0]
    assert d["status"] == 200, d  # depth 3 = max_chain_depth: allowed
    too_deep = d["answer"]["results"][0]
    assert (too_deep["status"], too_deep["code"]) == (403, "chain_too_deep")


async def test_loop_refused_unless_a_rule_allows_it(env: Env) -> None:
    task = await env.task()
    status, a = await env.call(task, "a", [step("b", step("a"), step("c", step("c")))])
    assert status == 200
    b = a["results"][0]["answer"]
    back_to_a, c = b["results"]
    assert (back_to_a["status"], back_to_a["code"]) == (403, "denied")
    assert "loop" in back_to_a["answer"]["detail"]
    assert c["answer"]["results"][0]["status"] == 200  # c -> c: rule c-recurses says loop: true


async def test_depth_limit_comes_before_the_loop_rule(env: Env) -> None:
    """max_chain_depth is a hard limit checked before any rule: a looping chained call deeper than
    it answers chain_too_deep, whether a rule would allow the loop (c-recurses) or not (b-calls-a)."""
    task = await env.task()
    allowed_loop = step("b", step("c", step("c", step("c"))))  # the third c is at depth 4
    refused_loop = step("b", step("c", step("d", step("b"))))  # b again, at depth 4
    status, a = await env.call(task, "a", [allowed_loop, refused_loop])
    assert status == 200
    c2 = a["results"][0]["answer"]["results"][0]["answer"]["results"][0]
    assert c2["status"] == 200, c2  # c -> c at depth 3: the loop rule allows it
    deep = [c2["answer"]["results"][0],
            a["results"][1]["answer"]["results"][0]["answer"]["results"][0]["answer"]["results"][0]]
    for refused in deep:
        assert (refused["status"], refused["code"], refused["rule_id"]) == (403, "chain_too_deep", None), refused
        assert refused["answer"]["detail"] == "chain depth 4 exceeds 3"
    auditor = env.guard.token("auditor@acme.example", "guard:auditor")
    async with env.http.get(f"{env.guard.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(auditor)) as r:
        records = (await r.json())["records"]
    too_deep = [(r["tool"], r["chain"]) for r in records if r.get("detail") == "chain_too_deep"]
    assert sorted(too_deep) == [("b", ["a", "b", "c", "d"]), ("c", ["a", "b", "c", "c"])]


async def test_txn_token_replayed_after_its_call_finished(env: Env) -> None:
    task = await env.task()
    status, a = await env.call(task, "a")
    assert status == 200
    async with env.http.post(f"{env.guard.url}/tools/b/run", json={},
                             headers={"Txn-Token": a["txn_token"]}) as r:
        body = await r.json()
        assert (r.status, body["code"]) == (403, "txn_inactive")
    status, again = await env.call(task, "a")  # the task itself is still fine
    assert status == 200, again


async def _wait_until_waiting(env: Env, gate: str) -> None:
    for _ in range(400):
        async with env.http.get(f"{env.tool_url}/_waiting/{gate}") as r:
            if (await r.json())["waiting"]:
                return
        await asyncio.sleep(0.025)
    raise AssertionError("the tool never reached the gate")


@pytest.mark.parametrize("ending", ["revoke", "complete"])
async def test_task_ended_while_the_parent_call_is_in_flight(env: Env, ending: str) -> None:
    task = await env.task()
    parent = asyncio.create_task(env.call(task, "a", [step("b", wait_for="g")]))
    await _wait_until_waiting(env, "g")
    if ending == "revoke":
        url, token, body = f"/v1/tasks/{task['task_id']}/revoke", env.guard.token(ADMIN, "guard:admin"), {"reason": "x"}
    else:
        url, token, body = f"/v1/tasks/{task['task_id']}/complete", task["task_token"], {}
    async with env.http.post(env.guard.url + url, json=body, headers=bearer(token)) as r:
        assert r.status == 200, await r.text()
    async with env.http.post(f"{env.tool_url}/_gate/g") as r:
        assert r.status == 200
    status, a = await parent
    assert status == 200  # the parent call was already forwarded: its answer still arrives
    assert (a["results"][0]["status"], a["results"][0]["code"]) == (403, "task_inactive")
    status, after = await env.call(task, "a")
    assert (status, after["code"]) == (403, "task_inactive")


async def test_flow_rule_sees_chained_calls(env: Env) -> None:
    clean = await env.task()
    status, a = await env.call(clean, "a", [step("email", path="/send")])
    assert a["results"][0]["status"] == 200  # no vault.read before: allowed
    task = await env.task()
    status, a = await env.call(task, "a", [step("vault", path="/read"), step("email", path="/send")])
    assert status == 200
    read, send = a["results"]
    assert read["status"] == 200
    assert (send["status"], send["code"], send["rule_id"]) == (403, "denied", "no-email-after-vault")


async def test_an_approval_never_carries_over_to_a_chained_call(env: Env) -> None:
    task = await env.task()
    status, problem = await env.call(task, "email", path="/send", to="all@acme.example")
    assert (status, problem["code"]) == (403, "approval_required")
    first = problem["approval_id"]
    approver = env.guard.token("carol@acme.example", "guard:approver")
    async with env.http.post(f"{env.guard.url}/v1/approvals/{first}/decision", json={"decision": "approve"},
                             headers=bearer(approver)) as r:
        assert r.status == 200, await r.text()
    status, _ = await env.call(task, "email", path="/send", to="all@acme.example")
    assert status == 200  # the approved call, once
    # the identical call (same tool, action and arguments), now made by a tool in a chain
    status, a = await env.call(task, "a", [step("email", path="/send", to="all@acme.example")])
    assert status == 200
    chained = a["results"][0]
    assert (chained["status"], chained["code"]) == (403, "approval_required")
    assert chained["answer"]["approval_id"] != first


async def test_scope_only_narrows_along_a_chain(env: Env) -> None:
    only_a = await env.task(tools=["a"])
    status, a = await env.call(only_a, "a", [step("b")])
    assert status == 200
    assert (a["results"][0]["status"], a["results"][0]["code"]) == (403, "denied")
    budget = await env.task(max_calls=1)
    status, a = await env.call(budget, "a", [step("b")])
    assert status == 200
    assert (a["results"][0]["status"], a["results"][0]["code"]) == (429, "budget_exhausted")


async def test_audit_shows_the_chain_as_a_tree(env: Env) -> None:
    task = await env.task()
    status, _ = await env.call(task, "a", [step("b", step("c"))])
    assert status == 200
    auditor = env.guard.token("auditor@acme.example", "guard:auditor")
    async with env.http.get(f"{env.guard.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(auditor)) as r:
        records = (await r.json())["records"]
    decided = {r["tool"]: r for r in records if r["event"] == "call_decided"}
    assert "parent_call_id" not in decided["a"]
    assert decided["b"]["parent_call_id"] == decided["a"]["call_id"]
    assert decided["c"]["parent_call_id"] == decided["b"]["call_id"]
    assert decided["c"]["chain"] == ["a", "b"]

    out = (await env.guard.cli("audit", "show", task["task_id"], check=True)).stdout.splitlines()
    calls = [m.group(1) for line in out if (m := re.search(r"#\d+  ( *(?:└ )?call_\w+  \w+\.\w+)", line))]
    assert calls == [
        "call_decided  a.run",
        "  └ call_decided  b.run",
        "    └ call_decided  c.run",
        "    └ call_forwarded  c.run",
        "  └ call_forwarded  b.run",
        "call_forwarded  a.run",
    ]
