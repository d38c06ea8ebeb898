"""`mode: static` from real secret sources: a file re-read when it changes, OpenBao KV v2 (cached
`cache_s`, a new version used after that, fail closed past it), and the guard's own login to
OpenBao (token file, AppRole, a JWT it signs itself), renewed before it expires."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import audit_of, everything_written, metrics_text, tool_policy
from tests.support.guard import Guard
from tests.support.openbao import OpenBao
from tests.support.upstream import Upstream


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def _call(http: aiohttp.ClientSession, g: Guard, task: dict[str, Any], n: int = 1) -> tuple[int, Any]:
    async with http.get(f"{g.url}/tools/notes/notes/{n}", headers=bearer(task["task_token"])) as r:
        return r.status, await r.json(content_type=None)


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def _header(upstream: Upstream, name: str) -> str:
    return {k.lower(): v for k, v in upstream.requests[-1].headers.items()}[name.lower()]


async def test_file_secret_is_reread_when_it_changes(guard_factory: Any, upstream: Upstream, tmp_path: Path,
                                                     http: aiohttp.ClientSession) -> None:
    secret_file = tmp_path / "notes-key"
    secret_file.write_text("file-secret-one\n")
    g: Guard = guard_factory(tool_policy(upstream.url, {
        "mode": "static", "header": "Authorization", "format": "Bearer {secret}",
        "secret": {"file": str(secret_file)}}))
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await _call(http, g, task))[0] == 200
    assert _header(upstream, "Authorization") == "Bearer file-secret-one"

    secret_file.write_text("file-secret-two\n")  # a rotation, as a secret volume or an agent sink does

    async def rotated() -> bool:
        return (await _call(http, g, task))[0] == 200 and _header(upstream, "Authorization") == "Bearer file-secret-two"

    await until(rotated, "the rotated file secret to be sent")
    forwarded = [r for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_forwarded"]
    assert {r["credential"]["source"] for r in forwarded} == {f"file:{secret_file}"}
    assert all(r["credential"]["mode"] == "static" and "version" in r["credential"] for r in forwarded)

    secret_file.unlink()  # the source is gone: fail closed

    async def refused() -> Any:
        status, body = await _call(http, g, task)
        return body if status == 503 else None

    body = await until(refused, "a call refused once the secret file is gone")
    assert body["code"] == "credential_unavailable" and body["task_id"] == task["task_id"]
    seen = len(upstream.requests)
    assert (await _call(http, g, task))[0] == 503
    assert len(upstream.requests) == seen  # a refused call forwards nothing
    failed = [r for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_failed"]
    assert failed and failed[-1]["detail"] == "credential_unavailable" and failed[-1]["status"] == 503
    assert 'guard_credential_errors_total{mode="static",tool="notes"}' in await metrics_text(http, g)
    written = everything_written(g)
    assert "file-secret-one" not in written and "file-secret-two" not in written


async def test_openbao_kv_secret_cached_rotated_and_failing_closed(
    guard_factory: Any, upstream: Upstream, openbao: OpenBao, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "kv-secret-v1"}})
    token_file = openbao.write_token_file(tmp_path / "bao-token")
    credential = {"mode": "static", "header": "X-Api-Key", "secret": {"vault": "secret/data/tools/notes#api_key"}}

    def vault(cache_s: float) -> dict[str, Any]:
        return {"secrets": {"vault": {"url": openbao.url, "cache_s": cache_s,
                                      "auth": {"method": "token", "token_file": str(token_file)}}}}

    short: Guard = guard_factory(tool_policy(upstream.url, credential), vault(1), subdir="short")
    long: Guard = guard_factory(tool_policy(upstream.url, credential), vault(300), subdir="long")
    t_short = await create_task(http, short.url, short.token(AGENT))
    t_long = await create_task(http, long.url, long.token(AGENT))
    for g, t in ((short, t_short), (long, t_long)):
        assert (await _call(http, g, t))[0] == 200
        assert _header(upstream, "X-Api-Key") == "kv-secret-v1"

    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "kv-secret-v2"}})  # version 2

    async def rotated() -> bool:
        return (await _call(http, short, t_short))[0] == 200 and _header(upstream, "X-Api-Key") == "kv-secret-v2"

    await until(rotated, "the new KV version to be used once the cache aged out")
    assert (await _call(http, long, t_long))[0] == 200  # still within its cache_s: the read is reused
    assert _header(upstream, "X-Api-Key") == "kv-secret-v1"
    versions = [r["credential"] for r in await audit_of(http, short, t_short["task_id"])
                if r["event"] == "call_forwarded"]
    assert versions[0] == {"mode": "static", "source": "vault:secret/data/tools/notes#api_key", "version": 1}
    assert versions[-1]["version"] == 2

    openbao.kill()  # the secrets manager goes away
    assert (await _call(http, long, t_long))[0] == 200  # a cached value within cache_s is used

    async def refused() -> Any:
        status, body = await _call(http, short, t_short)
        return body if status == 503 else None

    body = await until(refused, "calls refused once the cache aged out with OpenBao down")
    assert body["code"] == "credential_unavailable"
    seen = len(upstream.requests)
    assert (await _call(http, short, t_short))[0] == 503
    assert len(upstream.requests) == seen  # a refused call forwards nothing
    assert 'guard_credential_errors_total{mode="static",tool="notes"}' in await metrics_text(http, short)
    for g in (short, long):
        written = everything_written(g)
        assert "kv-secret-v1" not in written and "kv-secret-v2" not in written
        assert openbao.root_token not in written


def _reader_policy(openbao: OpenBao) -> None:
    openbao.api("PUT", "sys/policies/acl/guard-notes",
                {"policy": 'path "secret/data/tools/*" { capabilities = ["read"] }'})


async def test_guard_logs_in_with_approle_and_renews(guard_factory: Any, upstream: Upstream, openbao: OpenBao,
                                                     tmp_path: Path, http: aiohttp.ClientSession) -> None:
    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "approle-read"}})
    _reader_policy(openbao)
    openbao.api("POST", "sys/auth/approle", {"type": "approle"})
    # a short TTL and max TTL: the guard renews, then must log in again
    openbao.api("POST", "auth/approle/role/guard", {"token_policies": ["guard-notes"], "token_ttl": "3s",
                                                    "token_max_ttl": "6s"})
    role_id = openbao.api("GET", "auth/approle/role/guard/role-id")["data"]["role_id"]
    secret_id = openbao.api("POST", "auth/approle/role/guard/secret-id", {})["data"]["secret_id"]
    (tmp_path / "role-id").write_text(role_id)
    (tmp_path / "secret-id").write_text(secret_id)
    g: Guard = guard_factory(
        tool_policy(upstream.url, {"mode": "static", "secret": {"vault": "secret/data/tools/notes#api_key"}}),
        {"secrets": {"vault": {"url": openbao.url, "cache_s": 0, "auth": {
            "method": "approle", "role_id_file": str(tmp_path / "role-id"),
            "secret_id_file": str(tmp_path / "secret-id")}}}})
    task = await create_task(http, g.url, g.token(AGENT), ttl_s=600)
    assert (await _call(http, g, task))[0] == 200
    assert _header(upstream, "X-Api-Key") == "approle-read"

    async def logged_in_again() -> bool:
        return g.log().count("vault_logged_in") >= 2 and "vault_token_renewed" in g.log()

    await until(logged_in_again, "the guard to renew its token, then log in again past its max TTL")
    await asyncio.sleep(0.5)
    assert (await _call(http, g, task))[0] == 200  # cache_s 0: a fresh read with the fresh token
    # guard's own login and renewals name no task or call, though a call made it log in first
    vault_lines = [e for e in g.log_events() if e["event"] in ("vault_logged_in", "vault_token_renewed")]
    assert len(vault_lines) >= 3 and not [e for e in vault_lines if "task_id" in e or "call_id" in e], vault_lines
    assert secret_id not in everything_written(g)


async def test_guard_logs_in_with_its_own_jwt(guard_factory: Any, upstream: Upstream, openbao: OpenBao,
                                              http: aiohttp.ClientSession) -> None:
    """No static secret at all: OpenBao's jwt auth method trusts the guard's JWKS."""
    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "jwt-read"}})
    _reader_policy(openbao)
    g: Guard = guard_factory(
        tool_policy(upstream.url, {"mode": "static", "secret": {"vault": "secret/data/tools/notes#api_key"}}),
        {"secrets": {"vault": {"url": openbao.url, "auth": {"method": "jwt", "role": "guard"}}}})
    openbao.api("POST", "sys/auth/jwt", {"type": "jwt"})
    openbao.api("POST", "auth/jwt/config", {"jwks_url": f"{g.url}/.well-known/jwks.json", "bound_issuer": "urn:guard"})
    openbao.api("POST", "auth/jwt/role/guard", {
        "role_type": "jwt", "user_claim": "sub", "bound_subject": "urn:guard", "bound_audiences": ["openbao"],
        "token_policies": ["guard-notes"], "token_ttl": "60s"})
    task = await create_task(http, g.url, g.token(AGENT))
    status, body = await _call(http, g, task)
    assert status == 200, body
    assert _header(upstream, "X-Api-Key") == "jwt-read"
    assert "vault_logged_in" in g.log()


async def test_token_file_rotation_is_picked_up(guard_factory: Any, upstream: Upstream, openbao: OpenBao,
                                                tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """An agent sink rewrites guard's token file and the old token is revoked: guard carries on."""
    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "token-file-read"}})
    _reader_policy(openbao)

    def new_token() -> str:
        return str(openbao.api("POST", "auth/token/create", {"policies": ["guard-notes"], "ttl": "1h"})["auth"]
                   ["client_token"])

    first = new_token()
    token_file = openbao.write_token_file(tmp_path / "bao-token", first)
    g: Guard = guard_factory(
        tool_policy(upstream.url, {"mode": "static", "secret": {"vault": "secret/data/tools/notes#api_key"}}),
        {"secrets": {"vault": {"url": openbao.url, "cache_s": 0,
                               "auth": {"method": "token", "token_file": str(token_file)}}}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await _call(http, g, task))[0] == 200
    second = new_token()
    openbao.write_token_file(token_file, second)
    openbao.api("POST", "auth/token/revoke", {"token": first})
    status, body = await _call(http, g, task)
    assert status == 200, body
    assert _header(upstream, "X-Api-Key") == "token-file-read"
    written = everything_written(g)
    assert first not in written and second not in written


async def test_jwt_and_none_say_what_went_out(guard_factory: Any, upstream: Upstream,
                                              http: aiohttp.ClientSession) -> None:
    policy = tool_policy(upstream.url, {"mode": "jwt"})
    policy["tools"]["open"] = {**policy["tools"]["notes"], "credential": {"mode": "none"}}
    policy["rules"].append({"id": "open", "effect": "allow", "match": {"tool": "open"}})
    g: Guard = guard_factory(policy)
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await _call(http, g, task))[0] == 200
    jti = claims_of(_header(upstream, "Authorization").removeprefix("Bearer "))["jti"]
    async with http.get(f"{g.url}/tools/open/notes/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    creds = [r["credential"] for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_forwarded"]
    assert creds == [{"mode": "jwt", "source": "guard", "token_id": jti}, {"mode": "none", "source": "none"}]
