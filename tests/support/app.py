"""guard in this process: `build_app` served by aiohttp's test server (real sockets, no child
process), its tokens minted in-process. Same shape as the `Guard` of guard.py (url, port, dir,
token, audit_dir), so a request-path test reads the same against either."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from structlog.testing import capture_logs

from guard.app import build_app
from guard.cli.main import main
from guard.cli.serve import handler_options
from guard.cli.serving import ProblemAppRunner
from guard.config import Config, load_config
from guard.identity.issuers import dev_token
from guard.log import configure_logging, merge_request
from tests.support.guard import write_guard

__all__ = ["AppGuard", "guard_log", "log_events", "start_app_guard"]


@contextlib.contextmanager
def guard_log() -> Iterator[io.StringIO]:
    """guard's log as `guard serve` writes it (JSON lines, redacted; aiohttp's own warnings with
    their protocol-error filter), into a buffer of this process instead of stderr."""
    buf = io.StringIO()
    configure_logging(json_logs=True)
    structlog.configure(logger_factory=lambda *_: structlog.WriteLogger(buf), cache_logger_on_first_use=False)
    handler = logging.StreamHandler(buf)  # what reaches stderr of a process with no handler: WARNING and up
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        structlog.reset_defaults()


@contextlib.contextmanager
def log_events() -> Iterator[list[MutableMapping[str, Any]]]:
    """The events guard logs meanwhile, as dicts (structlog's `capture_logs`), with the fields bound
    to the request's context (task_id, call_id) merged in; before rendering and redaction, so a
    test of what the log output lacks reads `AppGuard.log()` instead."""
    with capture_logs(processors=[merge_request]) as events:
        yield events


@dataclass
class AppGuard:
    cfg: Config
    client: TestClient[Any, Any]
    dir: Path
    config_path: Path
    env: dict[str, str] = field(default_factory=dict)
    logs: io.StringIO = field(default_factory=io.StringIO)

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None
        return port

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def token(self, sub: str, *roles: str, ttl: int = 3600) -> str:
        """A development-issuer token, minted here (no `guard dev-token` process)."""
        return dev_token(self.cfg, sub, list(roles), ttl)

    def audit_dir(self) -> Path:
        return self.dir / "var" / "audit"

    def log(self) -> str:
        """What guard logged while this guard ran (shared by the guards of one test)."""
        return self.logs.getvalue()

    async def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`guard --config <this guard's config> ARGS`, run by the CLI's entry point in a thread
        of this process (the command's own event loop included), its output captured."""
        argv = ["--config", str(self.config_path), *args]

        def run() -> subprocess.CompletedProcess[str]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _environ(self.env):
                try:
                    code = main(argv)
                except SystemExit as e:  # --help, a usage error
                    code = e.code if isinstance(e.code, int) else 2
            done = subprocess.CompletedProcess(["guard", *argv], code, out.getvalue(), err.getvalue())
            if check:
                done.check_returncode()
            return done

        return await asyncio.to_thread(run)

    async def close(self) -> None:
        await self.client.close()


class _Server(TestServer):
    """aiohttp's test server, with the runner and request handler `guard serve` runs (the test
    server would cancel a handler whose client went away; guard serve does not)."""

    def __init__(self, app: web.Application, options: dict[str, Any], port: int) -> None:
        super().__init__(app, host="127.0.0.1", port=port)  # the configured port: its base_url is its URL
        self.options = options

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        # guard serve's runner: what aiohttp's parser refuses is answered as problem details too
        return ProblemAppRunner(self.app, **{**kwargs, **self.options})


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def start_app_guard(
    tmp: Path,
    policies: dict[str, Any] | str | Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    logs: io.StringIO | None = None,
) -> AppGuard:
    """Write a guard folder under `tmp` (as write_guard does), build the app from it and serve it."""
    g = write_guard(tmp, policies, config, env)
    cfg = load_config(g.config_path, env={**os.environ, **g.env})
    client: TestClient[Any, Any] = TestClient(_Server(build_app(cfg), handler_options(cfg), cfg.listen.port))
    await client.start_server()
    return AppGuard(cfg, client, g.dir, g.config_path, g.env, logs or io.StringIO())
