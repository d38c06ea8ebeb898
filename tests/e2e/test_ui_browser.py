"""The review page at /ui in a real headless browser: Debian's chromium driven by Playwright
(no browser download). Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import Guard
from tests.support.process import ROOT, require
from tests.support.upstream import Upstream

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "tests" / "artifacts"
HOSTILE = "<img src=x onerror=alert(1)>"
REVIEWER = "bob@acme.example"


def _missing() -> str | None:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    require(_missing())
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        await b.close()


async def pending_approval(http: aiohttp.ClientSession, guard: Guard, token: str) -> dict[str, Any]:
    for _ in range(200):
        async with http.get(f"{guard.url}/v1/approvals?status=pending", headers=bearer(token)) as r:
            items = (await r.json())["approvals"]
        if items:
            return dict(items[0])
        await asyncio.sleep(0.05)
    raise AssertionError("no pending approval appeared")


async def test_review_page(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, browser: Any
) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT), purpose=HOSTILE)
    await create_task(http, guard.url, guard.token(AGENT), purpose="quarterly numbers")
    auth = bearer(task["task_token"])
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=auth) as r:
        assert r.status == 200
    reviewer = guard.token(REVIEWER, "guard:auditor", "guard:approver")

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    dialogs: list[str] = []
    dismissals: list[asyncio.Future[Any]] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dismissals.append(asyncio.ensure_future(dialog.dismiss()))

    page.on("dialog", on_dialog)
    resp = await page.goto(f"{guard.url}/ui")
    assert resp is not None and resp.status == 200
    csp = resp.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'",
                      "base-uri 'none'"):
        assert directive in csp
    assert resp.headers["x-content-type-options"] == "nosniff"

    # the token goes in the form, into session storage, never into the URL
    await page.fill("#token", reviewer)
    await page.click("#token-form button[type=submit]")
    await page.wait_for_selector("tr.task-row")
    assert reviewer not in page.url
    assert await page.evaluate("sessionStorage.getItem('guard.token')") == reviewer
    assert await page.evaluate("localStorage.length") == 0

    # the task list: the hostile purpose is text, not markup, and nothing ran
    row = page.locator(f"tr.task-row[data-task-id='{task['task_id']}']")
    assert await row.locator("td.purpose").text_content() == HOSTILE
    assert await page.locator("#tasks img").count() == 0
    assert await row.locator("td.calls").text_content() == "1"
    assert await page.locator("tr.task-row").count() == 2
    assert "null" not in (await page.locator("main").text_content() or "")
    await page.screenshot(path=str(ARTIFACTS / "ui-tasks.png"), full_page=True)

    await page.select_option("#filter-status", "completed")
    await page.click("#filters button[type=submit]")
    await page.get_by_text("No tasks match.").wait_for()
    assert await page.locator("tr.task-row").count() == 0
    await page.select_option("#filter-status", "active")
    await page.fill("#filter-agent", AGENT)
    await page.click("#filters button[type=submit]")
    # a locator wait, not wait_for_function: the page's CSP (rightly) forbids the eval that polls it
    await page.locator("tr.task-row").nth(1).wait_for()
    assert await page.locator("tr.task-row").count() == 2

    # the task page: timeline, chain and the verified state
    await page.click(f"a[href='#/task/{task['task_id']}']")
    await page.wait_for_selector("#timeline tr.audit-row")
    assert await page.locator("#task-purpose").text_content() == HOSTILE
    events = await page.locator("#timeline td.event").all_text_contents()
    assert events[:3] == ["task_created", "call_decided", "call_forwarded"]
    assert "verified" in (await page.locator("#verified").text_content() or "")
    assert await page.locator("#chain li.chain-node").count() == 1
    await page.screenshot(path=str(ARTIFACTS / "ui-task.png"), full_page=True)

    # a held call (Prefer: wait) is released by an approve click
    held = asyncio.ensure_future(http.post(
        f"{guard.url}/tools/echo/pay", json={"amount": 500, "memo": HOSTILE},
        headers={**auth, "Prefer": "wait=30"}))
    approval = await pending_approval(http, guard, reviewer)
    await page.goto(f"{guard.url}/ui#/approvals")
    card = page.locator(f"section.approval[data-approval-id='{approval['approval_id']}']")
    await card.wait_for()
    args = json.loads(await card.locator("pre.args").text_content() or "null")
    assert args == {"amount": 500, "memo": HOSTILE}
    assert await card.locator("dd.purpose").text_content() == HOSTILE
    assert (await card.locator("h3").text_content() or "").startswith("echo.pay")
    await page.screenshot(path=str(ARTIFACTS / "ui-approvals.png"), full_page=True)
    forwarded_before = len(upstream.requests)

    await card.locator("button.approve").click()
    await card.locator(".result").filter(has_text="approved").wait_for()
    assert await card.locator("h3 .badge").all_text_contents() == ["approved"]  # not "pending" any more
    assert await card.locator("button.approve").is_disabled() and await card.locator("button.deny").is_disabled()
    r = await asyncio.wait_for(held, 30)
    async with r:
        assert r.status == 200, await r.text()
    assert len(upstream.requests) == forwarded_before + 1
    assert upstream.requests[-1].path_qs == "/pay"
    await page.screenshot(path=str(ARTIFACTS / "ui-approved.png"), full_page=True)

    # the agent inventory: who acted, how often, for whom
    await page.goto(f"{guard.url}/ui#/agents")
    agent_row = page.locator(f"tr.agent-row[data-agent='{AGENT}']")
    await agent_row.wait_for()
    assert await agent_row.locator("td.calls").nth(1).text_content() == "2"
    assert "null" not in (await page.locator("main").text_content() or "")
    await page.screenshot(path=str(ARTIFACTS / "ui-agents.png"), full_page=True)
    assert dialogs == []
    await page.close()


async def test_ui_needs_a_token_and_guards_its_assets(guard_factory: Any, upstream: Upstream,
                                                      http: aiohttp.ClientSession) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    async with http.get(f"{guard.url}/ui/app.js") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        assert "innerHTML" not in await r.text()
    async with http.get(f"{guard.url}/ui/..%2Fapp.py") as r:
        assert r.status == 404
    async with http.get(f"{guard.url}/v1/tasks") as r:
        assert r.status == 401 and r.headers["Content-Type"] == "application/problem+json"
    async with http.get(f"{guard.url}/v1/tasks", headers=bearer(guard.token(AGENT))) as r:
        assert r.status == 403


async def test_a_changed_tool_definition_shows_beside_its_pin(
    guard_factory: Any, http: aiohttp.ClientSession, browser: Any, tmp_path: Path
) -> None:
    from tests.app.test_tool_pinning import HONEST, RUG_PULL, Session, policy, rug_pull_server
    from tests.support.process import free_port

    port = free_port()
    with rug_pull_server(tmp_path, port, HONEST) as url:
        guard: Guard = guard_factory(policy(url))
        task = await create_task(http, guard.url, guard.token(AGENT))
        await (await Session(http, guard, task["task_token"]).open()).tools()
    with rug_pull_server(tmp_path, port, RUG_PULL):
        session = await Session(http, guard, task["task_token"]).open()
        assert "read_file" not in await session.tools()
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{guard.url}/ui")
        await page.fill("#token", guard.token("root@acme.example", "guard:admin", "guard:auditor"))
        await page.click("#token-form button[type=submit]")
        await page.goto(f"{guard.url}/ui#/pins")
        card = page.locator("section.pin-change[data-tool='files'][data-name='read_file']")
        await card.wait_for()
        pinned = json.loads(await card.locator(".pinned pre.definition").text_content() or "null")
        current = json.loads(await card.locator(".current pre.definition").text_content() or "null")
        assert pinned["description"] == HONEST and current["description"] == RUG_PULL
        await page.screenshot(path=str(ARTIFACTS / "ui-pins.png"), full_page=True)
        await card.locator("button.accept").click()
        await card.locator(".result").filter(has_text="accepted").wait_for()
        assert (await session.tools())["read_file"]["description"] == RUG_PULL
        await page.close()


async def test_the_agents_view_shows_static_secrets_age_and_exception(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, browser: Any, tmp_path: Path
) -> None:
    secret = tmp_path / "notes-key"
    secret.write_text("a-static-secret\n")
    policy = echo_policy(upstream.url)
    policy["tools"]["echo"]["credential"] = {
        "mode": "static", "header": "X-Api-Key", "secret": {"file": str(secret)},
        "exception": {"owner": REVIEWER, "reason": "no OAuth yet", "expires": "2099-03-01T00:00:00Z"}}
    guard: Guard = guard_factory(policy, config={"credentials_hygiene": {"max_secret_age_s": 86400}})
    await create_task(http, guard.url, guard.token(AGENT))
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"{guard.url}/ui")
    await page.fill("#token", guard.token(REVIEWER, "guard:auditor"))
    await page.click("#token-form button[type=submit]")
    await page.goto(f"{guard.url}/ui#/agents")
    cell = page.locator(f"tr.agent-row[data-agent='{AGENT}'] td.secrets")
    await cell.wait_for()
    assert await cell.text_content() == f"echo: 0d exception until 2099-03-01 ({REVIEWER})"
    assert "a-static-secret" not in (await page.content())
    await page.close()


async def test_an_admin_revokes_a_task_and_a_decided_card_changes_state(
    guard_factory: Any, upstream: Upstream, http: aiohttp.ClientSession, browser: Any
) -> None:
    guard: Guard = guard_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT), purpose="monthly close")
    auth = bearer(task["task_token"])
    admin = guard.token(REVIEWER, "guard:admin", "guard:approver")
    async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 900}, headers=auth) as r:
        assert r.status == 403
    approval = await pending_approval(http, guard, admin)

    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    await page.goto(f"{guard.url}/ui#/approvals")
    await page.fill("#token", admin)
    await page.click("#token-form button[type=submit]")
    card = page.locator(f"section.approval[data-approval-id='{approval['approval_id']}']")
    await card.wait_for()
    assert await card.locator("h3 .badge").text_content() == "pending"
    await card.locator("button.deny").click()
    await page.locator(f"section.approval[data-status='denied'][data-approval-id='{approval['approval_id']}']"
                       ).wait_for()
    assert await card.locator("h3 .badge").text_content() == "denied"  # the card says what the guard now holds
    assert await card.locator("button.approve").is_disabled() and await card.locator("button.deny").is_disabled()
    async with http.get(f"{guard.url}/v1/approvals/{approval['approval_id']}", headers=bearer(admin)) as r:
        assert (await r.json())["status"] == "denied"

    await page.goto(f"{guard.url}/ui#/task/{task['task_id']}")
    await page.locator("#revoke button").wait_for()
    await page.fill("#revoke-reason", "left the company")
    await page.click("#revoke button")
    await page.locator("#timeline td.event").filter(has_text="task_revoked").wait_for()
    assert await page.locator("dl.facts .badge").first.text_content() == "revoked"
    assert await page.locator("#revoke").count() == 0  # nothing left to revoke
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=auth) as r:
        assert r.status == 403 and (await r.json())["code"] == "task_inactive"
    await page.screenshot(path=str(ARTIFACTS / "ui-revoked.png"), full_page=True)
    await page.close()
