"""The doors (SECURITY.md, "Safe defaults"): the development sign-in next to real issuers, a
browser session creating tasks, unbounded client registration, loose redirect patterns, an
injectable consent CSP, http tools as OAuth resources, revocation by another client, access
tokens accepted beyond their resource, tasks created by a consent nobody redeemed, a signing
key window fixed at start, and a metadata fetch that tells which loopback ports answer. Each
test here failed before its fix."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import yaml
from aiohttp import web

from guard.identity.keyring import rotate
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import bearer
from tests.support.idp import Idp
from tests.support.oauth import FormPerson, Forms, oauth_files_policy, pkce
from tests.support.process import free_port
from tests.support.redis import RedisServer
from tests.support.world import claims_of

OPEN = {"oauth": {"registration": {"mode": "open"}}}
NOWHERE = "http://127.0.0.1:9"  # the MCP upstream: nothing here needs it to answer


@pytest.fixture
async def people() -> AsyncIterator[list[FormPerson]]:
    made: list[FormPerson] = []
    yield made
    for p in made:
        await p.close()


async def register(http: aiohttp.ClientSession, g: AppGuard, redirect: str) -> str:
    async with http.post(f"{g.url}/oauth/register", json={"client_name": "Desk", "redirect_uris": [redirect]}) as r:
        data = await r.json()
        assert r.status == 201, data
        return str(data["client_id"])


async def registered(app_factory: AppFactory, http: aiohttp.ClientSession, port: int) -> tuple[AppGuard, str, str]:
    """A guard open to registration and a client registered there with its redirect on `port`:
    (the guard, the client's id, the redirect)."""
    g = await app_factory(oauth_files_policy(NOWHERE), OPEN)
    redirect = f"http://127.0.0.1:{port}/callback"
    return g, await register(http, g, redirect), redirect


def authorize_query(g: AppGuard, client_id: str, redirect: str, challenge: str, tool: str = "files") -> str:
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect, "state": "s",
             "code_challenge": challenge, "code_challenge_method": "S256", "resource": f"{g.url}/mcp/{tool}"}
    return f"{g.url}/oauth/authorize?{urlencode(query)}"


async def consent(people: list[FormPerson], g: AppGuard, client_id: str, redirect: str,
                  user: str = "alice@acme.example") -> tuple[str, str]:
    """The person signs in (development sign-in) and approves: (the code, its PKCE verifier)."""
    verifier, challenge = pkce()
    person = FormPerson(g, user=user)
    people.append(person)
    back = (await person.authorize(authorize_query(g, client_id, redirect, challenge))).params
    return back["code"], verifier


async def redeem(http: aiohttp.ClientSession, g: AppGuard, client_id: str, redirect: str, code: str,
                 verifier: str) -> dict[str, Any]:
    form = {"grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": redirect,
            "code_verifier": verifier}
    async with http.post(f"{g.url}/oauth/token", data=form) as r:
        tokens: dict[str, Any] = await r.json()
        assert r.status == 200, tokens
        return tokens


async def tasks_of(http: aiohttp.ClientSession, g: AppGuard, agent: str) -> list[dict[str, Any]]:
    admin = g.token("root@acme.example", "guard:admin")
    async with http.get(f"{g.url}/v1/tasks", params={"agent": agent}, headers=bearer(admin)) as r:
        assert r.status == 200
        rows: list[dict[str, Any]] = (await r.json())["tasks"]
        return rows


