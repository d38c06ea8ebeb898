"""`ANY /tools/{tool}/{path}`: an http tool call through the pipeline."""

from __future__ import annotations

from aiohttp import web

from guard.deps import DEPS, Deps
from guard.domain import Authorized
from guard.pipeline import handle
from guard.routes.call import RequestClient, read_call
from guard.stages.forward import Rewrite

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.route("*", "/tools/{tool}/{path:.*}")
async def http_tool_call(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    call, _ = await read_call(request, "http")
    if deps.tracing is not None:
        with deps.tracing.call(call, request.headers) as traced:  # the call as a span (guard.telemetry)
            return await handle(traced, deps, _Answer(request))
    return await handle(call, deps, _Answer(request))


class _Answer(RequestClient):
    """An http tool call's answer: the tool's, as it answered (guard.pipeline.Render)."""

    __slots__ = ()
    passthrough = None
    event = "call_forwarded"
    farewell = None

    def upstream(self, auth: Authorized) -> Authorized:
        return auth

    async def rewrite(self, deps: Deps, auth: Authorized) -> Rewrite | None:
        return None
