"""The pipeline as one table, on the memory store.

A row is a situation a call meets (its task, its token and what proves it is held, the policy, the
tool) and the call it then makes. Its columns are what can be observed from outside: the status and
problem code (and rule) the agent gets, whether the tool was reached (and then that it got guard's
credential and a Txn-Token, never the agent's token), and the records the call added to its task's
audit trail, in order. A row runs as an http tool call and, where the contract gives the call the
same meaning, as an MCP tools/call: only the rendering differs (a refused tools/call answers HTTP
200 with the problem details in a JSON-RPC error; a 401 and a 404 stay plain problems).

Each feature's own module tests it in depth (test_request_path, test_chains, test_dpop,
test_approvals, test_content, ...). A failing state store is not a row: the memory store cannot be
made to fail without a mock (a real Redis is stopped in tests/e2e/test_redis_faults.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import jwt
import pytest
from aiohttp import web

from guard.identity.tokens import TASK_TYP, GuardKeys, load_or_create_key
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard, log_events
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import audit_of
from tests.support.dpop import DpopKey
from tests.support.process import free_port
from tests.support.upstream import Seen, Upstream

Kind = Literal["http", "mcp"]
KINDS: tuple[Kind, ...] = ("http", "mcp")
GITHUB_TOKEN = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5"  # the format of a GitHub token, not a real one
APPROVER = "carol@acme.example"

# ------------------------------------------------------------------------------ the policy

TOOLS: dict[Kind, dict[str, str]] = {  # a call's `to` -> the tool of each kind
    "http": {"tool": "echo", "down": "echo_down", "slow": "echo_slow", "unknown": "nope"},
    "mcp": {"tool": "files", "down": "files_down", "slow": "files_slow", "unknown": "nope"},
}
ROUTES = {  # an action of the http tools: method, path template (the other arguments go in the body)
    "read": ("GET", "/items/{id}"),
    "write": ("POST", "/items"),
    "delete": ("DELETE", "/items/{id}"),
    "pay": ("POST", "/pay"),
    "limited": ("GET", "/limited"),
    "unruled": ("GET", "/unruled"),
    "patch": ("PATCH", "/items/{id}"),  # no action of the tool
}
SLOW_TIMEOUT_S = 0.3  # the slow tools' timeout_s; their upstream answers after a second


def table_policy(upstream: str, nowhere: str) -> dict[str, Any]:
    actions = {name: {"method": m, "path": p} for name, (m, p) in ROUTES.items() if name != "patch"}
    tools: dict[str, Any] = {
        "echo": {"kind": "http", "upstream": upstream, "actions": actions},
        "echo_down": {"kind": "http", "upstream": nowhere, "actions": actions},
        "echo_slow": {"kind": "http", "upstream": upstream, "actions": actions, "timeout_s": SLOW_TIMEOUT_S},
        "files": {"kind": "mcp", "upstream": f"{upstream}/mcp"},
        "files_down": {"kind": "mcp", "upstream": f"{nowhere}/mcp"},
        "files_slow": {"kind": "mcp", "upstream": f"{upstream}/mcp", "timeout_s": SLOW_TIMEOUT_S},
        "parent": {"kind": "http", "upstream": upstream, "actions": {"hold": {"method": "GET", "path": "/hold"}}},
    }
    every = [name for name in tools if name != "parent"]
    return {
        "tools": tools,
        "rules": [
            {"id": "work", "effect": "allow", "match": {"tool": every, "action": ["read", "write", "delete"]}},
            {"id": "no-delete", "effect": "deny", "match": {"tool": every, "action": "delete"}},
            {"id": "no-chained-writes", "effect": "deny",
             "match": {"tool": every, "action": "write", "chain": {"caller": "parent"}}},
            {"id": "no-secrets-out", "effect": "deny", "match": {"content": {"args": ["secret"]}}},
            {"id": "big-pay", "effect": "step_up", "approvers": "api",  # no such webhook: approvers use the API,
                                                                        # and the trail says so at once
             "match": {"tool": every, "action": "pay", "args": [{"path": "$.amount", "gt": 100}]}},
            {"id": "once-a-minute", "effect": "allow", "match": {"tool": every, "action": "limited"},
             "rate": {"calls": 1, "per_s": 60}},
            {"id": "hold", "effect": "allow", "match": {"tool": "parent"}},
        ],
    }


# ------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Call:
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    to: str = "tool"  # a key of TOOLS: the tool, the one nothing listens for, the slow one, an unknown one


@dataclass
class Agent:
    """What a situation leaves the call: the task whose trail is read, and the headers the
    request presents (made for its method and URL, as a DPoP proof is)."""

    task: dict[str, Any]
    headers: Callable[[str, str], dict[str, str]]


@dataclass(frozen=True)
class Answer:
    status: int  # the problem's status (a JSON-RPC error's `data.status`), or the tool's answer's
    code: str | None  # the problem's code; None: the tool's answer
    rule_id: str | None


@dataclass
class Table:
    guard: AppGuard
    upstream: Upstream
    http: aiohttp.ClientSession
    release: threading.Event  # lets the parent calls the tool holds finish
    parents: list[asyncio.Task[None]] = field(default_factory=list)

    async def task(self, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        if headers is None:
            return await create_task(self.http, self.guard.url, self.guard.token(AGENT), **body)
        async with self.http.post(f"{self.guard.url}/v1/tasks", json={"purpose": "weekly research report", **body},
                                  headers={**bearer(self.guard.token(AGENT)), **headers}) as r:
            created: dict[str, Any] = await r.json()
            assert r.status == 201, created
            return created

    def target(self, kind: Kind, call: Call) -> tuple[str, str, dict[str, Any] | None]:
        """(method, URL, JSON body) of the request that makes `call`."""
        tool = TOOLS[kind][call.to]
        if kind == "mcp":
            params = {"name": call.action, "arguments": call.args}
            return "POST", f"{self.guard.url}/mcp/{tool}", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                            "params": params}
        method, template = ROUTES[call.action]
        path = template.format(**call.args)
        body = {k: v for k, v in call.args.items() if "{" + k + "}" not in template}
        return method, f"{self.guard.url}/tools/{tool}{path}", body or None

    async def send(self, kind: Kind, call: Call, agent: Agent) -> Answer:
        """Make the call; what the agent sees of its answer, checked for its rendering."""
        method, url, body = self.target(kind, call)
        headers = {"Accept": "application/json, text/event-stream", **agent.headers(method, url)}
        async with self.http.request(method, url, json=body, headers=headers) as r:
            answer = await r.json(content_type=None)
            is_problem = r.headers.get("Content-Type", "").startswith("application/problem+json")
            if kind == "mcp" and r.status == 200:
                assert r.headers["Content-Type"].startswith("application/json"), r.headers
                if "result" in answer:
                    return Answer(200, None, None)
                problem = answer["error"]["data"]  # a refused tools/call: JSON-RPC, the problem in data
                # -32001 for a refusal (the contract); a failure on guard's or the tool's side is -32603
                assert answer["id"] == 1 and answer["error"]["code"] == (-32001 if problem["status"] < 500 else -32603)
            elif r.status >= 400:
                assert is_problem, (r.status, r.headers)
                problem = answer
                assert problem["status"] == r.status
            else:
                assert not is_problem and answer["ok"] is True
                return Answer(r.status, None, None)
        assert problem["title"] and problem["detail"], problem
        return Answer(problem["status"], problem["code"], problem.get("rule_id"))

    async def trail(self, agent: Agent) -> list[dict[str, Any]]:
        """The task's audit trail (verified)."""
        return await audit_of(self.http, self.guard, agent.task["task_id"])


