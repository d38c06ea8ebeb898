"""`ANY /tools/{tool}/{path}`: an http tool call through the pipeline."""

from __future__ import annotations

from aiohttp import web

from guard.domain import ToolCall
from guard.errors import BadRequest
from guard.identity.binding import presented
from guard.identity.dpop import authorization
from guard.pipeline import Deps, authorize_call, result_rewrite
from guard.routes.common import DEPS, connected, read_body
from guard.stages.call import tool_call
from guard.stages.finish import forward_and_finish
from guard.stages.match import check_tool_path

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.route("*", "/tools/{tool}/{path:.*}")
async def http_tool_call(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    tool = request.match_info["tool"]
    raw_path, _, query = request.raw_path.partition("?")
    prefix = f"/tools/{tool}"
    if not raw_path.startswith(prefix + "/"):
        raise BadRequest("the tool path must be /tools/{tool}/{path}")
    path = check_tool_path(raw_path[len(prefix):])
    token, scheme = authorization(request)
    body = await read_body(request, deps.cfg.limits.max_body_bytes)
    call = tool_call("http", tool, request.method, path, query, body, request.headers,
                     deps.cfg.approvals.max_wait_s, connected(request), token, presented(request, deps, token, scheme))
    if deps.tracing is not None:
        with deps.tracing.call(call, request.headers) as traced:  # the call as a span (guard.telemetry)
            return await _forward(request, deps, traced)
    return await _forward(request, deps, call)


async def _forward(request: web.Request, deps: Deps, call: ToolCall) -> web.StreamResponse:
    auth = await authorize_call(call, deps)
    return await forward_and_finish(request, auth, deps.http, deps.audit, deps.store, tls=deps.tool_ssl,
                                    task_ends=deps.task_ends, rewrite=result_rewrite(deps, auth))
