"""The step-up world (tests/app/test_approvals.py, tests/app/test_holds.py): a payments tool whose
big payments need an approval, a webhook receiver on a real port, and the client calls a test makes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from guard.approvals.signature import sign
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.guard import GuardLike
from tests.support.process import free_port
from tests.support.upstream import Upstream

SECRET = "finance-webhook-secret"
OPS_SECRET = "ops-webhook-secret"
REQUESTER = "alice@acme.example"


def policy(upstream_url: str) -> dict[str, Any]:
    return {
        "tools": {
            "pay": {
                "kind": "http",
                "upstream": upstream_url,
                "credential": {"mode": "none"},
                "actions": {"create": {"method": "POST", "path": "/payments"},
                            "refund": {"method": "POST", "path": "/refunds"}},
            },
        },
        "rules": [
            {"id": "small-payments", "effect": "allow",
             "match": {"tool": "pay", "action": "create", "args": [{"path": "$.amount", "lte": 100}]}},
            {"id": "big-payments", "effect": "step_up", "approvers": "finance",
             "match": {"tool": "pay", "action": "create",
                       "args": [{"path": "$.amount", "gt": 100}, {"path": "$.amount", "lte": 10000}]}},
            {"id": "huge-payments", "effect": "step_up", "approvers": "finance", "approvals_required": 2,
             "match": {"tool": "pay", "action": "create", "args": [{"path": "$.amount", "gt": 10000}]}},
            {"id": "refunds", "effect": "step_up", "approvers": "ops", "match": {"tool": "pay", "action": "refund"}},
        ],
    }


@dataclass
class Receiver:
    """A webhook receiver on a real port, in the test's loop: records each request and
    answers `status`."""

    port: int = field(default_factory=free_port)
    status: int = 200
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.json_response({"ok": self.status < 300}, status=self.status)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]




@dataclass
class World:
    guard: GuardLike
    http: aiohttp.ClientSession
    upstream: Upstream
    receiver: Receiver | None
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, sub: str, *roles: str) -> str:
        key = "|".join((sub, *roles))
        if key not in self.tokens:
            self.tokens[key] = self.guard.token(sub, *roles)
        return self.tokens[key]

    async def task(self, **body: Any) -> dict[str, Any]:
        return await create_task(self.http, self.guard.url, self.token(AGENT), requested_by=REQUESTER, **body)

    async def call(self, task: dict[str, Any], amount: int, wait: int | None = None,
                   path: str = "/payments") -> tuple[int, dict[str, Any]]:
        headers = bearer(task["task_token"])
        if wait is not None:
            headers["Prefer"] = f"wait={wait}"
        async with self.http.post(f"{self.guard.url}/tools/pay{path}", json={"amount": amount, "to": "bob"},
                                  headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def held(self, task: dict[str, Any], amount: int) -> tuple[asyncio.Future[tuple[int, dict[str, Any]]], str]:
        """A call held with `Prefer: wait` once its approval request has reached the receiver:
        the call, still waiting, and the approval's id."""
        receiver = self.receiver
        assert receiver is not None
        call = asyncio.ensure_future(self.call(task, amount, wait=25))
        await until(lambda: asyncio.sleep(0, receiver.payloads()), "the webhook")
        assert not call.done()
        return call, str(receiver.payloads()[0]["approval_id"])

    async def decide(self, approval_id: str, decision: str, approver: str, **extra: Any) -> tuple[int, dict[str, Any]]:
        token = self.token(approver, "guard:approver")
        async with self.http.post(f"{self.guard.url}/v1/approvals/{approval_id}/decision",
                                  json={"decision": decision, **extra}, headers=bearer(token)) as r:
            return r.status, await r.json(content_type=None)

    async def decide_signed(self, approval_id: str, body: dict[str, Any], secret: str = SECRET,
                            t: int | None = None, header: str | None = None) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body).encode()
        sig = header if header is not None else sign(secret, raw, t)
        async with self.http.post(f"{self.guard.url}/v1/approvals/{approval_id}/decision", data=raw,
                                  headers={"Content-Type": "application/json", "Guard-Signature": sig}) as r:
            return r.status, await r.json(content_type=None)

    async def approval(self, approval_id: str) -> dict[str, Any]:
        async with self.http.get(f"{self.guard.url}/v1/approvals/{approval_id}",
                                 headers=bearer(self.token("root@acme.example", "guard:admin"))) as r:
            assert r.status == 200
            data: dict[str, Any] = await r.json()
            return data

    async def audit(self, task_id: str) -> list[dict[str, Any]]:
        async with self.http.get(f"{self.guard.url}/v1/tasks/{task_id}/audit",
                                 headers=bearer(self.token("sec@acme.example", "guard:auditor"))) as r:
            data = await r.json()
            assert r.status == 200 and data["verified"], data
            records: list[dict[str, Any]] = data["records"]
            return records

    async def events(self, task_id: str, event: str) -> list[dict[str, Any]]:
        return [r for r in await self.audit(task_id) if r["event"] == event]

    def forwarded(self) -> int:
        return sum(1 for s in self.upstream.requests if s.path_qs == "/payments")


def guard_config(store_url: str, hook_url: str, ttl_s: int = 900, ops_url: str | None = None) -> dict[str, Any]:
    return {
        "store": {"url": store_url},
        "approvals": {"ttl_s": ttl_s, "max_wait_s": 30, "webhooks": [
            {"name": "finance", "url": hook_url, "secret_env": "GUARD_WEBHOOK_SECRET_FINANCE"},
            {"name": "ops", "url": ops_url or hook_url, "secret_env": "GUARD_WEBHOOK_SECRET_OPS"},
        ]},
    }


ENV = {"GUARD_WEBHOOK_SECRET_FINANCE": SECRET, "GUARD_WEBHOOK_SECRET_OPS": OPS_SECRET}


async def pending_approval(w: World, task: dict[str, Any], amount: int) -> str:
    status, body = await w.call(task, amount)
    assert status == 403 and body["code"] == "approval_required", body
    approval_id: str = body["approval_id"]
    return approval_id