def line(record: dict[str, Any]) -> str:
    """An audit record as the table writes it: event, effect, rule, reason, status."""
    return " ".join(str(record[k]) for k in ("event", "effect", "rule_id", "detail", "status")
                    if isinstance(record.get(k), str | int))


@pytest.fixture
async def table(app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> AsyncIterator[Table]:
    release = threading.Event()

    async def answer(request: web.Request, seen: Seen) -> web.StreamResponse | None:
        if seen.path_qs == "/hold":  # a parent call, in flight until the test ends
            await asyncio.to_thread(release.wait, 30)
        if b"slow" in seen.body or "slow" in seen.path_qs:
            await asyncio.sleep(1)
        if seen.path_qs == "/mcp":
            return web.json_response({"jsonrpc": "2.0", "id": json.loads(seen.body)["id"],
                                      "result": {"content": [{"type": "text", "text": "ok"}]}})
        return None

    upstream.handler = answer
    guard = await app_factory(table_policy(upstream.url, f"http://127.0.0.1:{free_port()}"),
                              config={"inspect": {"detectors": ["secrets"]}})
    t = Table(guard, upstream, http, release)
    yield t
    release.set()
    await asyncio.gather(*t.parents)


# ------------------------------------------------------------------------------ situations

Situation = Callable[[Table, Kind, Call], Awaitable[Agent]]


def carrying(task: dict[str, Any], token: str | None = None) -> Agent:
    """The task's calls with `token` (its task token by default) as the bearer token."""
    headers = bearer(token or task["task_token"])
    return Agent(task, lambda method, url: headers)


async def active(t: Table, kind: Kind, call: Call) -> Agent:
    return carrying(await t.task())


async def no_token(t: Table, kind: Kind, call: Call) -> Agent:
    return Agent(await t.task(), lambda method, url: {})


async def not_a_token(t: Table, kind: Kind, call: Call) -> Agent:
    return carrying(await t.task(), "not-a-token")


def _claims(task: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {**jwt.decode(task["task_token"], options={"verify_signature": False}), **over}


async def expired_token(t: Table, kind: Kind, call: Call) -> Agent:
    """The task's token re-signed with guard's own key, its `exp` an hour ago (past the leeway)."""
    task = await t.task()
    keys = GuardKeys(load_or_create_key(t.guard.dir / "var" / "signing-key.json"), "urn:guard")
    now = int(time.time())
    return carrying(task, keys.sign(TASK_TYP, _claims(task, iat=now - 7200, exp=now - 3600)))


async def foreign_key(t: Table, kind: Kind, call: Call) -> Agent:
    """The task's claims, signed by a key guard does not have."""
    task = await t.task()
    keys = GuardKeys(load_or_create_key(t.guard.dir / "var" / "another-key.json"), "urn:guard")
    return carrying(task, keys.sign(TASK_TYP, _claims(task)))


async def revoked(t: Table, kind: Kind, call: Call) -> Agent:
    task = await t.task()
    async with t.http.post(f"{t.guard.url}/v1/tasks/{task['task_id']}/revoke", json={"reason": "incident"},
                           headers=bearer(t.guard.token("ops@acme.example", "guard:admin"))) as r:
        assert r.status == 200
    return carrying(task)


async def completed(t: Table, kind: Kind, call: Call) -> Agent:
    task = await t.task()
    async with t.http.post(f"{t.guard.url}/v1/tasks/{task['task_id']}/complete",
                           headers=bearer(t.guard.token(AGENT))) as r:
        assert r.status == 200
    return carrying(task)


async def expired(t: Table, kind: Kind, call: Call) -> Agent:
    """A task past its ttl_s, its token still inside the verification leeway."""
    task = await t.task(ttl_s=1)
    await asyncio.sleep(max(0.0, task["expires_at"] - time.time()) + 0.1)
    return carrying(task)


async def made_once(t: Table, kind: Kind, call: Call) -> Agent:
    """The same call made once already, and answered by the tool."""
    agent = carrying(await t.task())
    assert (await t.send(kind, call, agent)).status == 200
    return agent


async def budget_used(t: Table, kind: Kind, call: Call) -> Agent:
    """A task of `max_calls: 1` that made its call."""
    agent = carrying(await t.task(max_calls=1))
    assert (await t.send(kind, call, agent)).status == 200
    return agent


async def _pending(t: Table, kind: Kind, call: Call) -> tuple[Agent, str]:
    agent = carrying(await t.task())
    refused = await t.send(kind, call, agent)
    assert refused.code == "approval_required"
    [approval_id] = {r["approval_id"] for r in await audit_of(t.http, t.guard, agent.task["task_id"])
                     if r.get("approval_id")}
    return agent, approval_id


async def _decide(t: Table, approval_id: str, decision: str) -> None:
    async with t.http.post(f"{t.guard.url}/v1/approvals/{approval_id}/decision", json={"decision": decision},
                           headers=bearer(t.guard.token(APPROVER, "guard:approver"))) as r:
        assert r.status == 200, await r.text()


async def pending(t: Table, kind: Kind, call: Call) -> Agent:
    """The same call made once already: its approval is pending."""
    return (await _pending(t, kind, call))[0]


async def approved(t: Table, kind: Kind, call: Call) -> Agent:
    agent, approval_id = await _pending(t, kind, call)
    await _decide(t, approval_id, "approve")
    return agent


async def refused(t: Table, kind: Kind, call: Call) -> Agent:
    agent, approval_id = await _pending(t, kind, call)
    await _decide(t, approval_id, "deny")
    return agent


async def chained(t: Table, kind: Kind, call: Call) -> Agent:
    """A chained call: the Txn-Token the `parent` tool got with a call of the task still in flight."""
    task = await t.task()

    async def parent() -> None:
        async with t.http.get(f"{t.guard.url}/tools/parent/hold", headers=bearer(task["task_token"])) as r:
            assert r.status == 200

    t.parents.append(asyncio.ensure_future(parent()))
    seen = await until(lambda: asyncio.sleep(0, [s for s in t.upstream.requests if s.path_qs == "/hold"]),
                       "the parent call at the tool")
    headers = {"Txn-Token": seen[0].headers["Txn-Token"]}
    return Agent(task, lambda method, url: headers)


async def parent_finished(t: Table, kind: Kind, call: Call) -> Agent:
    """The Txn-Token of the task's call that has finished."""
    agent = carrying(await t.task())
    assert (await t.send("http", Call("read", {"id": "0"}), agent)).status == 200
    headers = {"Txn-Token": t.upstream.requests[-1].headers["Txn-Token"]}
    return Agent(agent.task, lambda method, url: headers)


async def _dpop_task(t: Table, key: DpopKey) -> dict[str, Any]:
    task = await t.task({"DPoP": key.proof("POST", f"{t.guard.url}/v1/tasks")})
    assert task["binding"] == "dpop"
    return task


async def dpop_proof(t: Table, kind: Kind, call: Call) -> Agent:
    """A DPoP-bound task; the call brings a fresh proof of its key."""
    key = DpopKey()
    task = await _dpop_task(t, key)
    token = task["task_token"]
    return Agent(task, lambda method, url: {"Authorization": f"DPoP {token}", "DPoP": key.proof(method, url, token)})


async def dpop_no_proof(t: Table, kind: Kind, call: Call) -> Agent:
    task = await _dpop_task(t, DpopKey())
    return Agent(task, lambda method, url: {"Authorization": f"DPoP {task['task_token']}"})


async def dpop_replayed(t: Table, kind: Kind, call: Call) -> Agent:
    """A DPoP-bound task; the call brings the proof an answered call already used."""
    key = DpopKey()
    task = await _dpop_task(t, key)
    method, url, _ = t.target(kind, call)
    headers = {"Authorization": f"DPoP {task['task_token']}", "DPoP": key.proof(method, url, task["task_token"])}
    agent = Agent(task, lambda method, url: headers)
    assert (await t.send(kind, call, agent)).status == 200
    return agent


# ------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Row:
    situation: Situation
    call: Call
    status: int
    code: str | None  # None: the tool answered
    rule_id: str | None
    audit: tuple[str, ...]  # the records the call added to its task's trail, as `line` writes them
    kinds: tuple[Kind, ...] = KINDS

    @property
    def reached(self) -> bool:
        """Whether the tool gets the call: when it is allowed (and its tool listens)."""
        return self.code in (None, "upstream_timeout")


READ = Call("read", {"id": "1"})
PAY = Call("pay", {"amount": 500})
WRITE = Call("write", {"title": "weekly"})
ALLOWED = ("call_decided allow work", "call_forwarded 200")

ROWS = {
    # the task and its token
    "allowed": Row(active, READ, 200, None, None, ALLOWED),
    "no token": Row(no_token, READ, 401, "unauthenticated", None, ()),
    "not a token": Row(not_a_token, READ, 401, "unauthenticated", None, ()),
    "token expired": Row(expired_token, READ, 401, "unauthenticated", None, ()),
    "token signed by another key": Row(foreign_key, READ, 401, "unauthenticated", None, ()),
    "task revoked": Row(revoked, READ, 403, "task_inactive", None, ()),
    "task completed": Row(completed, READ, 403, "task_inactive", None, ()),
    "task expired": Row(expired, READ, 403, "task_inactive", None, ("task_expired expires_at reached",)),
    # the tool and the policy
    "unknown tool": Row(active, Call("read", {"id": "1"}, to="unknown"), 404, "unknown_tool", None, ()),
    "unknown action": Row(active, Call("patch", {"id": "1"}), 403, "unknown_action", None,
                          ("call_decided deny unknown_action 403",), kinds=("http",)),
    "denied by a rule": Row(active, Call("delete", {"id": "1"}), 403, "denied", "no-delete",
                            ("call_decided deny no-delete denied 403",)),
    "no rule": Row(active, Call("unruled"), 403, "denied", None, ("call_decided deny denied 403",)),
    "a secret in the arguments": Row(active, Call("write", {"title": f"deploy with {GITHUB_TOKEN}"}), 403,
                                     "content_blocked", "no-secrets-out",
                                     ("content_flagged", "call_decided deny no-secrets-out content_blocked 403")),
    # step-up
    "approval required": Row(active, PAY, 403, "approval_required", "big-pay",
                             ("approval_requested big-pay", "webhook_failed unknown_webhook",
                              "call_decided step_up big-pay approval_required 403")),
    "approval still pending": Row(pending, PAY, 403, "approval_required", "big-pay",
                                  ("call_decided step_up big-pay approval_required 403",)),
    "approval granted": Row(approved, PAY, 200, None, None,
                            ("approval_consumed", "call_decided allow big-pay", "call_forwarded 200")),
    "approval denied": Row(refused, PAY, 403, "approval_denied", "big-pay",
                           ("call_decided deny big-pay approval_denied 403",)),
    # chained calls
    "chained": Row(chained, READ, 200, None, None, ALLOWED),
    "chained, denied by a chain rule": Row(chained, WRITE, 403, "denied", "no-chained-writes",
                                           ("call_decided deny no-chained-writes denied 403",)),
    "chained, the parent call finished": Row(parent_finished, READ, 403, "txn_inactive", None,
                                             ("call_decided deny txn_inactive 403",)),
    # a task bound to a DPoP key
    "DPoP proof": Row(dpop_proof, READ, 200, None, None, ALLOWED),
    "DPoP proof missing": Row(dpop_no_proof, READ, 401, "unauthenticated", None, ()),
    "DPoP proof replayed": Row(dpop_replayed, READ, 401, "unauthenticated", None, ()),
    # limits
    "rate used up": Row(made_once, Call("limited"), 429, "rate_limited", "once-a-minute",
                        ("call_decided deny once-a-minute rate_limited 429",)),
    "budget used up": Row(budget_used, READ, 429, "budget_exhausted", None,
                          ("call_decided deny budget_exhausted 429",)),
    # the tool fails: fail closed, never retried
    "tool unreachable": Row(active, Call("read", {"id": "1"}, to="down"), 502, "upstream_unavailable", None,
                            ("call_decided allow work", "call_failed upstream_unavailable 502")),
    "tool too slow": Row(active, Call("read", {"id": "slow"}, to="slow"), 504, "upstream_timeout", None,
                         ("call_decided allow work", "call_failed upstream_timeout 504")),
}


@pytest.mark.parametrize(("kind", "row"), [pytest.param(kind, row, id=f"{name}-{kind}")
                                           for name, row in ROWS.items() for kind in row.kinds])
async def test_a_call(table: Table, kind: Kind, row: Row) -> None:
    agent = await row.situation(table, kind, row.call)
    before, reached = await table.trail(agent), len(table.upstream.requests)

    with log_events() as logs:
        answer = await table.send(kind, row.call, agent)

    assert (answer.status, answer.code, answer.rule_id) == (row.status, row.code, row.rule_id)
    added = (await table.trail(agent))[len(before):]
    assert [line(r) for r in added] == list(row.audit)
    # the log has one decision line a decision record: its task, call, effect, rule and reason
    logged = [(e["task_id"], e["call_id"], e["effect"], e["rule_id"], e["reason"])
              for e in logs if e["event"] == "call_decided"]
    assert logged == [(agent.task["task_id"], r["call_id"], r["effect"], r.get("rule_id"), r.get("detail") or "rule")
                      for r in added if r["event"] == "call_decided"]  # an allow's reason: a rule allows it
    got = table.upstream.requests[reached:]
    if not row.reached:
        assert got == []
        return
    [seen] = got  # once: a tool call is never retried
    token = agent.task["task_token"]
    assert token not in json.dumps(seen.headers) and token.encode() not in seen.body
    scheme, _, credential = seen.headers["Authorization"].partition(" ")
    assert scheme == "Bearer" and jwt.get_unverified_header(credential)["typ"] == "cred+jwt"
    assert jwt.decode(credential, options={"verify_signature": False})["scope"] == \
        f"{TOOLS[kind][row.call.to]}.{row.call.action}"
    assert jwt.get_unverified_header(seen.headers["Txn-Token"])["typ"] == "txntoken+jwt"
