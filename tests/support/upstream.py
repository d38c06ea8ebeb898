"""A recording upstream tool: a real aiohttp server on its own thread and loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.process import free_port

__all__ = ["Seen", "Upstream"]


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
