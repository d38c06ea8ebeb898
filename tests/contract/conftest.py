"""The store contract suite runs every test against every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from guard.stores import Store, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    yield s
    await s.close()
