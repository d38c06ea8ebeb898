"""Two guard instances on one Redis: the lease and the token a task took at one instance are kept
with the task in the store, reused at the other, and given back by whichever instance ends it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_credentials_lease import db_tool, lease_credentials, leases, setup_database_engine
from tests.e2e.test_credentials_oauth import ToolAS, guard_client, oauth_credential
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import audit_of, everything_written, tool_policy
from tests.support.guard import Guard, shared_keys
from tests.support.openbao import OpenBao
from tests.support.postgres import Postgres
from tests.support.process import free_port
from tests.support.redis import RedisServer
from tests.support.upstream import Upstream

pytestmark = pytest.mark.redis


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_task_ended_at_one_instance_revokes_what_the_other_took(
    guard_factory: Any, upstream_factory: Callable[[], Upstream], redis_server: RedisServer, openbao: OpenBao,
    postgres: Postgres, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    db_up, notes_up = upstream_factory(), upstream_factory()
    db_tool(db_up, postgres)
    token = setup_database_engine(openbao, postgres)
    as_port = free_port()
    policy = tool_policy(db_up.url, {"mode": "vault_lease", "path": "database/creds/readonly",
                                     "headers": {"X-Db-User": "{username}", "X-Db-Password": "{password}"}},
                         name="db", query={"method": "POST", "path": "/query"})
    notes = tool_policy(notes_up.url, oauth_credential(as_port))
    policy["tools"].update(notes["tools"])
    policy["rules"].append({"id": "notes", "effect": "allow", "match": {"tool": "notes"}})
    config = {"store": {"url": redis_server.url}, **shared_keys(tmp_path / "shared", audit=True),
              "secrets": {"vault": {"url": openbao.url, "auth": {
                  "method": "token", "token_file": str(openbao.write_token_file(tmp_path / "guard-token", token))}}}}
    a: Guard = guard_factory(policy, config=config, subdir="a", start=False)
    b: Guard = guard_factory(policy, config=config, subdir="b", start=False)
    tool_as = ToolAS(tmp_path, a, [guard_client(a)], as_port).start()
    try:
        a.start()
        b.start()
        task = await create_task(http, a.url, a.token(AGENT))
        h = bearer(task["task_token"])
        for g in (b, a):  # the lease taken at B first, then reused at A (one lease per task)
            async with http.post(f"{g.url}/tools/db/query", json={}, headers=h) as r:
                assert r.status == 200 and (await r.json())["logged_in"]
        for _ in range(2):  # the token only at B: A has never served `notes` when it ends the task
            async with http.get(f"{b.url}/tools/notes/notes/1", headers=h) as r:
                assert r.status == 200
        users = {s.headers["X-Db-User"] for s in db_up.requests}
        tokens = {s.headers["Authorization"].removeprefix("Bearer ") for s in notes_up.requests}
        assert len(users) == 1 and len(tokens) == 1 and len(leases(openbao)) == 1
        (access,) = tokens
        assert (await tool_as.introspect(http, access))["active"] is True
        user, password = lease_credentials(db_up, task["task_id"])

        async with http.post(f"{a.url}/v1/tasks/{task['task_id']}/complete", headers=h) as r:
            assert r.status == 200

        async def given_back() -> bool:
            return not postgres.login(user, password) and not (await tool_as.introspect(http, access))["active"]

        await until(given_back, "the lease and the token taken at B to be revoked by A")
        events = [r["event"] for r in await audit_of(http, a, task["task_id"])]
        assert events.count("credential_revoked") == 2 and "credential_revoke_failed" not in events
        for g in (a, b):
            written = everything_written(g)
            assert password not in written and access not in written
    finally:
        tool_as.stop()
