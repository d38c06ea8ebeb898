"""People who sign in through `sso` are their IdP's `iss` + `sub` (OpenID Connect Core §5.7), not
the `email` claim: an account of the IdP that claims alice's address without the IdP having
verified it is someone else, and cannot see or end her delegations. The IdP is a real
oidc-provider; people sign in with a plain HTTP client (its login form, no browser)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.oauth import Forms, oauth_files_policy, pkce
from tests.support.oidc import OidcProvider, oidc_provider_missing_reason
from tests.support.process import free_port, require

ALICE = "alice@acme.example"
PASSWORD = "correct horse battery staple"
REDIRECT = "http://127.0.0.1:40111/callback"


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[OidcProvider]:
    require(oidc_provider_missing_reason())
    provider = OidcProvider(tmp_path / "idp", "idp.mjs", {})
    yield provider
    provider.stop()


@pytest.fixture
async def browsers() -> AsyncIterator[list[aiohttp.ClientSession]]:
    made: list[aiohttp.ClientSession] = []
    yield made
    for s in made:
        await s.close()


async def sign_in(browsers: list[aiohttp.ClientSession], g: AppGuard, login: str) -> tuple[aiohttp.ClientSession,
                                                                                              dict[str, Any]]:
    """`login` signs in at the IdP from guard's /login: (their browser, what /login/session says)."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    browsers.append(s)
    async with s.get(f"{g.url}/login", params={"next": "/login/session"}) as r:
        assert r.status == 200 and "/interaction/" in str(r.url), await r.text()
        form_url = f"{r.url}/login"
    async with s.post(form_url, data={"login": login, "password": PASSWORD}) as r:
        session: dict[str, Any] = await r.json()
        assert r.status == 200 and str(r.url).startswith(g.url), session
    return s, session


async def test_people_are_keyed_on_iss_and_sub(
    app_factory: AppFactory, idp: OidcProvider, browsers: list[aiohttp.ClientSession], http: aiohttp.ClientSession
) -> None:
    port = free_port()
    idp.config = {
        "clients": [{"client_id": "guard", "client_secret": "idp-secret",
                     "redirect_uris": [f"http://127.0.0.1:{port}/login/callback"]}],
        "accounts": {ALICE: {"password": PASSWORD, "email": ALICE},
                     "mallory": {"password": PASSWORD, "email": ALICE, "email_verified": False}},
    }
    idp.start()
    sso = {"issuer": idp.issuer, "client_id": "guard", "client_secret": {"env": "GUARD_SSO_SECRET"},
           "scopes": ["openid", "email", "roles"]}
    g = await app_factory(oauth_files_policy("http://127.0.0.1:9"), {
        "listen": {"port": port}, "sso": sso, "oauth": {"registration": {"mode": "open"}}},
        env={"GUARD_SSO_SECRET": "idp-secret"})

    alice, alice_session = await sign_in(browsers, g, ALICE)
    assert alice_session["sub"] == f"{idp.issuer}#{ALICE}" and alice_session["name"] == ALICE
    # alice delegates to a client: the task the code gives names her key
    async with http.post(f"{g.url}/oauth/register", json={"redirect_uris": [REDIRECT]}) as r:
        client_id = (await r.json())["client_id"]
    verifier, challenge = pkce()
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "s",
             "code_challenge": challenge, "code_challenge_method": "S256", "resource": f"{g.url}/mcp/files"}
    async with alice.get(f"{g.url}/oauth/authorize?{urlencode(query)}") as r:
        fields = Forms(await r.text()).forms["/oauth/consent"]
    async with alice.post(f"{g.url}/oauth/consent", data={**fields, "decision": "approve", "tools": "files"},
                          allow_redirects=False) as r:
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    async with http.post(f"{g.url}/oauth/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": client_id, "redirect_uri": REDIRECT,
            "code_verifier": verifier}) as r:
        assert r.status == 200
    async with alice.get(f"{g.url}/delegations") as r:
        page = await r.text()
    [task_id] = [line.split('"')[0] for line in page.split('data-task-id="')[1:]]

    # mallory's IdP account says email alice@…, unverified: mallory is mallory, shown by key
    mallory, mallory_session = await sign_in(browsers, g, "mallory")
    assert mallory_session["sub"] == f"{idp.issuer}#mallory" and mallory_session["name"] == mallory_session["sub"]
    async with mallory.get(f"{g.url}/delegations") as r:
        page = await r.text()
        assert task_id not in page and ALICE not in page
    async with mallory.post(f"{g.url}/delegations/{task_id}/end", data={"csrf": mallory_session["csrf"]},
                            allow_redirects=False) as r:
        assert r.status == 404
    async with alice.get(f"{g.url}/delegations") as r:
        assert 'class="badge active"' in await r.text()  # still hers, still active
