"""The spine in process: guard's app on real sockets, a real upstream, tokens minted here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard, log_events
from tests.support.client import AGENT, OTHER, bearer, create_task, echo_policy
from tests.support.upstream import Upstream


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(claims: dict[str, Any], secret: bytes, header: dict[str, Any]) -> str:
    """The key-confusion attack: HMAC-signed with what the verifier holds as a public key."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def header_of(token: str) -> dict[str, Any]:
    return dict(jwt.get_unverified_header(token))


@pytest.fixture
async def guard(app_factory: AppFactory, upstream: Upstream) -> AppGuard:
    return await app_factory(echo_policy(upstream.url))


async def test_introspection_is_single_use_under_concurrency(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.get(f"{guard.url}/tools/echo/items/7", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    cred = upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")

    async def introspect() -> dict[str, Any]:
        async with http.post(f"{guard.url}/v1/credentials/introspect", data={"token": cred}) as r:
            assert r.status == 200
            return dict(await r.json())

    results = await asyncio.gather(*(introspect() for _ in range(20)))
    active = [r for r in results if r["active"]]
    assert len(active) == 1
    assert active[0]["scope"] == "echo.read" and active[0]["txn"] == task["task_id"]
    async with http.post(f"{guard.url}/v1/credentials/introspect", json={"token": "garbage"}) as r:
        assert await r.json() == {"active": False}


async def test_task_lifecycle_and_roles(guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    tid = task["task_id"]
    admin = bearer(guard.token("ops@acme.example", "guard:admin"))
    other = bearer(guard.token(OTHER))
    owner = bearer(guard.token(AGENT))
    async with http.get(f"{guard.url}/v1/tasks/{tid}", headers=owner) as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "active" and body["agent"] == AGENT
    async with http.get(f"{guard.url}/v1/tasks/{tid}", headers=other) as r:
        assert r.status == 403 and (await r.json(content_type=None))["code"] == "forbidden"
    async with http.post(f"{guard.url}/v1/tasks/{tid}/revoke", json={"reason": "x"}, headers=owner) as r:
        assert r.status == 403
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    cred = upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    async with http.post(f"{guard.url}/v1/tasks/{tid}/revoke", json={"reason": "incident"}, headers=admin) as r:
        assert r.status == 200 and (await r.json())["status"] == "revoked"
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 403 and (await r.json(content_type=None))["code"] == "task_inactive"
    async with http.post(f"{guard.url}/v1/credentials/introspect", data={"token": cred}) as r:
        assert (await r.json())["active"] is False
    # a completed task never comes back
    t2 = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/v1/tasks/{t2['task_id']}/complete", headers=owner) as r:
        assert r.status == 200 and (await r.json())["status"] == "completed"
    async with http.post(f"{guard.url}/v1/tasks/{t2['task_id']}/revoke", json={}, headers=admin) as r:
        assert (await r.json())["status"] == "completed"
    assert len(upstream.requests) == 1


async def test_task_expires(app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    g = await app_factory(echo_policy(upstream.url))
    task = await create_task(http, g.url, g.token(AGENT), ttl_s=1)
    await asyncio.sleep(1.2)
    async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        # the task token itself may still be inside its leeway: the task is what refuses
        assert r.status in (401, 403)
    async with http.get(f"{g.url}/v1/tasks/{task['task_id']}", headers=bearer(g.token(AGENT))) as r:
        assert (await r.json())["status"] == "expired"
    assert upstream.requests == []


async def test_audit_trail_is_chained_durable_and_verifiable(
    app_factory: AppFactory, guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    h = bearer(task["task_token"])
    async with http.post(f"{guard.url}/tools/echo/items", json={"title": "secret title"}, headers=h) as r:
        assert r.status == 200
    async with http.delete(f"{guard.url}/tools/echo/items/1", headers=h) as r:
        assert r.status == 403
    auditor = bearer(guard.token("sec@acme.example", "guard:auditor"))
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
        body = await r.json()
    assert r.status == 200 and body["verified"] is True
    events = [(rec["event"], rec.get("effect")) for rec in body["records"]]
    assert events == [("task_created", None), ("call_decided", "allow"), ("call_forwarded", None),
                      ("call_decided", "deny")]
    assert all(rec["agent"] == AGENT for rec in body["records"])
    assert body["records"][0]["prev_hash"] == "0" * 64
    assert body["records"][2]["status"] == 200
    assert "secret title" not in json.dumps(body)  # arguments are kept as a digest
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit",
                        headers={**auditor, "Accept": "application/x-ndjson"}) as r:
        lines = (await r.text()).strip().split("\n")
    assert [json.loads(x)["seq"] for x in lines] == [1, 2, 3, 4]
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit", headers=h) as r:
        assert r.status == 401  # a task token is not an auditor
    # durable: the trail is on disk, survives a restart and verifies
    await guard.close()
    out = await guard.cli("audit", "verify", task["task_id"])
    assert out.returncode == 0 and "4 records" in out.stdout
    again = await app_factory(echo_policy(upstream.url))  # the same folder, a fresh app
    async with http.get(f"{again.url}/v1/tasks/{task['task_id']}/audit", headers=auditor) as r:
        body = await r.json()
        assert body["verified"] is True and len(body["records"]) == 4


async def test_tokens_that_must_not_authenticate(
    guard: AppGuard, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    good = task["task_token"]
    head, payload, sig = good.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"task+jwt"}').rstrip(b"=").decode()
    forged_claims = dict(claims_of(good), sub=OTHER)
    forged = base64.urlsafe_b64encode(json.dumps(forged_claims).encode()).rstrip(b"=").decode()
    jwks = json.loads((guard.dir / "var" / "signing-key.json").read_text())
    hs_confused = hs256_token(claims_of(good), json.dumps({k: v for k, v in jwks.items() if k != "d"}).encode(),
                              {"alg": "HS256", "typ": "task+jwt", "kid": header_of(good)["kid"]})
    bad = {
        "missing": None,
        "garbage": "not-a-token",
        "alg none": f"{none_header}.{payload}.",
        "forged claims": f"{head}.{forged}.{sig}",
        "hs confusion": hs_confused,
        "idp token as task token": guard.token(AGENT),
    }
    for name, token in bad.items():
        headers = bearer(token) if token else {}
        async with http.get(f"{guard.url}/tools/echo/items/1", headers=headers) as r:
            problem = await r.json(content_type=None)
            assert r.status == 401 and problem["code"] == "unauthenticated", name
    # a credential or Txn-Token is never a task token
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(good)) as r:
        assert r.status == 200
    cred = upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    txn = upstream.requests[-1].headers["Txn-Token"]
    for token in (cred, txn):
        async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(token)) as r:
            assert r.status == 401
        async with http.post(f"{guard.url}/v1/tasks", json={"purpose": "x"}, headers=bearer(token)) as r:
            assert r.status == 401
    assert len(upstream.requests) == 1


async def test_configured_issuer_checks(app_factory: AppFactory, upstream: Upstream, tmp_path: Path,
                                        http: aiohttp.ClientSession) -> None:
    from tests.support.idp import ISSUER, Idp

    idp = Idp(tmp_path)
    with log_events() as logs:
        g = await app_factory(echo_policy(upstream.url), config={"issuers": [idp.issuer_config()]})
    events = [e["event"] for e in logs]
    assert "guard_started" in events and "development_mode" not in events
    ok = idp.token(AGENT)
    async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(ok)) as r:
        assert r.status == 201
    now = int(time.time())
    rogue = Idp(tmp_path / "..", kid="k1")
    public_pem = idp.key.public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.PEM,
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"])
        .PublicFormat.SubjectPublicKeyInfo)
    bad = {
        "expired": idp.token(AGENT, exp=now - 120, iat=now - 700),
        "not yet valid": idp.token(AGENT, nbf=now + 600),
        "wrong audience": idp.token(AGENT, aud="someone-else"),
        "wrong issuer": idp.token(AGENT, iss="https://evil.test"),
        "unknown kid": idp.token(AGENT, headers={"kid": "k2"}),
        "wrong key": rogue.token(AGENT),
        "hs with public key": hs256_token({"iss": ISSUER, "aud": "guard", "sub": AGENT, "exp": now + 60},
                                          public_pem, {"alg": "HS256", "kid": "k1", "typ": "JWT"}),
        "dev issuer is off": g.token(AGENT),
    }
    for name, token in bad.items():
        async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(token)) as r:
            assert r.status == 401, name


