"""MCP authorization with people in a real browser: the organisation's IdP (npm oidc-provider)
where the person signs in, guard's consent page where they approve or refuse, "my delegations"
where they end a delegation, and the review page they reach signed in. The MCP client is the
official SDK's OAuth client provider; Debian's chromium is driven by Playwright."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web

from tests.e2e.test_oauth_mcp import text_of
from tests.e2e.test_ui_browser import ARTIFACTS, browser
from tests.support.guard import Guard
from tests.support.oauth import (
    Redirected,
    Tokens,
    mcp_client,
    oauth_files_policy,
    provider,
    refused_authorization,
)
from tests.support.oidc import OidcProvider, oidc_provider_missing_reason
from tests.support.process import free_port, require

__all__ = ["browser"]  # a fixture shared with other test modules
ALICE = "alice@acme.example"
PASSWORD = "correct horse battery staple"
HOSTILE = "<img src=x onerror=\"document.title='owned'\">quarterly numbers"
CLIENT_PORT = free_port()
EVIL_ORIGIN = "http://127.0.0.1:1"  # another origin on the same site (the port differs)


@pytest.fixture
def signed_in_guard(guard_factory: Any, mcp_server: str, tmp_path: Path) -> Any:
    """A guard whose people sign in at a real IdP (sso), the IdP started by the test."""
    require(oidc_provider_missing_reason())
    started: list[OidcProvider] = []

    def make(**config: Any) -> tuple[Guard, OidcProvider]:
        idp = OidcProvider(tmp_path / "idp", "idp.mjs", {})
        sso = {"issuer": idp.issuer, "client_id": "guard", "client_secret": {"env": "GUARD_SSO_SECRET"},
               "scopes": ["openid", "email", "roles"], "roles_claim": "roles"}
        guard: Guard = guard_factory(oauth_files_policy(mcp_server),
                                     {"sso": sso, "oauth": {"registration": {"mode": "open"}},
                                      "dev_issuer": True, **config},  # the test's admin tokens (loopback only)
                                     env={"GUARD_SSO_SECRET": "idp-client-secret"}, start=False)
        idp.config = {
            "clients": [{"client_id": "guard", "client_secret": "idp-client-secret",
                         "redirect_uris": [f"{guard.url}/login/callback"]}],
            "accounts": {ALICE: {"password": PASSWORD, "roles": ["guard:auditor", "guard:approver"]}},
        }
        started.append(idp.start())
        return guard.start(), idp

    yield make
    for idp in started:
        idp.stop()


class BrowserPerson:
    """Alice in chromium: signs in at the IdP when asked, then acts on guard's consent page."""

    def __init__(self, page: Any, guard: Guard, decide: Callable[[Any], Awaitable[None]]) -> None:
        self.page = page
        self.guard = guard
        self.decide = decide
        self.dialogs: list[str] = []
        self.runner: web.AppRunner
        self._dismissals: list[asyncio.Future[Any]] = []
        page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        self._dismissals.append(asyncio.ensure_future(dialog.dismiss()))

    async def start(self) -> BrowserPerson:
        """The MCP client's loopback listener for the redirect back (what a desktop client runs)."""
        async def callback(request: web.Request) -> web.Response:
            return web.Response(text="You can close this tab.")

        app = web.Application()
        app.router.add_get("/callback", callback)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", CLIENT_PORT).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def authorize(self, url: str) -> Redirected:
        page = self.page
        await page.goto(url)
        if await page.locator("#password").count():  # the IdP's sign-in (only once: then its session)
            await page.fill("#login", ALICE)
            await page.fill("#password", PASSWORD)
            await page.click("#submit")
        await page.wait_for_selector("form#consent")
        async with page.expect_navigation(url=f"http://127.0.0.1:{CLIENT_PORT}/**"):
            await self.decide(page)
        return Redirected(page.url)


