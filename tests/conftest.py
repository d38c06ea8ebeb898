"""The fixtures (only fixtures: the helpers behind them live in tests/support/), and how the suite is
spread over pytest-xdist's workers (`make test` runs `pytest -n … --dist loadgroup`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from tests.support.approvals import Receiver
from tests.support.guard import Guard, write_guard
from tests.support.openbao import OpenBao, openbao_missing_reason
from tests.support.postgres import Postgres, postgres_missing_reason
from tests.support.process import free_port, module_server, require
from tests.support.redis import RedisServer, redis_missing_reason
from tests.support.upstream import Upstream

# Under `--dist loadgroup` every test is a unit of work of its own, handed to whichever worker is
# free, except the tests of these modules, which run one after another on one worker: their module
# fixture is started once (a process, an installed wheel) or they listen on fixed ports. (Our own
# scheduler below: xdist's loadgroup reads `xdist_group` marks into node ids that pytest 9 no
# longer uses.)
ONE_WORKER = {
    "tests/app/test_streams.py": "stream-tool",  # one MCP stream tool for the module
    "tests/e2e/test_install.py": "installed-wheel",  # builds the wheel and installs it once
    "tests/e2e/test_doc_commands.py": "documented-guard",  # one guard for every documented command
    "tests/e2e/test_demo.py": "demo-ports",  # `make demo` listens on 8080, 9101-9105 and 9200
}

# The longest tests (half a minute to three minutes each, most of it waiting on real processes) are
# handed out first, so that none of them is left to run alone at the end while the other workers
# idle. Only the order changes (xdist is run with --no-loadscope-reorder to keep it).
LONGEST_FIRST = (
    "tests/e2e/test_retention_soak.py",
    "tests/e2e/test_bench_smoke.py::test_quick_benchmark_prints_every_target",
    "tests/e2e/test_bench_smoke.py::test_instruction_counts_of_every_target_and_a_baseline",
    "tests/e2e/test_bench_smoke.py::test_scale_benchmark_runs_every_scenario_and_verifies_the_chains",
    "tests/e2e/test_key_rotation.py",
    "tests/e2e/test_install.py",
    "tests/e2e/test_bench_smoke.py::test_scale_compares_checkouts_under_spread_load",
    "tests/e2e/test_crash.py",
    "tests/e2e/test_load_soak.py",
    "tests/e2e/test_redis_topologies.py",
    "tests/app/test_adversarial.py::test_slow_clients_are_cut_off",
    "tests/e2e/test_bench_smoke.py",
    "tests/app/test_streams.py",
    "tests/e2e/test_demo.py",
)


class _Groups(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no type information
    """xdist's scope scheduling with a scope per test, or per module for ONE_WORKER's modules."""

    def _split_scope(self, nodeid: str) -> str:
        return ONE_WORKER.get(nodeid.split("::", 1)[0], nodeid)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist has no such hook
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> _Groups | None:
    return _Groups(config, log) if config.getvalue("dist") == "loadgroup" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the collection order otherwise


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
