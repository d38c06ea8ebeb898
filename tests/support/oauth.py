"""What the MCP authorization tests share: a policy for the `files` MCP tool that lets OAuth
clients read, the official SDK's OAuth client provider wired to a "person" who signs in and
decides on the consent page, and a small reader of the hidden fields of guard's HTML forms."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from examples.oauth_agent import Tokens as Tokens  # the SDK token storage a client keeps (re-exported)
from tests.support.guard import Guard, GuardLike

PERSON = "alice@acme.example"
REDIRECT = "http://127.0.0.1:{port}/callback"


def oauth_files_policy(upstream: str, **extra: Any) -> dict[str, Any]:
    return {
        "tools": {"files": {"kind": "mcp", "upstream": upstream},
                  "notes": {"kind": "mcp", "upstream": upstream},
                  "echo": {"kind": "http", "upstream": "http://127.0.0.1:9", "actions": {
                      "read": {"method": "GET", "path": "/items/{id}"}}}},
        "rules": [
            {"id": "client-reads", "effect": "allow",
             "match": {"agent": ["client:*"], "tool": "files", "action": ["search_files", "read_file", "whoami"]}},
            {"id": "no-deletes", "effect": "deny", "match": {"tool": "files", "action": ["delete_file"]}},
        ],
        **extra,
    }


class Forms(HTMLParser):
    """The forms of a page: action -> {name: value} of their inputs (and buttons)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, str]] = {}
        self._action: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._action = a.get("action", "")
            self.forms[self._action] = {}
        elif tag == "input" and self._action is not None and a.get("type") == "hidden":
            self.forms[self._action][a.get("name", "")] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._action = None


@dataclass
class Redirected:
    """Where guard sent the browser back to the client: the query of the redirect URI."""

    url: str

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.url).query).items()}


@dataclass
class FormPerson:
    """A person at guard's pages with a plain HTTP client (a cookie jar, no script): signs in with
    the development sign-in and answers the consent page with `decide`."""

    guard: GuardLike
    user: str = PERSON
    decide: dict[str, Any] = field(default_factory=lambda: {"decision": "approve", "purpose": "weekly report",
                                                              "tools": ["files"]})
    session: aiohttp.ClientSession | None = None
    consent_html: str = ""

    async def open(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def authorize(self, url: str) -> Redirected:
        """Follow the authorization URL through sign-in and consent to the client's redirect."""
        http = await self.open()
        async with http.get(url, allow_redirects=False) as r:
            assert r.status == 303, await r.text()
            location = r.headers["Location"]
        return await self._follow(location)

    async def _follow(self, location: str) -> Redirected:
        http = await self.open()
        base = self.guard.url
        for _ in range(10):
            if not location.startswith("/"):
                return Redirected(location)
            async with http.get(base + location, allow_redirects=False) as r:
                if r.status in (302, 303):
                    location = r.headers["Location"]
                    continue
                text = await r.text()
                assert r.status == 200, text
            forms = Forms(text)
            if "/login/dev" in forms.forms:
                data: Any = {**forms.forms["/login/dev"], "user": self.user}
                async with http.post(base + "/login/dev", data=data, allow_redirects=False) as r:
                    assert r.status == 303, await r.text()
                    location = r.headers["Location"]
                continue
            assert "/oauth/consent" in forms.forms, text
            self.consent_html = text
            fields = [(k, v) for k, v in forms.forms["/oauth/consent"].items()]
            for k, v in self.decide.items():
                fields += [(k, x) for x in v] if isinstance(v, list) else [(k, str(v))]
            async with http.post(base + "/oauth/consent", data=fields, allow_redirects=False) as r:
                assert r.status == 303, await r.text()
                location = r.headers["Location"]
        raise AssertionError("too many redirects")


class AuthorizationRefused(Exception):
    def __init__(self, params: dict[str, str]) -> None:
        super().__init__(f"{params.get('error')}: {params.get('error_description')}")
        self.params = params


def provider(guard: Guard, storage: Tokens, authorize: Callable[[str], Awaitable[Redirected]],
             client_name: str = "Research desktop", redirect_port: int = 33418,
             metadata_url: str | None = None) -> OAuthClientProvider:
    """The SDK's OAuth client provider for guard's `/mcp/files`; `authorize` plays the browser."""
    back: list[Redirected] = []

    async def redirect_handler(url: str) -> None:
        back.append(await authorize(url))

    async def callback_handler() -> AuthorizationCodeResult:
        params = back.pop().params
        if "code" not in params:
            raise AuthorizationRefused(params)
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    metadata = OAuthClientMetadata.model_validate({
        "client_name": client_name, "redirect_uris": [REDIRECT.format(port=redirect_port)],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"})
    return OAuthClientProvider(f"{guard.url}/mcp/files", metadata, storage, redirect_handler, callback_handler,
                               client_metadata_url=metadata_url)


@asynccontextmanager
async def mcp_client(guard: Guard, auth: OAuthClientProvider, tool: str = "files") -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(f"{guard.url}/mcp/{tool}", http_client=http)) as c:
        yield c


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


def refusal_in(exc: BaseException | None) -> AuthorizationRefused | None:
    """The AuthorizationRefused behind what the SDK raised (it may wrap it in groups or chains)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, AuthorizationRefused):
            return e
        todo += [*getattr(e, "exceptions", ()), e.__cause__, e.__context__]
    return None


async def refused_authorization(guard: Guard, auth: OAuthClientProvider) -> AuthorizationRefused:
    """Connect with the SDK and expect the authorization to come back refused."""
    caught: BaseException | None = None
    try:
        async with mcp_client(guard, auth) as client:
            await client.list_tools()
    except BaseException as e:  # the SDK wraps the refusal in task groups
        caught = e
    found = refusal_in(caught)
    assert found is not None, caught
    return found