async def approve(page: Any) -> None:
    # the client's name and redirect host are text; the person sets the purpose and the budget
    assert await page.locator("#client-name").text_content() == HOSTILE
    assert await page.locator("#redirect-host").text_content() == f"127.0.0.1:{CLIENT_PORT}"
    assert await page.locator("main img").count() == 0
    assert await page.locator("input[name=tools][value=files]").is_checked()
    await page.fill("#purpose", HOSTILE)
    await page.fill("#max_calls", "20")
    await page.screenshot(path=str(ARTIFACTS / "oauth-consent.png"), full_page=True)
    await page.click("#approve")


async def refuse(page: Any) -> None:
    await page.click("#refuse")


async def test_sign_in_consent_calls_and_my_delegations(
    signed_in_guard: Any, browser: Any, http: aiohttp.ClientSession
) -> None:
    guard, idp = signed_in_guard()
    context = await browser.new_context(viewport={"width": 1200, "height": 800})
    alice = await BrowserPerson(await context.new_page(), guard, approve).start()
    storage = Tokens()
    auth = provider(guard, storage, alice.authorize, client_name=HOSTILE, redirect_port=CLIENT_PORT)
    async with mcp_client(guard, auth) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"search_files", "read_file", "whoami"}
        assert "arxiv" in text_of(await client.call_tool("read_file", {"path": "notes/sources.txt"}))
    assert storage.tokens is not None and storage.client is not None
    page = alice.page
    assert await page.title() != "owned" and alice.dialogs == []

    # the session cookie: HttpOnly, SameSite=Lax, short-lived (Secure only off loopback)
    cookies = {c["name"]: c for c in await context.cookies(guard.url)}
    session = cookies["guard_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert session["expires"] > 0 and "guard_login" not in cookies

    # my delegations: the task, with the hostile purpose as text
    resp = await page.goto(f"{guard.url}/delegations")
    assert resp is not None and "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    assert resp.headers["x-frame-options"] == "DENY"
    row = page.locator("tr.delegation")
    assert await row.count() == 1
    assert await row.locator("td.purpose").text_content() == HOSTILE
    assert await row.locator("td.agent").text_content() == f"client:{storage.client.client_id}"
    assert await page.locator("main img").count() == 0
    task_id = await row.get_attribute("data-task-id")
    await page.screenshot(path=str(ARTIFACTS / "oauth-delegations.png"), full_page=True)

    # another origin of the same site cannot end it (no CSRF token), nor frame the page
    evil = await context.new_page()

    async def evil_page(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=(
            f'<form id="f" method="post" action="{guard.url}/delegations/{task_id}/end"></form>'
            f'<iframe id="frame" src="{guard.url}/delegations"></iframe>'
            '<script>document.getElementById("f").submit()</script>'))

    await evil.route(f"{EVIL_ORIGIN}/**", evil_page)
    async with evil.expect_response(f"{guard.url}/delegations/{task_id}/end") as posted:
        await evil.goto(f"{EVIL_ORIGIN}/attack")
    assert (await posted.value).status == 403
    for frame in evil.frames[1:]:
        assert "My delegations" not in (await frame.content())
    await evil.close()
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {admin}"}) as r:
        assert (await r.json())["status"] == "active"

    # the review page: alice is signed in, no token pasted
    await page.goto(f"{guard.url}/ui")
    await page.wait_for_selector("tr.task-row")
    assert "signed in as " + ALICE in (await page.locator("#who").text_content() or "")
    assert await page.locator(f"tr.task-row[data-task-id='{task_id}'] td.purpose").text_content() == HOSTILE
    assert await page.evaluate("sessionStorage.length") == 0
    # the API takes the session for what the page does, but a request that changes state needs its CSRF token
    decide = """async (csrf) => {
        const headers = {"Content-Type": "application/json"};
        if (csrf) headers["X-CSRF-Token"] = csrf;
        const r = await fetch("/v1/approvals/apr_nosuch/decision",
                              {method: "POST", headers, body: JSON.stringify({decision: "approve"})});
        return [r.status, (await r.json()).code];
    }"""
    assert await page.evaluate(decide, None) == [403, "forbidden"]
    csrf = await page.evaluate("fetch('/login/session').then((r) => r.json()).then((s) => s.csrf)")
    assert await page.evaluate(decide, csrf) == [404, "not_found"]  # past authentication: no such approval

    # alice ends the delegation: the client's next call is a 401, and its refresh fails
    await page.goto(f"{guard.url}/delegations")
    await page.click(f"tr.delegation[data-task-id='{task_id}'] button.end")
    await page.wait_for_selector(f"tr.delegation[data-task-id='{task_id}'] .badge.revoked")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with http.post(f"{guard.url}/mcp/files", json=body,
                         headers={"Authorization": f"Bearer {storage.tokens.access_token}",
                                  "Accept": "application/json, text/event-stream"}) as r:
        assert r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    async with http.post(f"{guard.url}/oauth/token", data={
            "grant_type": "refresh_token", "refresh_token": storage.tokens.refresh_token or "",
            "client_id": storage.client.client_id}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_grant"
    async with http.get(f"{guard.url}/v1/tasks/{task_id}/audit",
                        headers={"Authorization": f"Bearer {guard.token('a', 'guard:auditor')}"}) as r:
        events = [(rec["event"], rec.get("actor")) for rec in (await r.json())["records"]]
    key = f"{idp.issuer}#{ALICE}"  # her IdP's iss and sub; her verified email is what pages show
    assert events[0] == ("task_created", key) and ("task_revoked", key) in events
    await alice.stop()
    await context.close()


async def test_refusal_in_the_browser(signed_in_guard: Any, browser: Any, http: aiohttp.ClientSession) -> None:
    guard, _idp = signed_in_guard()
    context = await browser.new_context()
    alice = await BrowserPerson(await context.new_page(), guard, refuse).start()
    storage = Tokens()
    refused = await refused_authorization(guard, provider(guard, storage, alice.authorize,
                                                          redirect_port=CLIENT_PORT))
    assert refused.params["error"] == "access_denied" and refused.params["iss"] == guard.url
    assert storage.tokens is None
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks", headers={"Authorization": f"Bearer {admin}"}) as r:
        assert (await r.json())["tasks"] == []
    await alice.stop()
    await context.close()


async def test_consent_post_needs_the_session_csrf_token(
    signed_in_guard: Any, browser: Any, http: aiohttp.ClientSession
) -> None:
    """A consent post without the page's CSRF token, or from another origin, creates nothing."""
    guard, _idp = signed_in_guard()
    context = await browser.new_context()
    page = await context.new_page()
    posted: list[Any] = []

    async def hijack(page_: Any) -> None:  # submit the consent form with a forged token instead
        await page_.evaluate("document.querySelector('form#consent input[name=csrf]').value = 'forged'")
        async with page_.expect_response(f"{guard.url}/oauth/consent") as resp:
            await page_.click("#approve")
        posted.append(await resp.value)

    alice = await BrowserPerson(page, guard, hijack).start()
    storage = Tokens()
    auth = provider(guard, storage, alice.authorize, redirect_port=CLIENT_PORT)
    http_client = httpx2.AsyncClient(auth=auth)
    task = asyncio.ensure_future(refused_or_hung(guard, http_client))
    for _ in range(600):
        if posted:
            break
        await asyncio.sleep(0.05)
    task.cancel()
    await http_client.aclose()
    assert posted and posted[0].status == 403
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks", headers={"Authorization": f"Bearer {admin}"}) as r:
        assert (await r.json())["tasks"] == []
    await alice.stop()
    await context.close()


async def refused_or_hung(guard: Guard, client: httpx2.AsyncClient) -> None:
    with contextlib.suppress(BaseException):  # cancelled while waiting for a redirect that never comes
        await client.post(f"{guard.url}/mcp/files", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})


async def test_sign_in_with_the_idp_down_says_so(signed_in_guard: Any, http: aiohttp.ClientSession) -> None:
    guard, idp = signed_in_guard()
    idp.stop()
    async with http.get(f"{guard.url}/login", allow_redirects=False) as r:
        assert r.status == 502 and "identity provider does not answer" in await r.text()
    async with http.get(f"{guard.url}/delegations", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login")
