"""What operators scrape and read: Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from guard.errors import StoreUnavailable
from guard.routes.common import DEPS, json_response
from guard.routes.openapi import openapi_document

__all__ = ["routes"]

routes = web.RouteTableDef()


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
