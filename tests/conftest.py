"""Shared fixtures: free ports, real processes stopped by PID, a recording upstream tool,
a real redis-server, and helpers to mint tokens with the guard's development issuer."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.support.openbao import OpenBao, openbao_missing_reason
from tests.support.postgres import Postgres, postgres_missing_reason
from tests.support.process import Proc, free_port, require, spawn, wait_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# ---------------------------------------------------------------------------------------------
# the guard


class _Process:
    """Stop (SIGTERM, then SIGKILL) or kill a process the test started, if it runs."""

    proc: Proc | None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def send_signal(self, sig: int) -> None:
        """SIGSTOP, SIGCONT…: a process that hangs without going away."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)


@dataclass
class Guard(_Process):
    """A real `guard serve` process in its own folder."""

    dir: Path
    port: int
    config_path: Path
    env: dict[str, str]
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Guard:
        self.proc = spawn([PY, "-m", "guard", "--config", str(self.config_path), "serve"], self.dir,
                          f"guard-{self.port}.log", self.env)
        if wait:
            try:
                wait_port(self.port, proc=self.proc.popen)
            except (RuntimeError, TimeoutError) as e:
                raise RuntimeError(f"guard did not start: {e}\n{self.proc.log()}") from e
        return self

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PY, "-m", "guard", "--config", str(self.config_path), *args], cwd=self.dir,
                              capture_output=True, text=True, env={**os.environ, **self.env}, check=check, timeout=60)

    def token(self, sub: str, *roles: str, ttl: int = 3600) -> str:
        """A development-issuer token (as `guard dev-token` mints it)."""
        args = ["dev-token", "--sub", sub, "--ttl", str(ttl)]
        for r in roles:
            args += ["--role", r]
        return self.cli(*args, check=True).stdout.strip()

    def log(self) -> str:
        return self.proc.log() if self.proc else ""

    def audit_dir(self) -> Path:
        return self.dir / "var" / "audit"


def write_guard(
    tmp: Path,
    policies: dict[str, Any] | str | Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Guard:
    """Write a guard folder (config + policies) under `tmp`; `policies` is a dict (written as
    policies/policy.yaml), YAML text, or a folder to copy."""
    tmp.mkdir(parents=True, exist_ok=True)
    pol_dir = tmp / "policies"
    if isinstance(policies, Path):
        if not pol_dir.exists():
            shutil.copytree(policies, pol_dir)
    else:
        pol_dir.mkdir(exist_ok=True)
        text = policies if isinstance(policies, str) else yaml.safe_dump(policies, sort_keys=False)
        (pol_dir / "policy.yaml").write_text(text)
    port = port or free_port()
    cfg: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "policies": str(pol_dir),
        "audit": {"dir": str(tmp / "var" / "audit")},
        "signing": {"key_file": str(tmp / "var" / "signing-key.json")},
        "dev_key_file": str(tmp / "var" / "dev-issuer-key.json"),
    }
    for k, v in (config or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = tmp / f"guard-{port}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Guard(tmp, port, path, dict(env or {}))


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


# ---------------------------------------------------------------------------------------------
# a recording upstream tool (a real aiohttp server on its own thread and loop)


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """Answers every request with `status` and a JSON echo, and records what it received.
    `handler` may be replaced to script other answers."""

    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    status: int = 200
    handler: Callable[[web.Request, Seen], Any] | None = None
    delay_s: float = 0.0
    ssl_context: Any = None  # an ssl.SSLContext: the tool listens with TLS (https://)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.method, request.raw_path, dict(request.headers), body)
        self.requests.append(seen)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.handler is not None:
            result = self.handler(request, seen)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, web.StreamResponse):
                return result
        return web.json_response({"ok": True, "method": request.method, "path": request.raw_path},
                                 status=self.status)

    def start(self) -> Upstream:
        self.port = self.port or free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port,
                                                ssl_context=self.ssl_context).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


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


# ---------------------------------------------------------------------------------------------
# a real redis-server


@dataclass
class RedisServer(_Process):
    dir: Path
    port: int
    proc: Proc | None = None
    appendfsync: str = "always"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", "",
                "--notify-keyspace-events", "", "--daemonize", "no"]
        self.proc = spawn(args, self.dir, "redis.log")
        wait_port(self.port, proc=self.proc.popen)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the AOF is loaded and PING answers
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        return self


def redis_missing_reason() -> str | None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        return "redis-server is not installed (apt-get install -y redis-server)"
    return None


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


# ---------------------------------------------------------------------------------------------
# small HTTP helpers for tests


def jdump(obj: Any) -> bytes:
    return json.dumps(obj).encode()
