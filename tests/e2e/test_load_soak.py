"""Load and soak (`make test-long`): many concurrent keep-alive agents on each store for a fixed
time. Zero 5xx, every answered call has its audit records, every trail verifies, and the
guard's memory levels off. Loopback only; each run stops by itself. GUARD_SOAK_S sets the
measured phase (default 20 s)."""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import pytest

from tests.e2e.loadgen import Load, check_trails, trails
from tests.support.client import echo_policy
from tests.support.guard import Guard
from tests.support.upstream import Upstream

pytestmark = pytest.mark.slow

AGENTS = 40
WARMUP_S = 5.0
SOAK_S = float(os.environ.get("GUARD_SOAK_S", "20"))


async def test_soak_many_keepalive_agents(guard_factory: Any, upstream: Upstream, store_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    g: Guard = guard_factory(echo_policy(upstream.url), config={"store": {"url": store_url}})
    assert g.proc is not None
    load = await Load.create(g, AGENTS)
    await load.run(WARMUP_S)
    rss_warm = g.proc.rss_kib()
    warm_calls = len(load.outcomes)
    await load.run(SOAK_S)
    rss_end = g.proc.rss_kib()
    answered = load.answered()
    with capsys.disabled():
        print(f"\n[soak {store_url.split(':')[0]}] {len(load.outcomes)} calls "
              f"({len(load.outcomes) - warm_calls} measured over {SOAK_S:.0f}s, {AGENTS} agents); "
              f"guard RSS {rss_warm} KiB after warm-up -> {rss_end} KiB")

    assert len(answered) == len(load.outcomes), "a connection failed under load"
    statuses = {o.status for o in answered}
    assert not [s for s in statuses if s >= 500], statuses
    assert statuses <= {200, 403}, statuses
    codes = {o.code for o in answered if o.status == 403}
    assert codes <= {"denied"}, codes
    assert rss_end < 2 * rss_warm, (rss_warm, rss_end)

    # every answered call has its decision (and, when allowed, its forward) in a verified trail
    events = check_trails(trails(g, [t["task_id"] for t in load.tasks]))
    for o in answered:
        assert o.call_id is not None
        got = events[o.task_id].get(o.call_id, set())
        if o.status == 200:
            assert {"call_decided:allow", "call_forwarded:"} <= got, (o, got)
        else:
            assert "call_decided:deny" in got, (o, got)
    forwarded = sum(1 for o in answered if o.status == 200)
    assert len(upstream.requests) == forwarded
    # the API agrees with the files
    auditor = g.token("sec@acme.example", "guard:auditor")
    async with aiohttp.ClientSession() as http:
        for t in load.tasks[:5]:
            async with http.get(f"{g.url}/v1/tasks/{t['task_id']}/audit",
                                headers={"Authorization": f"Bearer {auditor}"}) as r:
                body = await r.json()
                assert body["verified"] is True
                assert len(body["records"]) == len(trails(g, [t["task_id"]])[t["task_id"]])