async def test_credential_modes_static_and_none(app_factory: AppFactory, upstream: Upstream,
                                                http: aiohttp.ClientSession) -> None:
    policy = {
        "tools": {
            "vault": {"kind": "http", "upstream": upstream.url,
                      "credential": {"mode": "static", "header": "X-Api-Key", "secret_env": "VAULT_KEY"},
                      "actions": {"get": {"method": "GET", "path": "/s"}}},
            "open": {"kind": "http", "upstream": upstream.url, "credential": {"mode": "none"},
                     "actions": {"get": {"method": "GET", "path": "/o"}}},
        },
        "rules": [{"id": "all", "effect": "allow", "match": {"tool": ["vault", "open"]}}],
    }
    g = await app_factory(policy, env={"VAULT_KEY": "s3cr3t-value"})
    task = await create_task(http, g.url, g.token(AGENT))
    h = bearer(task["task_token"])
    async with http.get(f"{g.url}/tools/vault/s", headers=h) as r:
        assert r.status == 200
    async with http.get(f"{g.url}/tools/open/o", headers=h) as r:
        assert r.status == 200
    vault, open_ = ({k.lower(): v for k, v in s.headers.items()} for s in upstream.requests)
    assert vault["x-api-key"] == "s3cr3t-value" and "authorization" not in vault
    assert "authorization" not in open_ and "x-api-key" not in open_ and "txn-token" in open_
    assert "development_mode" in g.log()  # the log is captured: what it lacks below, guard did not write
    assert "s3cr3t-value" not in g.log() and task["task_token"] not in g.log()


async def test_jwks_url_is_cached_and_refetched_for_an_unknown_kid(
    app_factory: AppFactory, upstream_factory: Any, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    from tests.support.idp import Idp

    jwks_server: Upstream = upstream_factory()
    first, rotated = Idp(tmp_path, kid="k1"), Idp(tmp_path, kid="k2")
    served = {"jwks": first.jwks}
    jwks_server.handler = lambda request, seen: web.json_response(served["jwks"])
    issuer = {**first.issuer_config(), "jwks_url": f"{jwks_server.url}/jwks.json", "jwks_refetch_min_s": 1}
    del issuer["jwks_file"]
    echo = upstream_factory()
    g = await app_factory(echo_policy(echo.url), config={"issuers": [issuer]})
    for _ in range(3):
        async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(first.token(AGENT))) as r:
            assert r.status == 201
    assert len(jwks_server.requests) == 1  # fetched once, then cached
    served["jwks"] = {"keys": first.jwks["keys"] + rotated.jwks["keys"]}
    await asyncio.sleep(1.2)  # past jwks_refetch_min_s since the first fetch
    async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(rotated.token(AGENT))) as r:
        assert r.status == 201  # an unknown kid triggers one refetch
    async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"},
                         headers=bearer(rotated.token(AGENT, headers={"kid": "k9"}))) as r:
        assert r.status == 401  # still unknown: refused, and no refetch storm
    assert len(jwks_server.requests) == 2