async def dev_session(g: AppGuard) -> tuple[aiohttp.ClientSession, str]:
    """A browser signed in with the development sign-in: (its session, the CSRF token)."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with s.get(f"{g.url}/login") as r:
        assert r.status == 200
        form = Forms(await r.text()).forms["/login/dev"]
    async with s.post(f"{g.url}/login/dev", data={**form, "user": "carol@acme.example"}) as r:
        assert r.status == 200  # followed to /delegations
    async with s.get(f"{g.url}/login/session") as r:
        return s, str((await r.json())["csrf"])


# -- the development sign-in ----------------------------------------------------------
async def test_development_sign_in_is_off_next_to_real_issuers(app_factory: AppFactory, tmp_path: Path) -> None:
    idp = Idp(tmp_path)
    g = await app_factory(oauth_files_policy(NOWHERE), {"issuers": [idp.issuer_config()], "dev_issuer": True})
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(f"{g.url}/login") as r:
            assert r.status == 404
            assert "Development sign-in" not in await r.text()
        async with s.post(f"{g.url}/login/dev", data={"state": "x", "user": "root", "roles": "guard:admin"}) as r:
            assert r.status == 404
    # development mode alone (no issuers, no sso) still offers it, marked as such
    dev = await app_factory(oauth_files_policy(NOWHERE), subdir="dev")
    async with aiohttp.ClientSession() as s, s.get(f"{dev.url}/login") as r:
        assert r.status == 200 and "DEVELOPMENT ONLY" in await r.text()


async def test_a_browser_session_cannot_create_a_task(app_factory: AppFactory) -> None:
    g = await app_factory(oauth_files_policy(NOWHERE))
    s, csrf = await dev_session(g)
    async with s, s.post(f"{g.url}/v1/tasks", json={"purpose": "as carol"}, headers={"X-CSRF-Token": csrf}) as r:
        assert r.status == 401
        assert (await r.json())["code"] == "unauthenticated"
    async with aiohttp.ClientSession() as http:
        assert await tasks_of(http, g, "carol@acme.example") == []


# -- client registration --------------------------------------------------------------
async def test_registration_limits(app_factory: AppFactory, http: aiohttp.ClientSession, store_url: str) -> None:
    g = await app_factory(oauth_files_policy(NOWHERE), {"store": {"url": store_url}, "oauth": {"registration": {
        "mode": "open", "max_clients": 3, "per_source_per_min": 4}}})
    url = f"{g.url}/oauth/register"
    ok = "http://127.0.0.1:40100/callback"
    # too many redirect URIs, too large a request: 400 invalid_client_metadata, nothing kept
    six = [f"http://127.0.0.1:{40100 + i}/callback" for i in range(6)]
    async with http.post(url, json={"redirect_uris": six}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_client_metadata"
    async with http.post(url, json={"redirect_uris": [ok], "software_id": "x" * 8200}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_client_metadata"
    # at most max_clients kept at once
    for _ in range(3):
        await register(http, g, ok)
    async with http.post(url, json={"redirect_uris": [ok]}) as r:
        body = await r.json()
        assert r.status == 400 and body["error"] == "invalid_client_metadata", body
        assert "at most 3" in body["error_description"]
    # the source's fifth attempt within the minute: 429 with Retry-After
    async with http.post(url, json={"redirect_uris": [ok]}) as r:
        assert r.status == 429 and (await r.json())["error"] == "invalid_client_metadata"
        assert 1 <= int(r.headers["Retry-After"]) <= 60


@pytest.mark.parametrize("port", ["5555.evil.com", "55;evil.com", "9" * 1960, "", "123456"])
async def test_a_star_in_a_redirect_pattern_is_a_port(app_factory: AppFactory, http: aiohttp.ClientSession,
                                                      port: str) -> None:
    g = await app_factory(oauth_files_policy(NOWHERE), OPEN)
    async with http.post(f"{g.url}/oauth/register",
                         json={"redirect_uris": [f"http://127.0.0.1:{port}/callback"]}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_redirect_uri"
    await register(http, g, "http://127.0.0.1:65535/callback")


# -- the authorization request and the consent page -------------------------------------
async def test_an_http_tool_is_no_oauth_resource(app_factory: AppFactory, http: aiohttp.ClientSession) -> None:
    g, client_id, redirect = await registered(app_factory, http, 40101)
    _, challenge = pkce()
    async with http.get(authorize_query(g, client_id, redirect, challenge, tool="echo"),
                        allow_redirects=False) as r:
        assert r.status == 303
        back = parse_qs(urlsplit(r.headers["Location"]).query)
    assert r.headers["Location"].startswith(redirect) and back["error"] == ["invalid_target"]


class Metadata:
    """A loopback server of Client ID Metadata Documents (development mode fetches them over http)."""

    def __init__(self) -> None:
        self.docs: dict[str, Any] = {}
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def start(self) -> Metadata:
        async def serve(request: web.Request) -> web.Response:
            doc = self.docs.get(request.match_info["name"])
            if doc is None:
                return web.Response(status=404)
            return web.Response(text=doc if isinstance(doc, str) else json.dumps(doc),
                                content_type="application/json")

        app = web.Application()
        app.router.add_get("/{name}", serve)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self


@pytest.fixture
async def metadata() -> AsyncIterator[Metadata]:
    m = await Metadata().start()
    yield m
    assert m.runner is not None
    await m.runner.cleanup()


async def test_consent_page_csp_is_built_from_the_parsed_redirect_uri(
    app_factory: AppFactory, metadata: Metadata, people: list[FormPerson]
) -> None:
    g = await app_factory(oauth_files_policy(NOWHERE))
    injected = "http://127.0.0.1:1;script-src 'unsafe-inline' */cb"
    plain = "http://127.0.0.1:40102/cb"
    for name, redirect in (("evil.json", injected), ("plain.json", plain)):
        metadata.docs[name] = {"client_id": metadata.url(name), "client_name": name, "redirect_uris": [redirect]}
    csp: dict[str, str] = {}
    for name, redirect in (("evil.json", injected), ("plain.json", plain)):
        person = FormPerson(g)
        people.append(person)
        s = await person.open()
        async with s.get(authorize_query(g, metadata.url(name), redirect, pkce()[1])) as r:  # through sign-in
            if "/login/dev" in Forms(await r.text()).forms:
                form = Forms(await r.text()).forms["/login/dev"]
                async with s.post(f"{g.url}/login/dev", data={**form, "user": "alice"}) as signed:
                    assert signed.status == 200 and "form-action" in signed.headers["Content-Security-Policy"]
                    csp[name] = signed.headers["Content-Security-Policy"]
    directives = {d.split()[0] for d in csp["evil.json"].split(";") if d.strip()}
    assert directives == {"default-src", "style-src", "img-src", "form-action", "frame-ancestors", "base-uri"}
    assert "form-action 'self';" in csp["evil.json"] and "unsafe-inline" not in csp["evil.json"]
    assert "form-action 'self' http://127.0.0.1:40102;" in csp["plain.json"]


async def test_metadata_fetch_errors_do_not_map_loopback_ports(
    app_factory: AppFactory, http: aiohttp.ClientSession, metadata: Metadata
) -> None:
    g = await app_factory(oauth_files_policy(NOWHERE))
    metadata.docs["text.json"] = "not json"
    closed = f"http://127.0.0.1:{free_port()}/client.json"
    answers = set()
    for client_id in (closed, metadata.url("missing.json"), metadata.url("text.json")):
        query = {"response_type": "code", "client_id": client_id, "redirect_uri": "http://127.0.0.1:1/cb"}
        async with http.get(f"{g.url}/oauth/authorize", params=query, allow_redirects=False) as r:
            assert r.status == 400
            page = await r.text()
        answers.add(page.split('id="message">')[1].split("<")[0])
    assert answers == {"the client ID metadata document could not be fetched or is not valid"}


# -- tokens ---------------------------------------------------------------------------
async def test_the_task_is_created_when_the_code_is_redeemed(
    app_factory: AppFactory, http: aiohttp.ClientSession, people: list[FormPerson]
) -> None:
    g, client_id, redirect = await registered(app_factory, http, 40103)
    code, verifier = await consent(people, g, client_id, redirect)
    assert await tasks_of(http, g, f"client:{client_id}") == []  # a code never redeemed leaves nothing active
    await redeem(http, g, client_id, redirect, code, verifier)
    [task] = await tasks_of(http, g, f"client:{client_id}")
    assert task["status"] == "active" and task["requested_by"] == "alice@acme.example"
    assert task["purpose"] == "weekly report" and task["tools"] == ["files"]


async def test_access_tokens_are_for_their_resource_only(
    app_factory: AppFactory, http: aiohttp.ClientSession, people: list[FormPerson]
) -> None:
    g, client_id, redirect = await registered(app_factory, http, 40104)
    code, verifier = await consent(people, g, client_id, redirect)
    tokens = await redeem(http, g, client_id, redirect, code, verifier)
    access = tokens["access_token"]
    claims = claims_of(access)
    assert claims["aud"] == f"{g.url}/mcp/files"
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {**bearer(access), "Accept": "application/json, text/event-stream"}
    async with http.post(f"{g.url}/mcp/notes", json=listing, headers=headers) as r:
        assert r.status == 401
    async with http.get(f"{g.url}/tools/echo/items/1", headers=headers) as r:
        assert r.status == 401
    async with http.get(f"{g.url}/v1/tasks/{claims['txn']}", headers=headers) as r:
        assert r.status == 401
    async with http.post(f"{g.url}/v1/tasks/{claims['txn']}/complete", headers=headers) as r:
        assert r.status == 401
    async with http.post(f"{g.url}/mcp/files", json=listing, headers=headers) as r:
        assert r.status != 401 and "Guard-Call-Id" in r.headers  # accepted (the upstream is not there)


async def test_only_the_client_a_token_was_issued_to_revokes_it(
    app_factory: AppFactory, http: aiohttp.ClientSession, people: list[FormPerson]
) -> None:
    g, alice_client, redirect = await registered(app_factory, http, 40105)
    other_client = await register(http, g, redirect)
    code, verifier = await consent(people, g, alice_client, redirect)
    tokens = await redeem(http, g, alice_client, redirect, code, verifier)
    url = f"{g.url}/oauth/revoke"
    for token in (tokens["refresh_token"], tokens["access_token"]):
        async with http.post(url, data={"token": token, "client_id": other_client}) as r:
            assert r.status == 400 and (await r.json())["error"] == "unauthorized_client"
        async with http.post(url, data={"token": token}) as r:
            assert r.status == 401 and (await r.json())["error"] == "invalid_client"
    [task] = await tasks_of(http, g, f"client:{alice_client}")
    assert task["status"] == "active"
    async with http.post(url, data={"token": tokens["access_token"], "client_id": alice_client}) as r:
        assert r.status == 200
    [task] = await tasks_of(http, g, f"client:{alice_client}")
    assert task["status"] == "completed"


# -- the signing key ---------------------------------------------------------------------
async def test_a_policy_reload_that_raises_a_ttl_extends_the_old_keys_window(
    app_factory: AppFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    policy = oauth_files_policy(NOWHERE)
    config = {"limits": {"task_ttl_s": 60}}
    # a key rotated 300 s ago: under these limits (about 90 s) it no longer verifies
    key_file = tmp_path / "g" / "var" / "signing-key.json"
    key_file.parent.mkdir(parents=True)  # a key is created only in a folder that exists
    rotate(key_file, "EdDSA", 3600)
    ring = json.loads(key_file.read_text())
    ring["keys"][1]["rotated_at"] = time.time() - 300
    old_kid = ring["keys"][1].get("kid")
    key_file.write_text(json.dumps(ring))
    g = await app_factory(policy, config)

    async def kids() -> list[str]:
        async with http.get(f"{g.url}/.well-known/jwks.json") as r:
            return [str(k["kid"]) for k in (await r.json())["keys"]]

    first = await kids()
    assert len(first) == 1
    # a reload raises a tool's timeout to 900 s: a Txn-Token may live that long, so the old key
    # verifies again (for 900 s + 30 s + leeway after its rotation)
    policy["tools"]["notes"]["timeout_s"] = 900
    (g.dir / "policies" / "policy.yaml").write_text(yaml.safe_dump(policy))
    deadline = time.monotonic() + 15
    while len(await kids()) == 1:
        assert time.monotonic() < deadline, "the old key did not come back"
        await asyncio.sleep(0.2)
    now = await kids()
    assert now[0] == first[0] and len(now) == 2
    assert old_kid is None or old_kid in now


async def test_a_development_session_does_not_outlive_development_mode(
    app_factory: AppFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A session made with the development sign-in, in a store the next configuration shares, is
    not a session there once real issuers are configured."""
    store = {"store": {"url": redis_server.url}}
    dev = await app_factory(oauth_files_policy(NOWHERE), store, subdir="dev")
    s, _ = await dev_session(dev)
    async with s:
        real = await app_factory(oauth_files_policy(NOWHERE), {**store, "issuers": [Idp(tmp_path).issuer_config()]},
                                 subdir="real")
        async with s.get(f"{dev.url}/login/session") as r:
            assert r.status == 200
        async with s.get(f"{real.url}/login/session") as r:  # the same cookie (cookies ignore the port)
            assert r.status == 401
        async with s.get(f"{real.url}/v1/tasks") as r:
            assert r.status == 401
