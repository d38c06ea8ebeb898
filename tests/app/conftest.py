"""Fixtures of the in-process tier: guard's app on aiohttp's test server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.app import AppGuard, guard_log, start_app_guard

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
