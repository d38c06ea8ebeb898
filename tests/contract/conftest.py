"""The store contract suite runs every test against every backend: memory, one Redis, a Redis
Cluster (6 nodes) and a primary with replicas behind Sentinel. The two topologies are started
once per session and flushed before each test; their stores wait for one replica on each write
(`wait_replicas: 1`), so WAIT is part of what the suite checks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from guard.stores import Store, open_store
from tests.support.process import require
from tests.support.redis import RedisServer, redis_missing_reason
from tests.support.redis_topology import ClusterTopology, SentinelTopology

TOPOLOGIES = ("redis+cluster://", "redis+sentinel://")


def _need_redis() -> None:
    require(redis_missing_reason())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterTopology]:
    _need_redis()
    with ClusterTopology(Path(tmp_path_factory.mktemp("cluster"))).start() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    _need_redis()
    with SentinelTopology(Path(tmp_path_factory.mktemp("sentinel"))).start() as topology:
        yield topology


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis-cluster", marks=[pytest.mark.redis, pytest.mark.slow]),
                        pytest.param("redis-sentinel", marks=[pytest.mark.redis, pytest.mark.slow])])
def store_url(request: pytest.FixtureRequest) -> str:
    """Every backend, the Redis topologies included (overrides tests/conftest.py's here)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    topology: ClusterTopology | SentinelTopology = request.getfixturevalue(request.param.replace("-", "_"))
    topology.flush()
    return topology.url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url, wait_replicas=1 if store_url.startswith(TOPOLOGIES) else 0)
    yield s
    await s.close()


@pytest.fixture
async def peer(store: Store, store_url: str) -> AsyncIterator[Store]:
    """A second instance on the same backend (the same store in memory, where state is per process)."""
    if store_url.startswith("memory://"):
        yield store
        return
    other = await open_store(store_url)
    yield other
    await other.close()
