"""A tiny kit for writing tools that sit behind guard, with aiohttp.web.

Behind guard, a tool never sees the agent's token. Each request carries instead a
single-use credential (``Authorization: Bearer <cred+jwt>``) minted for exactly that
request. The tool proves it is genuine by *introspecting* it at the guard, which also
consumes it, and then checks that it was minted for this tool and for this very request
(method, path with query, body), so a credential lifted from one request cannot be
replayed on another.

Usage::

    app = tool_app("notes", guard_url)      # middleware + shared HTTP client
    app.router.add_get("/notes/{id}", read_note)
    run(app, port)

Inside a handler, ``request["credential"]`` holds the introspection result (``sub`` is the
agent, ``txn`` the task id, ``scope`` the ``<tool>.<action>``, ``chain`` the tools that led
here) and ``request["txn_token"]`` the ``Txn-Token`` header, which a tool forwards to the
guard to make chained calls on behalf of the same task.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = [
    "GUARD_CLIENT",
    "call_digest",
    "credential_middleware",
    "guard_client_ctx",
    "parse_args",
    "run",
    "tool_app",
]

#: The one ClientSession an app uses to talk to the guard (introspection, chained calls).
GUARD_CLIENT = web.AppKey("guard_client", aiohttp.ClientSession)

DEFAULT_GUARD_URL = "http://127.0.0.1:8080"


async def guard_client_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the shared ClientSession at start-up, close it at shutdown."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        app[GUARD_CLIENT] = session
        yield


def call_digest(method: str, path_qs: str, body: bytes) -> str:
    """base64url(sha256(METHOD "\\n" path-with-query "\\n" body)), without padding."""
    raw = method.upper().encode() + b"\n" + path_qs.encode() + b"\n" + body
    return base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).rstrip(b"=").decode()


def _unauthorized(detail: str) -> web.Response:
    return web.json_response(
        {"error": "invalid_credential", "detail": detail},
        status=401,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def credential_middleware(guard_url: str, tool: str) -> Middleware:
    """Only let through requests whose guard credential is live, ours, and for this request.

    The app must have :func:`guard_client_ctx` in its ``cleanup_ctx`` (``tool_app`` does it).
    Anything wrong with the credential answers 401; an unreachable guard answers 503.
    Either way the handler never runs: fail closed.
    """
    introspect_url = guard_url.rstrip("/") + "/v1/credentials/introspect"
    audience = f"tool:{tool}"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("missing bearer credential")

        session = request.app[GUARD_CLIENT]
        try:
            async with session.post(introspect_url, json={"token": token}) as resp:
                if resp.status != 200:
                    return _unauthorized(f"introspection answered {resp.status}")
                info: dict[str, Any] = await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return web.json_response(
                {"error": "guard_unavailable", "detail": "could not introspect the credential"},
                status=503,
            )

        if info.get("active") is not True:
            # Expired, unknown, or already used: single use means a replay lands here.
            return _unauthorized("credential is not active")
        if info.get("aud") != audience:
            return _unauthorized(f"credential is for {info.get('aud')!r}, not {audience!r}")

        # The credential must describe the request we actually got. raw_path is the
        # request target as received (path and query, still percent-encoded).
        body = await request.read()  # cached: handlers can still call request.json()
        if info.get("call_digest") != call_digest(request.method, request.raw_path, body):
            return _unauthorized("credential was minted for a different request")

        request["credential"] = info
        request["txn_token"] = request.headers.get("Txn-Token")
        return await handler(request)

    return middleware


def tool_app(tool: str, guard_url: str) -> web.Application:
    """An Application guarded by credential_middleware, with the shared guard client."""
    app = web.Application(middlewares=[credential_middleware(guard_url, tool)])
    app.cleanup_ctx.append(guard_client_ctx)
    return app


def parse_args(description: str, default_port: int) -> argparse.Namespace:
    """The command line every example tool shares: ``--port`` and ``--guard-url``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=default_port, help=f"default {default_port}")
    parser.add_argument(
        "--guard-url",
        default=os.environ.get("GUARD_URL", DEFAULT_GUARD_URL),
        help=f"the guard's base URL (default $GUARD_URL or {DEFAULT_GUARD_URL})",
    )
    return parser.parse_args()


def run(app: web.Application, port: int, host: str = "127.0.0.1") -> None:
    """Serve the app until Ctrl-C."""
    web.run_app(app, host=host, port=port)
