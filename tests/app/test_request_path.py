"""The request path in process: guard's app on aiohttp's test server, a real upstream, real
sockets. Credentials swapped, refusals forward nothing, bad input is refused cleanly, budgets and
rates, step-up."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
from typing import Any

import aiohttp
import jwt
import pytest

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.upstream import Upstream


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


@pytest.fixture
async def guard(app_factory: AppFactory, upstream: Upstream) -> AppGuard:
    return await app_factory(echo_policy(upstream.url))


async def test_allowed_call_swaps_credentials(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    headers = {**bearer(task["task_token"]), "Cookie": "session=agent-secret", "X-Custom": "kept",
               "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Host": "evil.example"}
    async with http.post(f"{guard.url}/tools/echo/items?x=1", json={"title": "t"}, headers=headers) as r:
        assert r.status == 200
        assert r.headers["Guard-Task-Id"] == task["task_id"]
        call_id = r.headers["Guard-Call-Id"]
    seen = upstream.requests[-1]
    assert seen.path_qs == "/items?x=1"
    h = {k.lower(): v for k, v in seen.headers.items()}
    assert "cookie" not in h and "x-drop-me" not in h
    assert h["x-custom"] == "kept"
    assert h["host"] == f"127.0.0.1:{upstream.port}"
    assert h["guard-task-id"] == task["task_id"] and h["guard-call-id"] == call_id
    cred = h["authorization"].removeprefix("Bearer ")
    assert cred != task["task_token"]
    assert header_of(cred)["typ"] == "cred+jwt"
    c = claims_of(cred)
    assert c["aud"] == "tool:echo" and c["scope"] == "echo.write" and c["sub"] == AGENT
    assert c["txn"] == task["task_id"] and c["chain"] == [] and c["exp"] - c["iat"] <= 30
    digest = base64.urlsafe_b64encode(
        hashlib.sha256(b"POST\n/items?x=1\n" + seen.body).digest()).rstrip(b"=").decode()
    assert c["call_digest"] == digest
    txn = h["txn-token"]
    assert header_of(txn)["typ"] == "txntoken+jwt"
    t = claims_of(txn)
    assert t["txn"] == task["task_id"] and t["scope"] == "echo.write" and t["req_wl"] == "tool:echo"
    assert t["tctx"] == {"purpose": "weekly research report", "requested_by": "alice@acme.example",
                         "chain": ["echo"]}
    # the credential verifies against the guard's JWKS
    async with http.get(f"{guard.url}/.well-known/jwks.json") as r:
        jwks = await r.json()
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == header_of(cred)["kid"]))
    jwt.decode(cred, key.key, algorithms=[key.algorithm_name], audience="tool:echo")


async def test_refusals_forward_nothing(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    cases = [
        ("DELETE", "/tools/echo/items/1", None, 403, "denied", "no-delete"),
        ("POST", "/tools/echo/items", {"tags": ["a", "secret"]}, 403, "denied", "no-secret-writes"),
        ("GET", "/tools/echo/unruled", None, 403, "denied", None),
        ("PATCH", "/tools/echo/items/1", None, 403, "unknown_action", None),
        ("GET", "/tools/echo/items/1/extra", None, 403, "unknown_action", None),
        ("GET", "/tools/nope/x", None, 404, "unknown_tool", None),
    ]
    for method, path, body, status, code, rule in cases:
        async with http.request(method, guard.url + path, json=body, headers=h) as r:
            problem = await r.json(content_type=None)
            assert r.status == status, (path, problem)
            assert r.headers["Content-Type"].startswith("application/problem+json")
            assert problem["code"] == code and problem["status"] == status
            assert problem.get("rule_id") == rule
    assert upstream.requests == []
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}", headers=h) as r:
        assert (await r.json())["calls"] == 0


async def test_a_body_that_arrives_whole_is_held_to_the_limit_too(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """A small body is in the guard's buffer before the call is read (it is taken from there):
    with no Content-Length to refuse it by (chunked, or decoded from gzip), it is still measured."""
    guard = await app_factory(echo_policy(upstream.url), config={"limits": {"max_body_bytes": 512}})
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = {**bearer(task["task_token"]), "Content-Type": "application/json"}
    at_limit = b'{"x":"' + b"a" * 504 + b'"}'
    over = b'{"x":"' + b"a" * 505 + b'"}'
    assert len(at_limit) == 512
    for body, status in ((at_limit, 200), (over, 413)):
        reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)  # one write: headers and body
        h1 = "".join(f"{k}: {v}\r\n" for k, v in h.items())
        writer.write(f"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n{h1}Transfer-Encoding: chunked\r\n"
                     f"Connection: close\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert int(head.split()[1]) == status, (len(body), head)
    async with http.post(f"{guard.url}/tools/echo/items", data=gzip.compress(over),
                         headers={**h, "Content-Encoding": "gzip"}) as r:
        assert r.status == 413 and (await r.json(content_type=None))["code"] == "payload_too_large"


async def test_bad_input_is_refused_cleanly(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    async with http.post(f"{guard.url}/tools/echo/items", data=b"{not json",
                         headers={**h, "Content-Type": "application/json"}) as r:
        assert r.status == 400 and (await r.json(content_type=None))["code"] == "bad_request"
    big = b'{"x":"' + b"a" * 1_100_000 + b'"}'
    async with http.post(f"{guard.url}/tools/echo/items", data=io.BytesIO(big),
                         headers={**h, "Content-Type": "application/json"}) as r:
        assert r.status == 413 and (await r.json(content_type=None))["code"] == "payload_too_large"
    for trick in ["/tools/echo/items/../pay", "/tools/echo/items/%2e%2e/pay", "/tools/echo/items%2fx",
                  "/tools/echo//items/1", "/tools/echo/items/.%2E/pay", "/tools/echo/./items/1"]:
        reader, writer = await asyncio.open_connection("127.0.0.1", guard.port)
        writer.write(f"GET {trick} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {task['task_token']}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = (await reader.readline()).decode()
        writer.close()
        assert status_line.split()[1] in ("400", "403", "404"), (trick, status_line)
    assert upstream.requests == []
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}", headers=h) as r:
        assert (await r.json())["calls"] == 0


async def test_budget_and_rate(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT), max_calls=3)
    h = bearer(task["task_token"])
    statuses = []
    for _ in range(3):
        async with http.get(f"{guard.url}/tools/echo/limited", headers=h) as r:
            statuses.append((r.status, (await r.json(content_type=None)).get("code")))
    assert statuses == [(200, None), (200, None), (429, "rate_limited")]
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=h) as r:
        assert r.status == 200
    async with http.get(f"{guard.url}/tools/echo/items/2", headers=h) as r:
        assert r.status == 429 and (await r.json(content_type=None))["code"] == "budget_exhausted"
    assert len(upstream.requests) == 3


async def test_step_up_answers_approval_required(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    ids = []
    for _ in range(2):
        async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 500}, headers=h) as r:
            problem = await r.json(content_type=None)
            assert r.status == 403 and problem["code"] == "approval_required"
            assert problem["rule_id"] == "big-pay" and "Retry-After" in r.headers
            ids.append(problem["approval_id"])
    assert ids[0] == ids[1]
    async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 5}, headers=h) as r:
        assert r.status == 200
    assert [s.path_qs for s in upstream.requests] == ["/pay"]


async def test_conflicting_arguments_are_refused(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    # the rule reads $.tags; a tool reading the query's copy would see another value
    async with http.post(f"{guard.url}/tools/echo/items?tags=public", json={"tags": ["secret"]}, headers=h) as r:
        assert r.status == 400 and "tags" in (await r.json(content_type=None))["detail"]
    async with http.get(f"{guard.url}/tools/echo/items/1?id=2", headers=h) as r:
        assert r.status == 400
    async with http.get(f"{guard.url}/tools/echo/items/1?id=1", headers=h) as r:
        assert r.status == 200  # the same value twice is not a conflict
    assert [s.path_qs for s in upstream.requests] == ["/items/1?id=1"]


async def test_every_refusal_of_a_task_is_audited(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """Each refused call of a known task leaves one `call_decided` record naming why (the code, the
    rule, the approval), the trail still verifies, and the inventory counts the denials (a step-up
    is not a denial). A call to an unknown tool names no task action and leaves no record."""
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    for method, path, body in [("DELETE", "/tools/echo/items/1", None), ("PATCH", "/tools/echo/items/1", None),
                               ("POST", "/tools/echo/pay", {"amount": 500}), ("GET", "/tools/nope/x", None)]:
        async with http.request(method, guard.url + path, json=body, headers=h) as r:
            assert r.status in (403, 404)
    auditor = bearer(guard.token("sec@acme.example", "guard:auditor"))
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
        trail = await r.json()
    assert trail["verified"] is True
    decided = [(rec["effect"], rec.get("action"), rec.get("rule_id"), rec["detail"], rec["status"])
               for rec in trail["records"] if rec["event"] == "call_decided"]
    assert decided == [("deny", "delete", "no-delete", "denied", 403),
                       ("deny", None, None, "unknown_action", 403),
                       ("step_up", "pay", "big-pay", "approval_required", 403)]
    step_up = next(rec for rec in trail["records"] if rec["event"] == "call_decided" and rec["effect"] == "step_up")
    assert step_up["approval_id"].startswith("apr_")
    admin = bearer(guard.token("ops@acme.example", "guard:admin"))
    async with http.get(f"{guard.url}/v1/agents", headers=admin) as r:
        [row] = [a for a in await r.json() if a["agent"] == AGENT]
    assert row["denied"] == 2 and row["calls"] == 0
    assert upstream.requests == []


async def test_a_txn_token_once_used_never_passes_as_a_task_token(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    """A tool holds the Txn-Token of the call it serves. Presented as a Txn-Token it is verified
    and remembered; presented as a bearer task token it stays refused (it would call with the
    task's full rights, past the end of its call)."""
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    txn = upstream.requests[-1].headers["Txn-Token"]
    async with http.get(f"{guard.url}/tools/echo/items/2", headers={"Txn-Token": txn}) as r:
        assert r.status == 403  # its call has finished
    async with http.get(f"{guard.url}/tools/echo/items/3", headers=bearer(txn)) as r:
        assert r.status == 401
        assert (await r.json(content_type=None))["code"] == "unauthenticated"
    assert len(upstream.requests) == 1
