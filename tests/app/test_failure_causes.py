"""When a call fails for an operator's reason (a tool down, the secrets manager unreachable, a
secret missing), the log names the cause and the address; the agent gets a clear problem without
the provider's details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.app.conftest import AppFactory
from tests.support.app import log_events
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.credentials import tool_policy
from tests.support.process import free_port
from tests.support.upstream import Upstream


async def _read(http: aiohttp.ClientSession, url: str, tool: str, path: str, token: str) -> tuple[int, Any]:
    async with http.get(f"{url}/tools/{tool}{path}", headers=bearer(token)) as r:
        return r.status, json.loads(await r.read())


async def test_an_unreachable_tool_is_logged_with_its_cause_and_address(
    app_factory: AppFactory, http: aiohttp.ClientSession
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    for name, upstream, cause in (("refused", refused, "connection refused"),
                                  ("dns", "http://no-such-tool.invalid:9", "the name does not resolve")):
        guard = await app_factory(echo_policy(upstream), subdir=name)
        task = await create_task(http, guard.url, guard.token(AGENT))
        with log_events() as logs:
            status, problem = await _read(http, guard.url, "echo", "/items/1", task["task_token"])
        assert status == 502 and problem["code"] == "upstream_unavailable"
        assert problem["detail"] == "the tool could not be reached"  # the address is the operator's
        [event] = [e for e in logs if e["event"] == "tool_unreachable"]
        assert event["upstream"] == upstream and event["cause"].startswith(cause), event
        assert event["task_id"] == task["task_id"] and event["call_id"] == problem["call_id"]


async def test_openbao_out_of_reach_is_logged_as_such_and_not_told_to_the_agent(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bao = f"http://127.0.0.1:{free_port()}"  # nothing listens: today's log said "OpenBao answered 0"
    (tmp_path / "bao-token").write_text("s.token")
    credential = {"mode": "static", "header": "X-Api-Key", "secret": {"vault": "secret/data/tools/notes#apikey"}}
    auth = {"method": "token", "token_file": str(tmp_path / "bao-token")}
    config = {"secrets": {"vault": {"url": bao, "auth": auth}}}
    guard = await app_factory(tool_policy(upstream.url, credential), config)
    task = await create_task(http, guard.url, guard.token(AGENT))
    with log_events() as logs:
        status, problem = await _read(http, guard.url, "notes", "/notes/1", task["task_token"])
    assert status == 503 and problem["code"] == "credential_unavailable"
    assert "127.0.0.1" not in json.dumps(problem) and "secrets manager" not in problem["detail"]
    [event] = [e for e in logs if e["event"] == "credential_unavailable"]
    assert f"could not connect to OpenBao at {bao}: connection refused" in event["cause"], event
    assert "answered 0" not in json.dumps(logs)
    assert upstream.requests == []


async def test_a_providers_detail_stays_in_the_log(
    app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    secret = tmp_path / "secrets" / "notes-api-key"
    credential = {"mode": "static", "header": "X-Api-Key", "secret": {"file": str(secret)}}
    guard = await app_factory(tool_policy(upstream.url, credential))
    task = await create_task(http, guard.url, guard.token(AGENT))
    with log_events() as logs:
        status, problem = await _read(http, guard.url, "notes", "/notes/1", task["task_token"])
    assert status == 503 and problem["code"] == "credential_unavailable"
    assert str(secret) not in json.dumps(problem) and "notes-api-key" not in json.dumps(problem)
    assert problem["task_id"] == task["task_id"] and problem["call_id"]
    [event] = [e for e in logs if e["event"] == "credential_unavailable"]
    assert str(secret) in event["reason"]
