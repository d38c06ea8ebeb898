"""The fixtures (only fixtures: the helpers behind them live in tests/support/)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.approvals import Receiver
from tests.support.guard import Guard, write_guard
from tests.support.openbao import OpenBao, openbao_missing_reason
from tests.support.postgres import Postgres, postgres_missing_reason
from tests.support.process import free_port, module_server, require
from tests.support.redis import RedisServer, redis_missing_reason
from tests.support.upstream import Upstream


@pytest.fixture
def guard_factory(tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    started: list[Guard] = []

    def make(policies: dict[str, Any] | str | Path, config: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, start: bool = True, subdir: str = "g") -> Guard:
        g = write_guard(tmp_path / subdir, policies, config, env)
        started.append(g)
        return g.start() if start else g

    yield make
    for g in started:
        g.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream().start()
    yield u
    u.stop()


@pytest.fixture
def upstream_factory() -> Iterator[Callable[[], Upstream]]:
    made: list[Upstream] = []

    def make() -> Upstream:
        u = Upstream().start()
        made.append(u)
        return u

    yield make
    for u in made:
        u.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require(redis_missing_reason())
    d = tmp_path / "redis"
    d.mkdir()
    r = RedisServer(d, free_port()).start()
    yield r
    r.stop()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store_url(request: pytest.FixtureRequest) -> str:
    """Parametrizes a test over every store backend."""
    if request.param == "memory":
        return "memory://"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def openbao(tmp_path: Path) -> Iterator[OpenBao]:
    """A real `bao server -dev` (KV v2 at `secret/`), root token in `.root_token`, stopped by PID."""
    require(openbao_missing_reason())
    bao = OpenBao(tmp_path / "openbao").start()
    yield bao
    bao.stop()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster on a free port (superuser `postgres`, password `.password`)."""
    require(postgres_missing_reason())
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on a real port, in the test's loop (tests/support/approvals.py)."""
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for the test's own requests."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="session")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """examples/mcp_server.py as a real process, one for the session (each test opens its own MCP
    sessions through its own guard; every change a tool makes is one guard refuses in these
    tests); yields its MCP endpoint URL."""
    with module_server("examples.mcp_server", tmp_path_factory.mktemp("mcp-server")) as port:
        yield f"http://127.0.0.1:{port}/mcp"
