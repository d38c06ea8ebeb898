"""A real `guard serve` with telemetry: the spans still batched when it is told to stop (SIGTERM)
reach the OTLP/HTTP receiver before the process ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.support.client import AGENT, bearer, create_task
from tests.support.guard import Guard
from tests.support.otlp import OtlpReceiver, proto_missing
from tests.support.process import require
from tests.support.upstream import Upstream


async def test_sigterm_exports_the_batched_spans(guard_factory: Callable[..., Guard], upstream: Upstream) -> None:
    require(proto_missing())
    receiver = await OtlpReceiver().start()
    try:
        policies: dict[str, Any] = {
            "tools": {"a": {"kind": "http", "upstream": upstream.url,
                            "actions": {"run": {"method": "POST", "path": "/run"}}}},
            "rules": [{"id": "a-runs", "effect": "allow", "match": {"tool": "a", "action": "run"}}]}
        # the exporter's own batch delay made long: only the shutdown can send the span in time
        g = guard_factory(policies, config={"telemetry": {"otlp_endpoint": receiver.url, "service_name": "edge"}},
                          env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
        async with aiohttp.ClientSession() as http:
            task = await create_task(http, g.url, g.token(AGENT))
            async with http.post(f"{g.url}/tools/a/run", json={}, headers=bearer(task["task_token"])) as r:
                assert r.status == 200
                call_id = r.headers["Guard-Call-Id"]
        await asyncio.sleep(0.5)
        assert receiver.spans == []  # still batched
        await asyncio.to_thread(g.stop)  # SIGTERM; the receiver keeps answering on this loop meanwhile
        (span,) = await receiver.wait_for(1, {"guard.call_id": call_id}, timeout=5)
        assert span.service_name == "edge" and span.attributes["guard.decision"] == "allow"
        assert span.name == "execute_tool a"
    finally:
        await receiver.stop()
