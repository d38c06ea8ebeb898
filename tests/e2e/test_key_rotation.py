"""Rotating the guard's signing key with no restart: `guard keys rotate` and `signing.rotate_s`,
two instances sharing the key folder, task tokens, credentials (introspection), Txn-Tokens
(a chained call) and a tool verifying offline against JWKS, across a rotation."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.support.client import AGENT, bearer, create_task, echo_policy, until
from tests.support.guard import Guard, shared_keys
from tests.support.upstream import Seen, Upstream


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


async def jwks_kids(http: aiohttp.ClientSession, g: Guard) -> list[str]:
    async with http.get(f"{g.url}/.well-known/jwks.json") as r:
        return [k["kid"] for k in (await r.json())["keys"]]


def chained_policy(upstream: Upstream) -> dict[str, Any]:
    policy = echo_policy(upstream.url)
    policy["tools"]["notes"] = {"kind": "http", "upstream": upstream.url,
                                "actions": {"read": {"method": "GET", "path": "/notes/{id}"}}}
    policy["rules"].append({"id": "notes", "effect": "allow", "match": {"tool": "notes"}})
    return policy


@pytest.mark.redis
async def test_a_rotation_switches_every_instance_and_old_tokens_keep_working(
        guard_factory: Any, upstream: Upstream, redis_server: Any, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared", audit=True)}
    a: Guard = guard_factory(chained_policy(upstream), config=config, subdir="a")
    b: Guard = guard_factory(chained_policy(upstream), config=config, subdir="b")
    jwks = jwt.PyJWKClient(f"{a.url}/.well-known/jwks.json", cache_keys=True)  # a tool verifying offline

    release = threading.Event()

    async def hold(request: web.Request, seen: Seen) -> None:
        if request.path == "/items/held":
            while not release.is_set():
                await asyncio.sleep(0.05)

    upstream.handler = hold
    task = await create_task(http, a.url, a.token(AGENT))
    old_token = task["task_token"]
    old_kid = kid_of(old_token)
    async with http.get(f"{a.url}/tools/echo/items/1", headers=bearer(old_token)) as r:
        assert r.status == 200
    old_credential = upstream.requests[-1].headers["Authorization"].split(" ", 1)[1]
    held = asyncio.ensure_future(http.get(f"{a.url}/tools/echo/items/held", headers=bearer(old_token)))
    seen = await until(lambda: _seen(upstream, "/items/held"), "the held call upstream")
    old_txn = seen.headers["Txn-Token"]
    assert kid_of(old_credential) == kid_of(old_txn) == old_kid

    out = a.cli("keys", "rotate", check=True).stdout
    assert "rotated" in out and old_kid in out
    new_kid = out.split("kid ", 1)[1].split(" ", 1)[0]

    async def switched(g: Guard) -> bool:
        fresh = await create_task(http, g.url, g.token(AGENT))
        return kid_of(fresh["task_token"]) == new_kid and await jwks_kids(http, g) == [new_kid, old_kid]

    assert await until(lambda: switched(a), "instance A signing with the new key", timeout=10)
    assert await until(lambda: switched(b), "instance B signing with the new key", timeout=10)

    for g in (a, b):  # the old task token works everywhere
        async with http.get(f"{g.url}/tools/echo/items/2", headers=bearer(old_token)) as r:
            assert r.status == 200, await r.text()
    new_credential = upstream.requests[-1].headers["Authorization"].split(" ", 1)[1]
    assert kid_of(new_credential) == new_kid
    async with http.get(f"{b.url}/tools/notes/notes/1", headers={"Txn-Token": old_txn}) as r:  # chained
        assert r.status == 200, await r.text()
    chained = upstream.requests[-1].headers
    assert kid_of(chained["Txn-Token"]) == new_kid
    for credential, at in ((old_credential, b), (new_credential, a)):
        async with http.post(f"{at.url}/v1/credentials/introspect", json={"token": credential}) as r:
            assert (await r.json())["active"] is True
        key = jwks.get_signing_key_from_jwt(credential)  # unknown kid: the client refetches JWKS
        claims = jwt.decode(credential, key.key, algorithms=["EdDSA"], audience="tool:echo")
        assert claims["txn"] == task["task_id"]
    release.set()
    async with await held as r:
        assert r.status == 200


async def _seen(upstream: Upstream, path: str) -> Seen | None:
    return next((s for s in upstream.requests if s.path_qs == path), None)


@pytest.mark.timeout(180)
async def test_rotate_s_rotates_by_itself_and_a_retired_key_leaves_jwks(
        guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    policy = echo_policy(upstream.url)
    policy["tools"]["echo"]["timeout_s"] = 1
    # tokens live at most max(5, 5, 1 + 30) s, plus 30 s of leeway: a retired key verifies 61 s
    g: Guard = guard_factory(policy, config={"signing": {"rotate_s": 5},
                                             "limits": {"task_ttl_s": 5, "credential_ttl_s": 5}})
    first = (await jwks_kids(http, g))[0]
    task = await create_task(http, g.url, g.token(AGENT))
    assert kid_of(task["task_token"]) == first

    async def rotated() -> str | None:
        kids = await jwks_kids(http, g)
        return kids[0] if kids[0] != first and first in kids else None

    second = await until(rotated, "an automatic rotation", timeout=30)
    fresh = await create_task(http, g.url, g.token(AGENT))
    assert kid_of(fresh["task_token"]) == second

    async def retired() -> bool:
        return first not in await jwks_kids(http, g)

    assert await until(retired, "the first key leaving JWKS", timeout=90)
    assert "signing_key_rotated" in g.log()
