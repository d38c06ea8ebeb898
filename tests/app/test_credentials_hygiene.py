"""Credentials hygiene in process: a static secret's age (a real file's mtime, guard's start for an
environment variable), `on_stale: deny | warn`, documented exceptions and their expiry, and what
the inventory (GET /v1/agents, `guard agents list`) shows of them."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from guard.cli.agents import format_inventory
from guard.errors import ConfigError
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task
from tests.support.credentials import tool_policy
from tests.support.upstream import Upstream

EXCEPTION = {"owner": "bob@acme.example", "reason": "vendor has no OAuth", "expires": "2099-03-01T00:00:00Z"}


def secret_file(tmp_path: Path, age_s: float) -> Path:
    f = tmp_path / "notes-key"
    f.write_text("static-secret-1\n")
    then = time.time() - age_s
    os.utime(f, (then, then))
    return f


def static(f: Path, **extra: Any) -> dict[str, Any]:
    return {"mode": "static", "header": "X-Api-Key", "secret": {"file": str(f)}, **extra}


async def call(http: aiohttp.ClientSession, g: AppGuard, task: dict[str, Any]) -> tuple[int, Any]:
    async with http.get(f"{g.url}/tools/notes/notes/1", headers=bearer(task["task_token"])) as r:
        return r.status, await r.json(content_type=None)


async def trail(http: aiohttp.ClientSession, g: AppGuard, task_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{g.url}/v1/tasks/{task_id}/audit", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        return list((await r.json())["records"])


async def inventory(http: aiohttp.ClientSession, g: AppGuard) -> list[dict[str, Any]]:
    async with http.get(f"{g.url}/v1/agents", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        return list(await r.json())


async def test_a_stale_secret_is_refused_until_it_is_rotated(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = secret_file(tmp_path, 2000)
    g = await app_factory(tool_policy(upstream.url, static(f)),
                          {"credentials_hygiene": {"max_secret_age_s": 1000, "on_stale": "deny"}})
    task = await create_task(http, g.url, g.token(AGENT))
    status, body = await call(http, g, task)
    assert (status, body["code"]) == (503, "credential_stale") and "rotate" in body["detail"]
    assert upstream.requests == []  # nothing forwarded
    (row,) = [r for r in await inventory(http, g) if r["agent"] == AGENT]
    view = row["secrets"]["notes"]
    assert view["stale"] is True and view["age_s"] > 1000 and view["max_age_s"] == 1000
    assert view["source"] == f"file:{f}" and "static-secret" not in str(row)
    assert "notes:33m STALE" in "\n".join(format_inventory([row]))
    f.write_text("static-secret-2\n")  # rotated: a new mtime
    await asyncio.sleep(0.6)  # the file's stat is looked at every 0.5 s at most
    assert (await call(http, g, task))[0] == 200


async def test_warn_lets_the_call_through_with_a_credential_stale_record(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = secret_file(tmp_path, 2000)
    g = await app_factory(tool_policy(upstream.url, static(f)),
                          {"credentials_hygiene": {"max_secret_age_s": 1000, "on_stale": "warn"}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await call(http, g, task))[0] == 200
    records = await trail(http, g, task["task_id"])
    stale = next(r for r in records if r["event"] == "credential_stale")
    forwarded = next(r for r in records if r["event"] == "call_forwarded")
    assert stale["call_id"] == forwarded["call_id"] and stale["tool"] == "notes"
    assert stale["detail"]["age_s"] >= 2000 and "static-secret" not in str(records)


async def test_a_fresh_secret_and_no_hygiene_cost_nothing(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = secret_file(tmp_path, 2000)
    g = await app_factory(tool_policy(upstream.url, static(f)))  # no credentials_hygiene: ages shown, not enforced
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await call(http, g, task))[0] == 200
    assert not [r for r in await trail(http, g, task["task_id"]) if r["event"] == "credential_stale"]
    (row,) = [r for r in await inventory(http, g) if r["agent"] == AGENT]
    assert row["secrets"]["notes"]["stale"] is False and row["secrets"]["notes"]["age_s"] > 1000


async def test_an_expired_exception_refuses_the_secret(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = secret_file(tmp_path, 10)
    expired = {**EXCEPTION, "expires": "2020-01-01T00:00:00Z"}
    g = await app_factory(tool_policy(upstream.url, static(f, exception=expired)),
                          {"credentials_hygiene": {"max_secret_age_s": 1000, "require_exceptions": True}})
    task = await create_task(http, g.url, g.token(AGENT))
    status, body = await call(http, g, task)
    assert (status, body["code"]) == (503, "credential_exception_expired")
    assert upstream.requests == []
    (row,) = [r for r in await inventory(http, g) if r["agent"] == AGENT]
    assert row["secrets"]["notes"]["exception"] == {**expired, "expires": "2020-01-01T00:00:00Z"}
    assert row["secrets"]["notes"]["exception_expired"] is True
    assert "exc EXPIRED 2020-01-01" in "\n".join(format_inventory([row]))


async def test_a_valid_exception_is_shown_and_the_call_goes_through(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = secret_file(tmp_path, 10)
    g = await app_factory(tool_policy(upstream.url, static(f, exception=EXCEPTION)),
                          {"credentials_hygiene": {"max_secret_age_s": 1000, "require_exceptions": True}})
    task = await create_task(http, g.url, g.token(AGENT))
    assert (await call(http, g, task))[0] == 200
    (row,) = [r for r in await inventory(http, g) if r["agent"] == AGENT]
    assert row["secrets"]["notes"]["exception"] == EXCEPTION and not row["secrets"]["notes"]["exception_expired"]


async def test_require_exceptions_stops_the_start_naming_the_tool(
        app_factory: AppFactory, upstream: Upstream, tmp_path: Path) -> None:
    f = secret_file(tmp_path, 10)
    with pytest.raises(ConfigError) as e:
        await app_factory(tool_policy(upstream.url, static(f)), {"credentials_hygiene": {"require_exceptions": True}})
    assert "tools.notes.credential.exception" in str(e.value)
    bad = {**EXCEPTION, "expires": "next spring"}
    with pytest.raises(ConfigError) as e:
        await app_factory(tool_policy(upstream.url, static(f, exception=bad)), subdir="bad")
    assert "expires" in str(e.value)


async def test_an_environment_secret_is_as_old_as_guard(
        app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    g = await app_factory(tool_policy(upstream.url, {"mode": "static", "secret": {"env": "NOTES_KEY"}}),
                          {"credentials_hygiene": {"max_secret_age_s": 1000}}, env={"NOTES_KEY": "env-secret"})
    await create_task(http, g.url, g.token(AGENT))
    (row,) = [r for r in await inventory(http, g) if r["agent"] == AGENT]
    assert row["secrets"]["notes"]["source"] == "env:NOTES_KEY" and row["secrets"]["notes"]["stale"] is False
    assert 0 <= row["secrets"]["notes"]["age_s"] < 1000
