"""Fixtures of the in-process tier: guard's app on aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.app import AppGuard, guard_log, start_app_guard
from tests.support.approvals import ENV, Receiver, guard_config, policy
from tests.support.approvals import World as StepUpWorld
from tests.support.upstream import Upstream
from tests.support.world import World, open_world, world_setup

AppFactory = Callable[..., Awaitable[AppGuard]]


@pytest.fixture
async def app_factory(tmp_path: Path) -> AsyncIterator[AppFactory]:
    """`await app_factory(policies, config=None, env=None, subdir="g")`: a guard served in this
    process, logging as `guard serve` does into a buffer (`g.log()`)."""
    started: list[AppGuard] = []

    with guard_log() as logs:
        async def make(policies: dict[str, Any] | str | Path, config: dict[str, Any] | None = None,
                       env: dict[str, str] | None = None, subdir: str = "g") -> AppGuard:
            g = await start_app_guard(tmp_path / subdir, policies, config, env, logs)
            started.append(g)
            return g

        yield make
        for g in reversed(started):
            await g.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def hostile(app_factory: AppFactory, upstream: Upstream, upstream_factory: Callable[[], Upstream],
                  http: aiohttp.ClientSession) -> World[AppGuard]:
    """The hostile-input world (tests/support/world.py): a guard with a task that made one allowed
    call, and a recorder that no attack may reach."""
    recorder = upstream_factory()
    policy_, config, env = world_setup(upstream, recorder)
    g = await app_factory(policy_, config=config, env=env)
    return await open_world(g, upstream, recorder, http)


@pytest.fixture
async def world(app_factory: AppFactory, upstream: Upstream, receiver: Receiver, http: aiohttp.ClientSession,
                store_url: str) -> StepUpWorld:
    """The step-up world (tests/support/approvals.py): a payments tool whose big payments need an
    approval, a webhook receiver, over every store."""
    g = await app_factory(policy(upstream.url), guard_config(store_url, receiver.url), env=ENV)
    return StepUpWorld(g, http, upstream, receiver)
