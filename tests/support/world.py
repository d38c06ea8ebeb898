"""The hostile-input world (tests/app/test_adversarial.py, tests/app/test_path_safety.py): a guard
with an echo tool, an MCP tool and two approver webhooks, a task with one allowed call made, and
the checks that an attack changed nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
import jwt

from guard.identity.tokens import GuardKeys, load_or_create_key
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import GuardLike
from tests.support.upstream import Upstream

SECRET = "finance-secret-for-tests"
LEGAL_SECRET = "legal-secret-for-tests"
ENV = {"GUARD_WEBHOOK_SECRET_FINANCE": SECRET, "GUARD_WEBHOOK_SECRET_LEGAL": LEGAL_SECRET}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def seg(obj: Any) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


G = TypeVar("G", bound=GuardLike)


@dataclass
class World(Generic[G]):
    guard: G
    upstream: Upstream
    recorder: Upstream  # jku/x5u targets and webhook receiver: must never be fetched by token headers
    http: aiohttp.ClientSession
    task: dict[str, Any]
    cred: str  # a credential the upstream got and nobody introspected yet
    txn: str  # the Txn-Token of a finished call
    keys: GuardKeys  # the guard's own signing key, read from its folder

    @property
    def url(self) -> str:
        return self.guard.url

    def sign(self, typ: str, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """A token signed with the guard's real key; `header` replaces the guard's header."""
        if header is None:
            return self.keys.sign(typ, claims)
        signing_input = f"{seg(header)}.{seg(claims)}".encode()
        return f"{signing_input.decode()}.{b64(self.keys.current.sign(signing_input))}"

    def task_claims(self, **over: Any) -> dict[str, Any]:
        return {**claims_of(self.task["task_token"]), **over}

    async def calls(self) -> int:
        async with self.http.get(f"{self.url}/v1/tasks/{self.task['task_id']}",
                                 headers=bearer(self.task["task_token"])) as r:
            return int((await r.json())["calls"])

    async def verified(self, task_id: str | None = None) -> bool:
        auditor = bearer(self.guard.token("sec@acme.example", "guard:auditor"))
        async with self.http.get(f"{self.url}/v1/tasks/{task_id or self.task['task_id']}/audit",
                                 headers=auditor) as r:
            body = await r.json()
            return bool(body["verified"]) and len(body["records"]) > 0

    async def tool_call(self, headers: dict[str, str], path: str = "/tools/echo/items/1") -> tuple[int, Any]:
        async with self.http.get(self.url + path, headers=headers) as r:
            return r.status, await problem_of(r)


async def problem_of(r: aiohttp.ClientResponse) -> dict[str, Any]:
    assert r.headers.get("Content-Type", "").startswith("application/problem+json"), r.headers
    body = await r.json(content_type=None)
    assert body["status"] == r.status and body["code"]
    return dict(body)


def world_setup(upstream: Upstream, recorder: Upstream) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(policy, config, env) of the world's guard: the echo tool, an MCP tool, two approver webhooks
    whose receiver is `recorder`."""
    policy = echo_policy(upstream.url)
    policy["rules"].append({"id": "legal-review", "effect": "step_up", "approvers": "legal",
                            "match": {"tool": "echo", "action": "limited"}})
    policy["tools"]["files"] = {"kind": "mcp", "upstream": upstream.url + "/mcp"}
    policy["rules"].append({"id": "read-files", "effect": "allow", "match": {"tool": "files", "action": "read_file"}})
    hooks = [{"name": "finance", "url": recorder.url + "/finance", "secret_env": "GUARD_WEBHOOK_SECRET_FINANCE"},
             {"name": "legal", "url": recorder.url + "/legal", "secret_env": "GUARD_WEBHOOK_SECRET_LEGAL"}]
    return policy, {"limits": {"credential_ttl_s": 900}, "approvals": {"webhooks": hooks}}, ENV


async def open_world(g: G, upstream: Upstream, recorder: Upstream, http: aiohttp.ClientSession) -> World[G]:
    """A task with one allowed call made: its credential and Txn-Token as the upstream got them."""
    keys = GuardKeys(load_or_create_key(g.dir / "var" / "signing-key.json"), "urn:guard")
    task = await create_task(http, g.url, g.token(AGENT))
    async with http.get(f"{g.url}/tools/echo/items/7", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    seen = upstream.requests[-1].headers
    return World(g, upstream, recorder, http, task, seen["Authorization"].removeprefix("Bearer "),
                 seen["Txn-Token"], keys)


async def assert_untouched(w: World[Any], forwarded: int = 1, calls: int = 1) -> None:
    """Nothing forwarded, nothing counted, the credential unconsumed, the trail verifies."""
    assert len(w.upstream.requests) == forwarded
    assert await w.calls() == calls
    assert await w.verified()
    assert [s.path_qs for s in w.recorder.requests if not s.path_qs.startswith(("/finance", "/legal"))] == []


async def raw(port: int, data: bytes, read_timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        out = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Connection: close" not in data:
                head, body = out.split(b"\r\n\r\n", 1)
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                if length and len(body) >= int(length.group(1)):
                    break
        return out
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


def raw_problem(response: bytes, what: object = "") -> dict[str, Any]:
    """The first answer on a raw connection: RFC 9457 problem details (content type, status,
    title, detail, code), whatever refused the request, aiohttp's parser included."""
    head, _, body = response.partition(b"\r\n\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}
    assert headers.get("content-type", "").startswith("application/problem+json"), (what, response[:300])
    length = int(headers["content-length"])
    problem: dict[str, Any] = json.loads(body[:length])
    assert problem["status"] == status_of(response), (what, problem)
    assert problem["title"] and problem["detail"] and problem["code"], (what, problem)
    return problem
