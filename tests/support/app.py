"""guard in this process: `build_app` served by aiohttp's test server (real sockets, no child
process), its tokens minted in-process. Same shape as the `Guard` of guard.py (url, port, dir,
token, audit_dir), so a request-path test reads the same against either."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner

from guard.app import build_app
from guard.cli.serve import handler_options
from guard.cli.serving import ProblemAppRunner
from guard.config import Config, load_config
from guard.identity.issuers import dev_token
from tests.support.guard import write_guard

__all__ = ["AppGuard", "start_app_guard"]


@dataclass
class AppGuard:
    cfg: Config
    client: TestClient[Any, Any]
    dir: Path

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


async def start_app_guard(
    tmp: Path,
    policies: dict[str, Any] | str | Path,
    config: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AppGuard:
    """Write a guard folder under `tmp` (as write_guard does), build the app from it and serve it."""
    g = write_guard(tmp, policies, config, env)
    cfg = load_config(g.config_path, env={**os.environ, **g.env})
    client: TestClient[Any, Any] = TestClient(_Server(build_app(cfg), handler_options(cfg), cfg.listen.port))
    await client.start_server()
    return AppGuard(cfg, client, g.dir)
