"""DPoP (RFC 9449) in process: guard's app on real sockets, proofs made by hand with `cryptography` and PyJWT
(tests/support/dpop.py), task tokens bound to the agent's key, http and MCP calls."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import jwt
import pytest

from guard.audit.trails import read_trail
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, echo_policy
from tests.support.dpop import DpopKey
from tests.support.guard import shared_keys
from tests.support.upstream import Upstream


@pytest.fixture
async def guard(app_factory: AppFactory, upstream: Upstream) -> AppGuard:
    policy = echo_policy(upstream.url)
    policy["tools"]["notes"] = {"kind": "mcp", "upstream": f"{upstream.url}/mcp"}
    policy["rules"].append({"id": "notes", "effect": "allow", "match": {"tool": "notes"}})
    g = await app_factory(policy)
    return g


async def dpop_task(http: aiohttp.ClientSession, guard: AppGuard, key: DpopKey) -> dict[str, Any]:
    url = f"{guard.url}/v1/tasks"
    headers = {**bearer(guard.token(AGENT)), "DPoP": key.proof("POST", url)}
    async with http.post(url, json={"purpose": "weekly report"}, headers=headers) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 201, body
        return body


def dpop(token: str, proof: str) -> dict[str, str]:
    return {"Authorization": f"DPoP {token}", "DPoP": proof}


async def refusal(r: aiohttp.ClientResponse) -> str:
    body: dict[str, Any] = await r.json(content_type=None)
    assert r.status == 401 and body["code"] == "unauthenticated", body
    assert r.headers["WWW-Authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    return str(body["detail"])


async def test_a_dpop_task_token_works_only_with_fresh_proofs_of_its_key(
        guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    key = DpopKey()
    task = await dpop_task(http, guard, key)
    token = task["task_token"]
    assert task["token_type"] == "DPoP" and task["binding"] == "dpop"
    assert jwt.decode(token, options={"verify_signature": False})["cnf"] == {"jkt": key.jkt}
    url = f"{guard.url}/tools/echo/items/1"
    proof = key.proof("GET", url, token)
    async with http.get(url, headers=dpop(token, proof)) as r:
        assert r.status == 200, await r.text()
    async with http.get(url, headers=dpop(token, proof)) as r:  # the same proof again: a replay
        assert "replayed" in await refusal(r)
    async with http.get(url, headers=bearer(token)) as r:  # a copy of the token, without the key
        assert "DPoP" in await refusal(r)
    async with http.get(url, headers={"Authorization": f"DPoP {token}"}) as r:
        assert await refusal(r) == "missing DPoP proof"
    async with http.get(url, headers=dpop(token, key.proof("GET", f"{guard.url}/tools/echo/items/2", token))) as r:
        assert "htu" in await refusal(r)
    async with http.get(url, headers=dpop(token, key.proof("DELETE", url, token))) as r:
        assert "htm" in await refusal(r)
    async with http.get(url, headers=dpop(token, key.proof("GET", url, token, iat=time.time() - 120))) as r:
        assert "iat" in await refusal(r)
    async with http.get(url, headers=dpop(token, key.proof("GET", url, "another token"))) as r:
        assert "ath" in await refusal(r)
    async with http.get(url, headers=dpop(token, DpopKey().proof("GET", url, token))) as r:
        assert "another key" in await refusal(r)
    head, _, sig = key.proof("GET", url, token).split(".")
    other_payload = key.proof("GET", url, token).split(".")[1]  # another jti under the first one's signature
    async with http.get(url, headers=dpop(token, f"{head}.{other_payload}.{sig}")) as r:
        assert "signature" in await refusal(r)
    assert len(upstream.requests) == 1
    assert "DPoP" not in upstream.requests[0].headers and "dpop" not in upstream.requests[0].headers
    records = [r for r in read_trail(guard.audit_dir(), task["task_id"]) if r["event"] == "call_decided"]
    assert [r["binding"] for r in records] == ["dpop"]


async def test_a_task_creation_proof_cannot_be_replayed_either(guard: AppGuard, http: aiohttp.ClientSession) -> None:
    key = DpopKey()
    url = f"{guard.url}/v1/tasks"
    headers = {**bearer(guard.token(AGENT)), "DPoP": key.proof("POST", url)}
    async with http.post(url, json={"purpose": "x"}, headers=headers) as r:
        assert r.status == 201
    async with http.post(url, json={"purpose": "x"}, headers=headers) as r:
        assert "replayed" in await refusal(r)
    async with http.post(url, json={"purpose": "x"},
                         headers={**bearer(guard.token(AGENT)), "DPoP": key.proof("GET", url)}) as r:
        assert "htm" in await refusal(r)


async def test_a_bearer_task_token_is_not_accepted_under_the_dpop_scheme(
        guard: AppGuard, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{guard.url}/v1/tasks", json={"purpose": "x"}, headers=bearer(guard.token(AGENT))) as r:
        token = (await r.json())["task_token"]
    url = f"{guard.url}/tools/echo/items/1"
    async with http.get(url, headers=dpop(token, DpopKey().proof("GET", url, token))) as r:
        assert "not DPoP-bound" in await refusal(r)


async def test_the_credential_says_how_the_agent_was_bound(
        guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    key = DpopKey()
    task = await dpop_task(http, guard, key)
    url = f"{guard.url}/tools/echo/items/7"
    async with http.get(url, headers=dpop(task["task_token"], key.proof("GET", url, task["task_token"]))) as r:
        assert r.status == 200
    credential = upstream.requests[-1].headers["Authorization"].split(" ", 1)[1]
    async with http.post(f"{guard.url}/v1/credentials/introspect", json={"token": credential}) as r:
        info = await r.json()
    assert info["active"] is True and info["binding"] == "dpop"


async def test_mcp_calls_need_the_proof_too(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    key = DpopKey()
    task = await dpop_task(http, guard, key)
    token = task["task_token"]
    url = f"{guard.url}/mcp/notes"
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {}}}
    async with http.post(url, json=call, headers=dpop(token, key.proof("POST", url, token))) as r:
        assert r.status == 200, await r.text()
    assert len(upstream.requests) == 1
    async with http.post(url, json=call, headers=bearer(token)) as r:
        await refusal(r)
    async with http.post(url, json=call, headers=dpop(token, key.proof("POST", f"{guard.url}/mcp/other", token))) as r:
        assert "htu" in await refusal(r)
    assert len(upstream.requests) == 1


@pytest.mark.redis
async def test_a_proof_used_at_one_instance_is_refused_at_another(
        app_factory: AppFactory, upstream: Upstream, redis_server: Any, tmp_path: Any,
        http: aiohttp.ClientSession) -> None:
    public = "http://guard.acme.example"  # both instances behind one name: proofs name it
    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared"), "public_url": public}
    a = await app_factory(echo_policy(upstream.url), config=config, subdir="a")
    b = await app_factory(echo_policy(upstream.url), config=config, subdir="b")
    key = DpopKey()
    create = {**bearer(a.token(AGENT)), "DPoP": key.proof("POST", f"{public}/v1/tasks")}
    async with http.post(f"{a.url}/v1/tasks", json={"purpose": "x"}, headers=create) as r:
        token = (await r.json())["task_token"]
        assert r.status == 201
    proof = key.proof("GET", f"{public}/tools/echo/items/1", token)
    async with http.get(f"{a.url}/tools/echo/items/1", headers=dpop(token, proof)) as r:
        assert r.status == 200
    async with http.get(f"{b.url}/tools/echo/items/1", headers=dpop(token, proof)) as r:
        assert "replayed" in await refusal(r)
    fresh = key.proof("GET", f"{public}/tools/echo/items/1", token)
    async with http.get(f"{b.url}/tools/echo/items/1", headers=dpop(token, fresh)) as r:
        assert r.status == 200


async def test_the_task_endpoints_take_a_dpop_bound_token_only_with_a_proof(
        guard: AppGuard, http: aiohttp.ClientSession) -> None:
    key = DpopKey()
    task = await dpop_task(http, guard, key)
    token = task["task_token"]
    url = f"{guard.url}/v1/tasks/{task['task_id']}"
    async with http.get(url, headers=bearer(token)) as r:
        await refusal(r)
    async with http.get(url, headers=dpop(token, key.proof("GET", url, token))) as r:
        assert r.status == 200 and (await r.json())["task_id"] == task["task_id"]
    done = f"{url}/complete"
    async with http.post(done, headers=dpop(token, DpopKey().proof("POST", done, token))) as r:
        assert "another key" in await refusal(r)
    async with http.post(done, headers=dpop(token, key.proof("POST", done, token))) as r:
        assert r.status == 200 and (await r.json())["status"] == "completed"
