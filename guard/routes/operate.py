"""What operators scrape and read: Prometheus metrics (and the middleware that feeds them) and
the OpenAPI description."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from guard.errors import GuardError, StoreUnavailable
from guard.metrics import request_started
from guard.openapi import openapi_document
from guard.routes.common import DEPS, json_response

__all__ = ["metrics_middleware", "routes"]

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Marks the request start (for the overhead histogram) and counts problem answers by code."""
    token = request_started.set(time.perf_counter())
    try:
        return await handler(request)
    except GuardError as err:
        deps = request.app.get(DEPS)
        if deps is not None:
            deps.metrics.count_error(err.code)
            if isinstance(err, StoreUnavailable):
                deps.metrics.store_errors.labels("request").inc()
        raise
    finally:
        request_started.reset(token)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    m = deps.metrics
    try:
        m.pending_approvals.set(len(await deps.approvals.pending()))
    except StoreUnavailable:
        m.store_errors.labels("list_approvals").inc()
    resp = web.Response(body=generate_latest(m.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(), headers={"Cache-Control": "public, max-age=300"})
