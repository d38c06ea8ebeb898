"""Shared Signals across instances: two `guard serve` processes on one real redis-server and a
transmitter on loopback. A SET pushed to B suspends the agent at both, cuts the stream its task
holds open at A, and the same SET replayed at A is refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.app.test_streams import Feed
from tests.support.client import AGENT, bearer, create_task, until
from tests.support.guard import Guard, shared_keys
from tests.support.redis import RedisServer
from tests.support.ssf import CAEP, SsfTransmitter, uri
from tests.support.upstream import Upstream

pytestmark = pytest.mark.redis
AUD = "https://guard.example"


async def test_a_set_pushed_to_one_instance_suspends_the_agent_on_both_and_cuts_its_streams(
        guard_factory: Any, upstream: Upstream, redis_server: RedisServer, tmp_path: Path,
        http: aiohttp.ClientSession) -> None:
    feed = Feed()
    upstream.handler = feed.handle
    transmitter = SsfTransmitter().start()
    try:
        config = {
            "store": {"url": redis_server.url},
            **shared_keys(tmp_path / "shared", audit=True),
            "signals": {"transmitters": [{"issuer": transmitter.issuer, "jwks_uri": f"{transmitter.url}/jwks",
                                          "audience": AUD}]},
        }
        policy = {"tools": {"feed": {"kind": "http", "upstream": upstream.url,
                                     "actions": {"follow": {"method": "GET", "path": "/feed"}}}},
                  "rules": [{"id": "follow", "effect": "allow", "match": {"tool": "feed"}}]}
        a: Guard = guard_factory(policy, config=config, subdir="a")
        b: Guard = guard_factory(policy, config=config, subdir="b")
        task = await create_task(http, a.url, a.token(AGENT))
        lines: list[bytes] = []
        async with http.get(f"{a.url}/tools/feed/feed", headers=bearer(task["task_token"])) as r:
            assert r.status == 200

            async def read() -> bool:
                try:
                    async for raw in r.content:
                        lines.append(raw)
                except aiohttp.ClientPayloadError:
                    return True
                return False

            reader = asyncio.create_task(read())
            await until(lambda: asyncio.sleep(0, len(lines) >= 3), "the first lines")
            token = transmitter.sign({CAEP + "session-revoked": {}}, uri(AGENT), AUD)
            async with http.post(f"{b.url}/ssf/events", data=token,
                                 headers={"Content-Type": "application/secevent+jwt"}) as pushed:
                assert pushed.status == 202
            assert await asyncio.wait_for(reader, 15), "the stream was cut, not ended as if complete"
        auditor = a.token("sec@acme.example", "guard:auditor")
        async with http.get(f"{a.url}/v1/tasks/{task['task_id']}/audit", headers=bearer(auditor)) as r:
            records = (await r.json())["records"]
        closed = next(rec for rec in records if rec["event"] == "stream_closed")
        assert closed["detail"] == "agent_suspended"
        for g in (a, b):
            async with http.post(f"{g.url}/v1/tasks", json={"purpose": "again"}, headers=bearer(g.token(AGENT))) as r:
                assert r.status == 403 and (await r.json())["code"] == "agent_suspended"
        # the jti was used up in the store: instance A refuses the same SET
        async with http.post(f"{a.url}/ssf/events", data=token,
                             headers={"Content-Type": "application/secevent+jwt"}) as r:
            assert r.status == 400 and (await r.json())["err"] == "invalid_request"
    finally:
        transmitter.stop()
