"""What every example tool shares: the app guard.tool protects, and the command line.

Behind guard, a tool never sees the agent's token. Each request carries instead a single-use
credential (``Authorization: Bearer <cred+jwt>``) minted for exactly that request; ``guard.tool``
checks it (signature against guard's JWKS, audience, expiry, this very request, single use by
introspection) before any handler runs. Usage::

    app = tool_app("notes", guard_url)      # guard.tool's middleware + a client for chained calls
    app.router.add_get("/notes/{id}", read_note)
    run(app, port)

Inside a handler, ``credential(request)`` (from ``guard.tool.aiohttp``) says which task, agent,
chain and scope the call belongs to; ``request.app[GUARD_CLIENT]`` makes chained calls through
guard, and the request's Txn-Token goes with them by itself.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from guard.tool import Verifier
from guard.tool.aiohttp import protect, txn_token_middleware

__all__ = ["GUARD_CLIENT", "parse_args", "run", "tool_app"]

#: The one ClientSession an app uses for its chained calls through the guard.
GUARD_CLIENT = web.AppKey("guard_client", aiohttp.ClientSession)

DEFAULT_GUARD_URL = "http://127.0.0.1:8080"


def tool_app(tool: str, guard_url: str) -> web.Application:
    """An Application behind guard.tool's middleware, with a guard client that forwards the Txn-Token."""

    async def guard_client(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                         middlewares=(txn_token_middleware(guard_url),)) as session:
            app[GUARD_CLIENT] = session
            yield

    app = protect(web.Application(), Verifier(guard_url, tool))
    app.cleanup_ctx.append(guard_client)
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
