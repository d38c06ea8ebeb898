"""`mode: oauth2` and `mode: token_exchange` against a real authorization server (npm oidc-provider):
per-task tokens with the action's scopes, one token request per task and scope set, checked
through the server's own introspection, and revoked (RFC 7009) when the task ends."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import audit_of, everything_written, metrics_text, tool_policy
from tests.support.guard import Guard
from tests.support.oidc import OidcProvider, oidc_provider_missing_reason
from tests.support.process import free_port, require
from tests.support.upstream import Upstream

RESOURCE = "https://notes.example"
RS_SECRET = "notes-api-introspection-secret"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
SCOPES = {"read": ["notes:read"], "write": ["notes:write"]}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


class ToolAS:
    """The tool's authorization server, and what the tests ask it."""

    def __init__(self, tmp: Path, guard: Guard, clients: list[dict[str, Any]], port: int, ttl_s: int = 600) -> None:
        require(oidc_provider_missing_reason())
        clients = [*clients, {"client_id": "notes-api", "client_secret": RS_SECRET, "grant_types": [],
                              "redirect_uris": [], "response_types": [],
                              "token_endpoint_auth_method": "client_secret_basic"}]
        self.provider = OidcProvider(tmp / "as", "tool_as.mjs", {
            "clients": clients, "resources": {RESOURCE: {"scope": "notes:read notes:write", "ttl_s": ttl_s}},
            "subject": {"issuer": "urn:guard", "jwks_uri": f"{guard.url}/.well-known/jwks.json"}}, port=port)

    def start(self) -> ToolAS:
        self.provider.start()
        return self

    @property
    def url(self) -> str:
        return self.provider.issuer

    async def introspect(self, http: aiohttp.ClientSession, token: str) -> dict[str, Any]:
        basic = base64.b64encode(f"notes-api:{RS_SECRET}".encode()).decode()
        async with http.post(f"{self.url}/token/introspection", data={"token": token},
                             headers={"Authorization": f"Basic {basic}"}) as r:
            assert r.status == 200
            return dict(await r.json())

    async def issued(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with http.get(f"{self.url}/test/issued") as r:
            return list(await r.json())

    def stop(self) -> None:
        self.provider.stop()


def guard_client(g: Guard, client_id: str = "guard-notes") -> dict[str, Any]:
    """guard as a client that authenticates with private_key_jwt: the server trusts its JWKS."""
    return {"client_id": client_id, "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "EdDSA", "jwks_uri": f"{g.url}/.well-known/jwks.json",
            "grant_types": ["client_credentials", EXCHANGE], "redirect_uris": [], "response_types": []}


def oauth_credential(as_port: int, **extra: Any) -> dict[str, Any]:
    base = f"http://127.0.0.1:{as_port}"
    return {"mode": "oauth2", "token_url": f"{base}/token", "revocation_url": f"{base}/token/revocation",
            "client_id": "guard-notes", "resource": RESOURCE, "scopes": SCOPES, **extra}


def token_of(upstream: Upstream, task_id: str, path: str) -> list[str]:
    return [s.headers["Authorization"].removeprefix("Bearer ") for s in upstream.requests
            if s.headers.get("Guard-Task-Id") == task_id and s.path_qs.startswith(path)]


async def _get(http: aiohttp.ClientSession, g: Guard, task: dict[str, Any], n: int) -> int:
    async with http.get(f"{g.url}/tools/notes/notes/{n}", headers=bearer(task["task_token"])) as r:
        return r.status


async def _post(http: aiohttp.ClientSession, g: Guard, task: dict[str, Any]) -> int:
    async with http.post(f"{g.url}/tools/notes/notes", json={"t": 1}, headers=bearer(task["task_token"])) as r:
        return r.status


async def test_oauth2_per_task_tokens_scoped_reused_and_revoked(
    guard_factory: Any, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    g: Guard = guard_factory(tool_policy(upstream.url, oauth_credential(as_port)), start=False)
    tool_as = ToolAS(tmp_path, g, [guard_client(g)], as_port).start()
    try:
        g.start()
        task = await create_task(http, g.url, g.token(AGENT))
        other = await create_task(http, g.url, g.token(AGENT))
        # concurrent first calls of one task share one token request per scope set
        statuses = await asyncio.gather(*(_get(http, g, task, n) for n in range(5)),
                                        *(_post(http, g, task) for _ in range(3)))
        assert statuses == [200] * 8
        assert await _get(http, g, other, 1) == 200
        reads = set(token_of(upstream, task["task_id"], "/notes/"))
        writes = set(token_of(upstream, task["task_id"], "/notes")) - reads
        assert len(reads) == 1 and len(writes) == 1
        (read,), (write,) = reads, writes
        (other_read,) = set(token_of(upstream, other["task_id"], "/notes/"))
        assert other_read not in (read, write)  # per task
        issued = [i for i in await tool_as.issued(http) if i["client"] == "guard-notes"]
        assert sorted(i["scope"] for i in issued) == ["notes:read", "notes:read", "notes:write"]  # 2 for task, 1 other

        seen = await tool_as.introspect(http, read)
        assert seen["active"] is True and seen["scope"] == "notes:read" and seen["aud"] == RESOURCE
        assert (await tool_as.introspect(http, write))["scope"] == "notes:write"
        forwarded = [r for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_forwarded"]
        assert {r["credential"]["mode"] for r in forwarded} == {"oauth2"}
        assert {r["credential"]["source"] for r in forwarded} == {f"http://127.0.0.1:{as_port}/token"}
        assert len({r["credential"]["token_id"] for r in forwarded}) == 2

        async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/complete", headers=bearer(task["task_token"])) as r:
            assert r.status == 200

        async def revoked() -> bool:
            return not any([(await tool_as.introspect(http, t))["active"] for t in (read, write)])

        await until(revoked, "the task's tokens to be inactive at the authorization server")
        assert (await tool_as.introspect(http, other_read))["active"] is True  # another task's token lives on
        events = [r["event"] for r in await audit_of(http, g, task["task_id"])]
        assert events.count("credential_revoked") == 2
        written = everything_written(g)
        assert read not in written and write not in written and other_read not in written

        tool_as.stop()  # the authorization server goes away: a call needing a new token fails closed
        fresh = await create_task(http, g.url, g.token(AGENT))
        seen_calls = len(upstream.requests)
        async with http.get(f"{g.url}/tools/notes/notes/1", headers=bearer(fresh["task_token"])) as r:
            body = await r.json()
            assert r.status == 503 and body["code"] == "credential_unavailable"
            assert read not in str(body) and other_read not in str(body)
        assert len(upstream.requests) == seen_calls
        assert await _get(http, g, other, 2) == 200  # a token within its lifetime is still used
        assert 'guard_credential_errors_total{mode="oauth2",tool="notes"}' in await metrics_text(http, g)
    finally:
        tool_as.stop()


async def test_oauth2_client_secrets_and_shared_tokens(
    guard_factory: Any, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """client_secret_basic with the secret from a file, shared per scope set (per_task: false);
    client_secret_post with the secret from the environment."""
    as_port = free_port()
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("basic-client-secret\n")
    policy = tool_policy(upstream.url, oauth_credential(
        as_port, client_id="guard-basic", client_auth="client_secret_basic", client_secret={"file": str(secret_file)},
        per_task=False))
    post = tool_policy(upstream.url, oauth_credential(
        as_port, client_id="guard-post", client_auth="client_secret_post", client_secret={"env": "POST_SECRET"}),
        name="posted")
    policy["tools"].update(post["tools"])
    policy["rules"] += post["rules"]
    policy["rules"][-1]["id"] = "posted"
    g: Guard = guard_factory(policy, env={"POST_SECRET": "post-client-secret"}, start=False)
    common = {"grant_types": ["client_credentials"], "redirect_uris": [], "response_types": []}
    clients = [{"client_id": "guard-basic", "client_secret": "basic-client-secret",
                "token_endpoint_auth_method": "client_secret_basic", **common},
               {"client_id": "guard-post", "client_secret": "post-client-secret",
                "token_endpoint_auth_method": "client_secret_post", **common}]
    tool_as = ToolAS(tmp_path, g, clients, as_port).start()
    try:
        g.start()
        tasks = [await create_task(http, g.url, g.token(AGENT)) for _ in range(3)]
        for t in tasks:
            assert await _get(http, g, t, 1) == 200
            async with http.get(f"{g.url}/tools/posted/notes/1", headers=bearer(t["task_token"])) as r:
                assert r.status == 200
        shared = {s.headers["Authorization"] for s in upstream.requests if s.path_qs == "/notes/1"}
        issued = await tool_as.issued(http)
        assert len([i for i in issued if i["client"] == "guard-basic"]) == 1  # one token for every task
        assert len([i for i in issued if i["client"] == "guard-post"]) == 3  # one per task
        assert len(shared) == 1 + 3
        written = everything_written(g)
        assert "basic-client-secret" not in written and "post-client-secret" not in written
    finally:
        tool_as.stop()


async def test_token_exchange_names_agent_and_task(
    guard_factory: Any, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    credential = {**oauth_credential(as_port), "mode": "token_exchange", "audience": RESOURCE}
    del credential["resource"]
    g: Guard = guard_factory(tool_policy(upstream.url, credential), start=False)
    tool_as = ToolAS(tmp_path, g, [guard_client(g)], as_port).start()
    try:
        g.start()
        task = await create_task(http, g.url, g.token(AGENT))
        statuses = await asyncio.gather(*(_get(http, g, task, n) for n in range(4)))
        assert statuses == [200] * 4
        (token,) = set(token_of(upstream, task["task_id"], "/notes/"))
        issued = [i for i in await tool_as.issued(http) if i["grant"] == EXCHANGE]
        assert len(issued) == 1 and issued[0]["txn"] == task["task_id"]
        seen = await tool_as.introspect(http, token)
        assert seen["active"] is True and seen["scope"] == "notes:read" and seen["aud"] == RESOURCE
        assert seen["sub"] == AGENT and seen["txn"] == task["task_id"]
        assert seen["requested_by"] == "alice@acme.example" and seen["act"] == {"sub": "guard-notes"}
        assert seen["subject_scope"] == "notes.read"
        admin = bearer(g.token("ops@acme.example", "guard:admin"))
        async with http.post(f"{g.url}/v1/tasks/{task['task_id']}/revoke", json={"reason": "done"}, headers=admin) as r:
            assert r.status == 200

        async def inactive() -> bool:
            return (await tool_as.introspect(http, token))["active"] is False

        await until(inactive, "the exchanged token to be revoked with its task")
        forwarded = [r for r in await audit_of(http, g, task["task_id"]) if r["event"] == "call_forwarded"]
        assert {r["credential"]["mode"] for r in forwarded} == {"token_exchange"}
        assert token not in everything_written(g)
    finally:
        tool_as.stop()


async def test_a_task_token_is_reused_until_shortly_before_it_expires(
    guard_factory: Any, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    as_port = free_port()
    g: Guard = guard_factory(tool_policy(upstream.url, oauth_credential(as_port)), start=False)
    tool_as = ToolAS(tmp_path, g, [guard_client(g)], as_port, ttl_s=4).start()  # tokens live 4 s
    try:
        g.start()
        task = await create_task(http, g.url, g.token(AGENT))
        assert await _get(http, g, task, 1) == 200 and await _get(http, g, task, 2) == 200
        (first,) = set(token_of(upstream, task["task_id"], "/notes/"))

        async def replaced() -> bool:
            return await _get(http, g, task, 3) == 200 and len(set(token_of(upstream, task["task_id"], "/notes/"))) > 1

        await until(replaced, "a new token once the first is near its expiry")
        assert first not in token_of(upstream, task["task_id"], "/notes/")[-1:]
        issued = [i for i in await tool_as.issued(http) if i["client"] == "guard-notes"]
        assert len(issued) == 2
        assert (await tool_as.introspect(http, first))["active"] is False
    finally:
        tool_as.stop()
