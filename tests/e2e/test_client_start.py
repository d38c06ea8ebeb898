"""guard.client reaching a `guard serve` that is not listening yet: the connection is tried again
until it is. (guard.client against guard in process: tests/app/test_client.py.)"""

from __future__ import annotations

import threading
from typing import Any

from guard.client import Guard
from tests.support.client import AGENT, echo_policy
from tests.support.guard import Guard as GuardProcess
from tests.support.upstream import Upstream


async def test_a_guard_not_yet_listening_is_reached_on_a_later_attempt(guard_factory: Any, upstream: Upstream) -> None:
    g: GuardProcess = guard_factory(echo_policy(upstream.url), start=False, subdir="late")
    starter = threading.Timer(0.5, lambda: g.start(wait=False))
    starter.start()
    try:
        async with Guard(g.url, token=g.token(AGENT), connect_attempts=40) as client, \
                client.task(purpose="late start") as t:
            assert (await t.call("echo", "read", id=2))["path"] == "/items/2"
    finally:
        starter.join()
