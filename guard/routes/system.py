"""Liveness, readiness and the guard's public keys."""

from __future__ import annotations

from aiohttp import web

from guard.errors import StoreUnavailable
from guard.routes.common import DEPS, json_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[DEPS].store.ping()
    except StoreUnavailable:
        return json_response({"status": "unavailable", "store": "unreachable"}, status=503)
    return json_response({"status": "ready"})


@routes.get("/.well-known/jwks.json")
async def jwks(request: web.Request) -> web.Response:
    return json_response(request.app[DEPS].keys.jwks(), headers={"Cache-Control": "public, max-age=300"})
