"""How `guard serve` runs the app: aiohttp's AppRunner and TCPSite, with every answer aiohttp
writes by itself turned into RFC 9457 problem details.

Two kinds of answer never pass through the app's middleware:

- what aiohttp's HTTP parser refuses before any handler runs (a bad request line, oversized
  headers, a bad `Content-Length`, a bad chunked encoding, TLS or HTTP/2 bytes on the port): the
  connection's `RequestHandler.handle_error` writes a `text/plain` 400 that echoes the offending
  bytes (a token in a bad header line included);
- an HTTP error raised before the middleware runs (an `Expect` other than `100-continue` answers
  417 from the route's expect handler).

aiohttp has no public hook for either (aio-libs/aiohttp#3287). So `ProblemRequestHandler`
overrides `handle_error` (it still logs the error and refuses once an answer has started), a
`web.Server` subclass builds one per connection and wraps the app's handler, and `ProblemAppRunner`
makes that server from the one `AppRunner` makes (the app's startup runs there, unchanged). The
detail of a parser error is its kind, never the bytes that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from typing import Any

from aiohttp import web
from aiohttp.web_log import AccessLogger

from guard.errors import GuardError, HTTPProblem
from guard.routes.common import parse_error_detail
from guard.routes.problems import problem_response

__all__ = ["ProblemAppRunner", "ProblemRequestHandler", "bind", "run"]


class ProblemRequestHandler(web.RequestHandler):
    """The protocol of one connection; its error answers are problem details."""

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises once an answer has started
        err: GuardError = HTTPProblem(status, parse_error_detail(exc) if status < 500 else "internal error")
        response = problem_response(err)
        response.force_close()
        return response


class _ProblemServer(web.Server):
    """Makes a ProblemRequestHandler per connection, and answers an HTTP error raised before the
    app's middleware ran (the expect handler's 417) as problem details."""

    def __init__(self, plain: web.Server, **handler_kwargs: Any) -> None:
        app_handler = plain.request_handler
        handler_kwargs.pop("handler_cancellation", None)  # the server's own setting, taken from `plain`

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            try:
                return await app_handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                return problem_response(HTTPProblem(exc.status, exc.reason))

        super().__init__(handle, request_factory=plain.request_factory,
                         handler_cancellation=plain.handler_cancellation, **handler_kwargs)
        self._handler_kwargs = handler_kwargs

    def __call__(self) -> web.RequestHandler:
        return ProblemRequestHandler(self, loop=asyncio.get_running_loop(), **self._handler_kwargs)


class ProblemAppRunner(web.AppRunner):
    """`web.AppRunner` whose server answers parser errors as problem details."""

    def __init__(self, app: web.Application, *, handle_signals: bool = False, shutdown_timeout: float = 60.0,
                 **handler_kwargs: Any) -> None:
        super().__init__(app, handle_signals=handle_signals, shutdown_timeout=shutdown_timeout, **handler_kwargs)
        self._handler_kwargs = {"access_log_class": AccessLogger, **handler_kwargs}

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's startup (cleanup contexts) runs here
        return _ProblemServer(plain, **self._handler_kwargs)


def bind(host: str, port: int, reuse_port: bool = False) -> list[socket.socket]:
    """The listening sockets for `host:port` (every address the host names, as asyncio's
    create_server binds them), bound before anything starts: a port in use is an OSError here,
    before the store is opened or `guard_started` is logged."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:  # a family this host does not have (IPv6 off): as asyncio skips it
                continue
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        if not socks:
            raise OSError(errno.EADDRNOTAVAIL, f"no address of {host} can be listened on")
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def run(app: web.Application, socks: list[socket.socket], *, ssl_context: ssl.SSLContext | None = None,
        shutdown_timeout: float = 5, **handler_kwargs: Any) -> None:
    """Serve `app` on the bound `socks` until SIGINT or SIGTERM, then shut down gracefully (as
    `web.run_app` does)."""

    async def serve() -> None:
        runner = ProblemAppRunner(app, handle_signals=True, shutdown_timeout=shutdown_timeout, **handler_kwargs)
        await runner.setup()
        try:
            for sock in socks:
                await web.SockSite(runner, sock, ssl_context=ssl_context).start()
            await asyncio.Event().wait()  # the signal handlers end this with GracefulExit
        finally:
            await runner.cleanup()

    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve())
