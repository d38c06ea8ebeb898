"""`/metrics`: Prometheus text from guard served in process, counting what a real call did."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import pytest

from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.guard import GuardLike
from tests.support.process import free_port
from tests.support.upstream import Upstream


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text format, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


async def scrape(http: aiohttp.ClientSession, guard: GuardLike) -> str:
    async with http.get(f"{guard.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_count_calls_latency_errors(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(echo_policy(upstream.url))
    before = await scrape(http, guard)
    assert sample(before, "guard_calls_total", tool="echo", action="read", effect="allow") is None
    assert sample(before, "guard_pending_approvals") == 0
    assert sample(before, "guard_policy_rules") == 6

    task = await create_task(http, guard.url, guard.token(AGENT))
    auth = bearer(task["task_token"])
    for _ in range(3):
        async with http.get(f"{guard.url}/tools/echo/items/1", headers=auth) as r:
            assert r.status == 200
    async with http.delete(f"{guard.url}/tools/echo/items/1", headers=auth) as r:
        assert r.status == 403
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer("not-a-token")) as r:
        assert r.status == 401

    text = await scrape(http, guard)
    assert sample(text, "guard_calls_total", tool="echo", action="read", effect="allow") == 3
    assert sample(text, "guard_calls_total", tool="echo", action="delete", effect="deny") == 1
    assert sample(text, "guard_upstream_latency_seconds_count", tool="echo") == 3
    assert sample(text, "guard_overhead_seconds_count", tool="echo") == 3
    assert (sample(text, "guard_overhead_seconds_sum", tool="echo") or 0) > 0
    assert sample(text, "guard_errors_total", code="denied") == 1
    assert sample(text, "guard_errors_total", code="unauthenticated") == 1
    assert "# TYPE guard_webhook_delivery_failures_total counter" in text
    assert "# TYPE guard_store_errors_total counter" in text
    assert "# TYPE guard_policy_reloads_total counter" in text


async def test_pending_approvals_gauge(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    guard = await app_factory(echo_policy(upstream.url))
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 500},
                         headers=bearer(task["task_token"])) as r:
        assert r.status == 403
        assert (await r.json())["code"] == "approval_required"
    text = await scrape(http, guard)
    assert sample(text, "guard_pending_approvals") == 1
    assert sample(text, "guard_calls_total", tool="echo", action="pay", effect="step_up") == 1


async def test_webhook_delivery_failures(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens here
    guard = await app_factory(
        echo_policy(upstream.url),
        config={"approvals": {"webhooks": [{"name": "finance", "url": dead, "secret_env": "FINANCE_SECRET"}]}},
        env={"FINANCE_SECRET": "s3cret-for-tests"},
    )
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/tools/echo/pay", json={"amount": 500},
                         headers=bearer(task["task_token"])) as r:
        assert (await r.json())["code"] == "approval_required"
    for _ in range(300):
        failures = sample(await scrape(http, guard), "guard_webhook_delivery_failures_total", webhook="finance")
        if failures:
            break
        await asyncio.sleep(0.1)
    assert failures is not None and failures >= 1
