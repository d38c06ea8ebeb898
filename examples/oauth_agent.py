"""An MCP client with no token in its configuration: MCP authorization through guard.

Start guard (with `oauth.registration.mode: open`, as examples/guard.yaml has) and the files MCP
server first (see examples/README.md), then:

    python -m examples.oauth_agent

The official SDK's OAuth client provider meets guard's 401, discovers guard as the authorization
server, registers (RFC 7591) and asks for authorization. A real client would open the printed
URL in the person's browser; this example plays the person too: it signs in with guard's
development sign-in as alice and approves on the consent page (purpose, tools, budget). The
consent creates a task; the client lists and calls tools with its token, then revokes it, which
ends the task, and its next call answers 401:

    authorize at http://127.0.0.1:8080/oauth/authorize?...
    [consent] alice approved: task task_..., agent client:client_...
    [allow]   read_file             -> # Week 1 ...
    [revoked] the next call answers 401

The exit code is 0 when every answer was the expected one, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

__all__ = ["main", "run"]

PERSON = "alice@acme.example"
REDIRECT = "http://127.0.0.1:9310/callback"  # where a desktop client would listen for the redirect
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


class Tokens:
    """The client's token storage (a real client keeps it on disk)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def _form(html: str, action: str) -> dict[str, str]:
    start = html.index(f'action="{action}"')
    return {k: v for k, v in _HIDDEN.findall(html[start:html.index("</form>", start)])}


async def play_alice(guard_url: str, url: str) -> str:
    """What alice does in her browser: sign in (development sign-in), approve. Returns where
    guard sends the browser back to: the client's redirect URI with the code."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(url) as r:  # -> the consent page -> the sign-in page
            page = await r.text()
        login = _form(page, "/login/dev")
        async with http.post(f"{guard_url}/login/dev", data={**login, "user": PERSON}) as r:
            page = await r.text()  # -> back to the consent page, signed in
        consent = [*_form(page, "/oauth/consent").items(), ("decision", "approve"),
                   ("purpose", "weekly research report, from my desktop"), ("tools", "files"),
                   ("max_calls", "10")]
        async with http.post(f"{guard_url}/oauth/consent", data=consent, allow_redirects=False) as r:
            return r.headers["Location"]


async def run(guard_url: str) -> int:
    surprises = 0
    storage = Tokens()
    back: list[str] = []

    async def redirect_handler(url: str) -> None:
        print(f"authorize at {url[:80]}...")
        back.append(await play_alice(guard_url, url))

    async def callback_handler() -> AuthorizationCodeResult:
        params = {k: v[0] for k, v in parse_qs(urlsplit(back.pop()).query).items()}
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    metadata = OAuthClientMetadata.model_validate({
        "client_name": "Research desktop (example)", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"})
    auth = OAuthClientProvider(f"{guard_url}/mcp/files", metadata, storage, redirect_handler, callback_handler)
    http = httpx2.AsyncClient(auth=auth, timeout=30)
    async with http, Client(streamable_http_client(f"{guard_url}/mcp/files", http_client=http)) as client:
        result = await client.call_tool("read_file", {"path": "reports/2026-w01.md"})
        text = "".join(getattr(b, "text", "") for b in result.content).strip()
        client_id = storage.client.client_id if storage.client else "?"
        print(f"[consent] {PERSON} approved: agent client:{client_id}")
        print(f"[allow]   read_file             -> {text.splitlines()[0] if text else ''}")
        surprises += not text.startswith("# Week 1")
    assert storage.tokens is not None
    async with aiohttp.ClientSession() as plain:
        revoke = {"token": storage.tokens.access_token, "client_id": client_id}  # only its own client revokes a token
        async with plain.post(f"{guard_url}/oauth/revoke", data=revoke) as r:
            surprises += r.status != 200
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        async with plain.post(f"{guard_url}/mcp/files", json=body,
                              headers={"Authorization": f"Bearer {storage.tokens.access_token}"}) as r:
            print(f"[revoked] the next call answers {r.status}")
            surprises += r.status != 401
    return surprises


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an MCP client authorized by a person's consent at guard")
    parser.add_argument("--guard-url", default="http://127.0.0.1:8080")
    parser.add_argument("--config", default=None, help="ignored: the client needs no token and no config")
    args = parser.parse_args(argv)
    try:
        surprises = asyncio.run(run(args.guard_url.rstrip("/")))
    except (aiohttp.ClientError, httpx2.HTTPError) as e:
        sys.exit(f"cannot reach guard: {e}")
    print("\nevery answer was the expected one" if not surprises else f"\n{surprises} surprise(s)")
    sys.exit(1 if surprises else 0)


if __name__ == "__main__":
    main()
