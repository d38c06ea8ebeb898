"""`ANY /tools/{tool}/{path}`: an http tool call through the pipeline."""

from __future__ import annotations

from aiohttp import web

from guard.deps import DEPS, Deps
from guard.domain import ToolCall
from guard.pipeline import authorize_call, result_rewrite
from guard.routes.call import read_call
from guard.stages.finish import forward_and_finish

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.route("*", "/tools/{tool}/{path:.*}")
async def http_tool_call(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    call, _ = await read_call(request, "http")
    if deps.tracing is not None:
        with deps.tracing.call(call, request.headers) as traced:  # the call as a span (guard.telemetry)
            return await _forward(request, deps, traced)
    return await _forward(request, deps, call)


async def _forward(request: web.Request, deps: Deps, call: ToolCall) -> web.StreamResponse:
    auth = await authorize_call(call, deps)
    return await forward_and_finish(request, auth, deps.http, deps.audit, deps.store, deps.tool_ssl, deps.task_ends,
                                    rewrite=result_rewrite(deps, auth))
