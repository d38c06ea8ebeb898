"""MCP authorization end to end: a real `guard serve`, the official SDK's OAuth client provider
(401, discovery, registration, authorization, token, tools/list, tools/call, refresh), and a
person who signs in with the development sign-in and answers the consent page."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from mcp import MCPError

from tests.support.guard import Guard
from tests.support.oauth import (
    PERSON,
    REDIRECT,
    FormPerson,
    Tokens,
    mcp_client,
    oauth_files_policy,
    pkce,
    provider,
    refused_authorization,
)

OPEN = {"oauth": {"registration": {"mode": "open"}}}


@pytest.fixture
async def person(guard_factory: Any) -> AsyncIterator[list[FormPerson]]:
    people: list[FormPerson] = []
    yield people
    for p in people:
        await p.close()


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_discovery(guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server))
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with http.post(f"{guard.url}/mcp/files", json=body) as r:
        assert r.status == 401
        prm_url = f"{guard.url}/.well-known/oauth-protected-resource/mcp/files"
        assert r.headers["WWW-Authenticate"] == f'Bearer resource_metadata="{prm_url}"'
    async with http.post(f"{guard.url}/mcp/files", json=body, headers={"Authorization": "Bearer nope"}) as r:
        assert r.status == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    async with http.get(prm_url) as r:
        prm = await r.json()
    assert prm["resource"] == f"{guard.url}/mcp/files"
    assert prm["authorization_servers"] == [guard.url]
    assert prm["bearer_methods_supported"] == ["header"]
    async with http.get(f"{guard.url}/.well-known/oauth-protected-resource/mcp/nosuch") as r:
        assert r.status == 404
    async with http.get(f"{guard.url}/.well-known/oauth-authorization-server") as r:
        meta = await r.json()
    assert meta["issuer"] == guard.url
    for key, path in (("authorization_endpoint", "/oauth/authorize"), ("token_endpoint", "/oauth/token"),
                      ("revocation_endpoint", "/oauth/revoke"), ("jwks_uri", "/.well-known/jwks.json")):
        assert meta[key] == guard.url + path
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "registration_endpoint" not in meta  # registration is off unless configured
    async with http.post(f"{guard.url}/oauth/register", json={"redirect_uris": [REDIRECT.format(port=1)]}) as r:
        assert r.status == 403


async def test_sdk_registers_is_authorized_calls_and_refreshes(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession, person: list[FormPerson], store_url: str
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), {
        "store": {"url": store_url}, "oauth": {"registration": {"mode": "open"}, "access_ttl_s": 2}})
    alice = FormPerson(guard, decide={"decision": "approve", "purpose": "weekly report", "tools": ["files"],
                                      "max_calls": "50", "labels": "team=research"})
    person.append(alice)
    storage = Tokens()
    async with mcp_client(guard, provider(guard, storage, alice.authorize)) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == {"search_files", "read_file", "whoami"}
        result = await client.call_tool("read_file", {"path": "notes/sources.txt"})
        assert "arxiv 2401.00001" in text_of(result)
        with pytest.raises(MCPError) as denied:
            await client.call_tool("delete_file", {"path": "notes/sources.txt"})
        assert denied.value.data["code"] == "denied"
        assert storage.client is not None and storage.tokens is not None
        first = storage.tokens
        # the access token expires: the SDK refreshes it, and the refresh token rotates
        await asyncio.sleep(2.5)
        result = await client.call_tool("read_file", {"path": "notes/sources.txt"})
        assert "arxiv" in text_of(result)
        assert storage.tokens.access_token != first.access_token
        assert storage.tokens.refresh_token != first.refresh_token

    # the consent made the task: the client is its agent, alice requested it, labels and budget from the form
    client_id = storage.client.client_id
    assert "Research desktop" in alice.consent_html
    admin = guard.token("root@acme.example", "guard:admin", "guard:auditor")
    async with http.get(f"{guard.url}/v1/tasks", params={"agent": f"client:{client_id}"},
                        headers={"Authorization": f"Bearer {admin}"}) as r:
        tasks = (await r.json())["tasks"]
    assert len(tasks) == 1
    task = tasks[0]
    assert task["agent"] == f"client:{client_id}" and task["requested_by"] == PERSON
    assert task["purpose"] == "weekly report" and task["max_calls"] == 50 and task["tools"] == ["files"]
    assert task["labels"] == {"team": "research", "oauth_client": client_id}
    assert task["calls"] == 2  # the two reads; the denied delete is not counted
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}/audit",
                        headers={"Authorization": f"Bearer {admin}"}) as r:
        trail = await r.json()
    created = trail["records"][0]
    assert created["event"] == "task_created" and created["actor"] == PERSON
    assert client_id in created["detail"] and PERSON in created["detail"]
    assert trail["verified"]

    # the first refresh token was rotated away: presenting it again revokes the delegation
    form = {"grant_type": "refresh_token", "refresh_token": first.refresh_token or "", "client_id": client_id}
    async with http.post(f"{guard.url}/oauth/token", data=form) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    async with http.get(f"{guard.url}/v1/tasks/{task['task_id']}", headers={"Authorization": f"Bearer {admin}"}) as r:
        assert (await r.json())["status"] == "revoked"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with http.post(f"{guard.url}/mcp/files", json=body,
                         headers={"Authorization": f"Bearer {storage.tokens.access_token}",
                                  "Accept": "application/json, text/event-stream"}) as r:
        assert r.status == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    form["refresh_token"] = storage.tokens.refresh_token or ""
    async with http.post(f"{guard.url}/oauth/token", data=form) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"


async def test_refusal_gives_the_client_access_denied(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession, person: list[FormPerson]
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), OPEN)
    bob = FormPerson(guard, user="bob@acme.example", decide={"decision": "refuse"})
    person.append(bob)
    storage = Tokens()
    refused = await refused_authorization(guard, provider(guard, storage, bob.authorize))
    assert refused.params["error"] == "access_denied"
    assert refused.params["iss"] == guard.url
    assert storage.tokens is None
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks", headers={"Authorization": f"Bearer {admin}"}) as r:
        assert (await r.json())["tasks"] == []  # a refusal creates nothing


async def _register(http: aiohttp.ClientSession, guard: Guard, redirect: str, name: str = "raw") -> str:
    async with http.post(f"{guard.url}/oauth/register",
                         json={"redirect_uris": [redirect], "client_name": name,
                               "token_endpoint_auth_method": "none"}) as r:
        data = await r.json()
        assert r.status == 201, data
        return str(data["client_id"])


async def test_stolen_code_without_the_verifier_is_refused(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession, person: list[FormPerson]
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), OPEN)
    redirect = REDIRECT.format(port=40123)
    client_id = await _register(http, guard, redirect)
    verifier, challenge = pkce()
    resource = f"{guard.url}/mcp/files"
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s1",
             "code_challenge": challenge, "code_challenge_method": "S256", "resource": resource}
    alice = FormPerson(guard)
    person.append(alice)
    back = (await alice.authorize(f"{guard.url}/oauth/authorize?{urlencode(query)}")).params
    assert back["state"] == "s1" and back["iss"] == guard.url
    code = back["code"]
    token = f"{guard.url}/oauth/token"
    stolen = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": redirect}
    for attempt in ({}, {"code_verifier": pkce()[0]}, {"code_verifier": "short"}):
        async with http.post(token, data={**stolen, **attempt}) as r:
            assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    async with http.post(token, data={**stolen, "code_verifier": verifier, "redirect_uri": redirect + "x"}) as r:
        assert (await r.json())["error"] == "invalid_grant"  # redirect URI must match exactly
    # the rightful client, with its verifier, still gets its tokens: the thief's tries spent nothing
    async with http.post(token, data={**stolen, "code_verifier": verifier, "resource": resource}) as r:
        tokens = await r.json()
        assert r.status == 200, tokens
        assert r.headers["Cache-Control"] == "no-store"
    assert tokens["token_type"] == "Bearer" and tokens["refresh_token"]
    # the access token is for /mcp/files only (RFC 8707): another MCP endpoint of guard refuses it
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Authorization": f"Bearer {tokens['access_token']}", "Accept": "application/json, text/event-stream"}
    async with http.post(f"{guard.url}/mcp/notes", json=listing, headers=headers) as r:
        assert r.status == 401 and "another resource" in (await r.json())["detail"]
    async with http.post(f"{guard.url}/mcp/files", json=listing, headers=headers) as r:
        assert r.status != 401 and "Guard-Call-Id" in r.headers  # accepted and forwarded (the server wants a session)
    # a code used twice revokes what it gave
    async with http.post(token, data={**stolen, "code_verifier": verifier}) as r:
        assert (await r.json())["error"] == "invalid_grant"
    async with http.post(f"{guard.url}/mcp/files", json=listing, headers=headers) as r:
        assert r.status == 401


async def test_authorization_request_checks(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), OPEN)
    redirect = REDIRECT.format(port=40124)
    client_id = await _register(http, guard, redirect)
    _, challenge = pkce()
    good = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s",
            "code_challenge": challenge, "code_challenge_method": "S256", "resource": f"{guard.url}/mcp/files"}
    url = f"{guard.url}/oauth/authorize"
    # a redirect URI the client did not register is never redirected to (no open redirect)
    for bad in ({"redirect_uri": "https://evil.example/callback"}, {"redirect_uri": redirect + "/x"},
                {"client_id": "client_nosuch"}):
        async with http.get(url, params={**good, **bad}, allow_redirects=False) as r:
            assert r.status == 400 and "Location" not in r.headers
    # everything else goes back to the client, with state and iss
    for bad, error in (({"response_type": "token"}, "unsupported_response_type"),
                       ({"code_challenge_method": "plain"}, "invalid_request"),
                       ({"code_challenge": ""}, "invalid_request"),
                       ({"resource": "https://other.example/mcp"}, "invalid_target"),
                       ({"resource": f"{guard.url}/mcp/nosuch"}, "invalid_target")):
        async with http.get(url, params={**good, **bad}, allow_redirects=False) as r:
            assert r.status == 303
            location = r.headers["Location"]
        assert location.startswith(redirect + "?")
        assert f"error={error}" in location and "state=s" in location
        assert f"iss={guard.url}".replace(":", "%3A").replace("/", "%2F") in location
    async with http.post(f"{guard.url}/oauth/token", data={"grant_type": "password", "username": "a",
                                                           "password": "b"}) as r:
        assert (await r.json())["error"] == "unsupported_grant_type"
    # registration: redirect URIs must match the configured patterns
    async with http.post(f"{guard.url}/oauth/register", json={"redirect_uris": ["https://evil.example/cb"]}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_redirect_uri"


async def test_unregistered_client_is_refused_at_consent(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession, person: list[FormPerson]
) -> None:
    policy = oauth_files_policy(mcp_server, agents={"client:https://known.example/app.json": {"owner": PERSON}})
    guard: Guard = guard_factory(policy, OPEN)
    alice = FormPerson(guard)
    person.append(alice)
    storage = Tokens()
    refused = await refused_authorization(guard, provider(guard, storage, alice.authorize))
    assert refused.params["error"] == "access_denied"
    assert refused.params["error_description"].startswith("unregistered_agent")
    assert storage.client is not None and storage.tokens is None
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/agents", headers={"Authorization": f"Bearer {admin}"}) as r:
        agents = {a["agent"]: a for a in await r.json()}
    seen = agents[f"client:{storage.client.client_id}"]
    assert seen["registered"] is False


async def test_revocation_completes_the_task(
    guard_factory: Any, mcp_server: str, http: aiohttp.ClientSession, person: list[FormPerson]
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), OPEN)
    alice = FormPerson(guard, decide={"decision": "approve", "tools": ["files", "notes"]})
    person.append(alice)
    storage = Tokens()
    async with mcp_client(guard, provider(guard, storage, alice.authorize)) as client:
        await client.list_tools()
    assert storage.tokens is not None and storage.client is not None
    assert 'value="echo"' not in alice.consent_html  # only MCP endpoints can be granted to an MCP client
    # the access token is for the resource it was asked for alone, whatever else alice granted
    headers = {"Authorization": f"Bearer {storage.tokens.access_token}",
               "Accept": "application/json, text/event-stream"}
    async with http.post(f"{guard.url}/mcp/notes", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                         headers=headers) as r:
        assert r.status == 401
    async with http.post(f"{guard.url}/oauth/revoke", data={"token": storage.tokens.refresh_token or "",
                                                            "token_type_hint": "refresh_token",
                                                            "client_id": storage.client.client_id}) as r:
        assert r.status == 200
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks", headers={"Authorization": f"Bearer {admin}"}) as r:
        [task] = (await r.json())["tasks"]
    assert task["status"] == "completed"
    form = {"grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token or "",
            "client_id": storage.client.client_id}
    async with http.post(f"{guard.url}/oauth/token", data=form) as r:
        assert (await r.json())["error"] == "invalid_grant"
    async with http.post(f"{guard.url}/oauth/revoke", data={"token": "whatever",
                                                            "client_id": storage.client.client_id}) as r:
        assert r.status == 200  # RFC 7009: unknown tokens are not an error
