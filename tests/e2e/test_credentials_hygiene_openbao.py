"""Credentials hygiene against a real OpenBao: a KV v2 version's `created_time` is the secret's age.
The test writes a version, waits past a short `max_secret_age_s`, sees the call refused
(`credential_stale`), writes a new version and sees the call go through again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.client import AGENT, bearer, create_task, until
from tests.support.credentials import tool_policy
from tests.support.guard import Guard
from tests.support.openbao import OpenBao
from tests.support.upstream import Upstream

MAX_AGE_S = 3


async def test_a_kv_version_past_max_age_is_refused_until_a_new_version_is_written(
        guard_factory: Any, upstream: Upstream, openbao: OpenBao, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "kv-secret-v1"}})
    token_file = openbao.write_token_file(tmp_path / "bao-token")
    credential = {"mode": "static", "header": "X-Api-Key", "secret": {"vault": "secret/data/tools/notes#api_key"}}
    g: Guard = guard_factory(tool_policy(upstream.url, credential), {
        "secrets": {"vault": {"url": openbao.url, "cache_s": 0,
                              "auth": {"method": "token", "token_file": str(token_file)}}},
        "credentials_hygiene": {"max_secret_age_s": MAX_AGE_S, "on_stale": "deny"}})
    task = await create_task(http, g.url, g.token(AGENT))

    async def call() -> tuple[int, Any]:
        async with http.get(f"{g.url}/tools/notes/notes/1", headers=bearer(task["task_token"])) as r:
            return r.status, await r.json(content_type=None)

    assert (await call())[0] == 200
    forwarded = len(upstream.requests)
    await asyncio.sleep(MAX_AGE_S + 1)  # the version grows older than max_secret_age_s
    status, body = await call()
    assert (status, body["code"]) == (503, "credential_stale")
    assert len(upstream.requests) == forwarded  # nothing forwarded
    async with http.get(f"{g.url}/v1/agents", headers=bearer(g.token("sec", "guard:auditor"))) as r:
        (row,) = [x for x in await r.json() if x["agent"] == AGENT]
    assert row["secrets"]["notes"]["version"] == 1 and row["secrets"]["notes"]["stale"] is True

    openbao.api("POST", "secret/data/tools/notes", {"data": {"api_key": "kv-secret-v2"}})  # rotated: version 2
    await until(lambda: _ok(call), "the rotated version to be used")
    assert {k.lower(): v for k, v in upstream.requests[-1].headers.items()}["x-api-key"] == "kv-secret-v2"


async def _ok(call: Any) -> bool:
    return bool((await call())[0] == 200)
