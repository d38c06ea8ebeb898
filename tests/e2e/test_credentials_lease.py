"""`mode: vault_lease`: a real PostgreSQL login leased from OpenBao's database engine for one task,
used by a real tool, and gone when the task ends, whatever ended it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.client import AGENT, OTHER, bearer, create_task, until
from tests.support.credentials import audit_of, everything_written, metrics_text, tool_policy
from tests.support.guard import Guard
from tests.support.openbao import OpenBao
from tests.support.postgres import Postgres
from tests.support.upstream import Seen, Upstream

# What guard's own identity needs for leases, and nothing more (docs/credentials.md shows it).
GUARD_LEASE_POLICY = """
path "database/creds/readonly" { capabilities = ["read"] }
path "sys/leases/renew"        { capabilities = ["update"] }
path "sys/leases/revoke"       { capabilities = ["update"] }
"""


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def setup_database_engine(openbao: OpenBao, postgres: Postgres) -> str:
    """The database engine on `database/`, a `readonly` role, and a token for guard with only
    GUARD_LEASE_POLICY; returns that token."""
    openbao.api("POST", "sys/mounts/database", {"type": "database"})
    openbao.api("POST", "database/config/pg", {
        "plugin_name": "postgresql-database-plugin", "connection_url": postgres.url,
        "username": "postgres", "password": postgres.password, "allowed_roles": ["readonly"],
        "verify_connection": True})
    openbao.api("POST", "database/roles/readonly", {
        "db_name": "pg", "default_ttl": "1h", "max_ttl": "24h",
        "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                                "VALID UNTIL '{{expiration}}';"]})
    openbao.api("PUT", "sys/policies/acl/guard", {"policy": GUARD_LEASE_POLICY})
    return str(openbao.api("POST", "auth/token/create", {"policies": ["guard"], "ttl": "1h"})["auth"]["client_token"])


def db_tool(upstream: Upstream, postgres: Postgres) -> None:
    """The tool logs in to PostgreSQL with the credentials it was given, and says as whom."""

    async def handle(request: web.Request, seen: Seen) -> web.Response:
        user, password = request.headers.get("X-Db-User", ""), request.headers.get("X-Db-Password", "")
        proc = await asyncio.create_subprocess_exec(
            "psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", user, "-d", "postgres", "-w", "-tAc",
            "select current_user", env={**os.environ, "PGPASSWORD": password},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            return web.json_response({"logged_in": False}, status=500)
        return web.json_response({"logged_in": True, "user": out.decode().strip()})

    upstream.handler = handle


def leases(openbao: OpenBao) -> list[str]:
    try:
        keys = openbao.api("GET", "sys/leases/lookup/database/creds/readonly?list=true")["data"]["keys"]
    except Exception:  # no lease at all answers 404
        return []
    return [str(k) for k in keys]


def lease_credentials(upstream: Upstream, task_id: str) -> tuple[str, str]:
    seen = [s for s in upstream.requests if s.headers.get("Guard-Task-Id") == task_id][-1]
    return seen.headers["X-Db-User"], seen.headers["X-Db-Password"]


async def test_one_lease_per_task_revoked_at_task_end(
    guard_factory: Any, upstream: Upstream, openbao: OpenBao, postgres: Postgres, tmp_path: Any,
    http: aiohttp.ClientSession,
) -> None:
    token = setup_database_engine(openbao, postgres)
    db_tool(upstream, postgres)
    g: Guard = guard_factory(
        tool_policy(upstream.url, {"mode": "vault_lease", "path": "database/creds/readonly",
                                   "headers": {"X-Db-User": "{username}", "X-Db-Password": "{password}"}},
                    name="db", query={"method": "POST", "path": "/query"}),
        {"secrets": {"vault": {"url": openbao.url, "auth": {"method": "token",
                                                            "token_file": str(openbao.write_token_file(
                                                                tmp_path / "guard-token", token))}}}})
    task = await create_task(http, g.url, g.token(AGENT), ttl_s=600)
    h = bearer(task["task_token"])

    async def query() -> dict[str, Any]:
        async with http.post(f"{g.url}/tools/db/query", json={"sql": "select 1"}, headers=h) as r:
            body: dict[str, Any] = await r.json()
            assert r.status == 200, body
            return body

    answers = await asyncio.gather(*(query() for _ in range(6)))  # concurrent first calls: one lease
    assert all(a["logged_in"] for a in answers) and len({a["user"] for a in answers}) == 1
    assert len(leases(openbao)) == 1
    lease_key = leases(openbao)[0]
    ttl = openbao.api("PUT", "sys/leases/lookup", {"lease_id": f"database/creds/readonly/{lease_key}"})["data"]["ttl"]
    assert 0 < ttl <= 600  # no longer than the task's remaining lifetime (the role's default is 1h)
    user, password = lease_credentials(upstream, task["task_id"])
    assert answers[0]["user"] == user and postgres.login(user, password)
    forwarded = [r for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_forwarded"]
    assert len(forwarded) == 6 and all(
        r["credential"] == {"mode": "vault_lease", "source": "database/creds/readonly", "lease": lease_key[:8]}
        for r in forwarded)

    async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/complete", headers=h) as r:
        assert r.status == 200

    async def role_gone() -> bool:
        return not postgres.login(user, password)

    await until(role_gone, "the leased PostgreSQL role to be gone after the task completed")
    assert leases(openbao) == []
    records = await audit_of(http, g, task["task_id"])
    assert any(r["event"] == "credential_revoked" and r["credential"]["lease"] == lease_key[:8] for r in records)
    written = everything_written(g)
    assert password not in written and token not in written


async def test_lease_revoked_whatever_ends_the_task(
    guard_factory: Any, upstream: Upstream, openbao: OpenBao, postgres: Postgres, tmp_path: Any,
    http: aiohttp.ClientSession,
) -> None:
    db_tool(upstream, postgres)
    setup_database_engine(openbao, postgres)
    g: Guard = guard_factory(
        tool_policy(upstream.url, {"mode": "vault_lease", "path": "database/creds/readonly",
                                   "headers": {"X-Db-User": "{username}", "X-Db-Password": "{password}"}},
                    name="db", query={"method": "POST", "path": "/query"}),
        {"secrets": {"vault": {"url": openbao.url, "auth": {"method": "token", "token_file": str(
            openbao.write_token_file(tmp_path / "root-token"))}}},
         "limits": {"task_idle_s": 5}})
    admin = bearer(g.token("ops@acme.example", "guard:admin"))
    tasks = {"revoked": await create_task(http, g.url, g.token(AGENT)),
             "suspended": await create_task(http, g.url, g.token(OTHER)),
             "idle": await create_task(http, g.url, g.token(AGENT))}
    for t in tasks.values():
        async with http.post(f"{g.url}/tools/db/query", json={}, headers=bearer(t["task_token"])) as r:
            assert r.status == 200 and (await r.json())["logged_in"]
    creds = {name: lease_credentials(upstream, t["task_id"]) for name, t in tasks.items()}
    async with http.post(f"{g.url}/v1/tasks/{tasks['revoked']['task_id']}/revoke", json={"reason": "r"},
                         headers=admin) as r:
        assert r.status == 200
    async with http.post(f"{g.url}/v1/agents/{OTHER.replace('/', '%2F')}/suspend", json={"reason": "s"},
                         headers=admin) as r:
        assert r.status == 200
    # the idle task is left alone: it expires after task_idle_s, and the sweep gives its lease back

    for name, (user, password) in creds.items():
        async def gone(user: str = user, password: str = password) -> bool:
            return not postgres.login(user, password)

        await until(gone, f"the lease of the {name} task to be revoked")
    idle_audit = [r["event"] for r in await audit_of(http, g, tasks["idle"]["task_id"])]
    assert "task_expired" in idle_audit and "credential_revoked" in idle_audit

    # a revocation that cannot succeed is retried, then audited, never dropped
    last = await create_task(http, g.url, g.token(AGENT))
    async with http.post(f"{g.url}/tools/db/query", json={}, headers=bearer(last["task_token"])) as r:
        assert r.status == 200
    openbao.kill()
    async with http.post(f"{g.url}/v1/tasks/{last['task_id']}/complete", headers=bearer(last["task_token"])) as r:
        assert r.status == 200

    async def revoke_failed() -> bool:
        return any(r["event"] == "credential_revoke_failed" for r in await audit_of(http, g, last["task_id"]))

    await until(revoke_failed, "credential_revoke_failed in the audit")
    # and a call needing a new lease with OpenBao down fails closed
    fresh = await create_task(http, g.url, g.token(AGENT))
    seen = len(upstream.requests)
    async with http.post(f"{g.url}/tools/db/query", json={}, headers=bearer(fresh["task_token"])) as r:
        assert r.status == 503 and (await r.json())["code"] == "credential_unavailable"
    assert len(upstream.requests) == seen
    assert 'guard_credential_errors_total{mode="vault_lease",tool="db"}' in await metrics_text(http, g)
