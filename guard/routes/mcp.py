"""`POST/GET/DELETE /mcp/{tool}`: MCP streamable HTTP through the pipeline.

`tools/call` is a call (action = `params.name`, args = `params.arguments`) and goes through
`authorize_call` like an http tool call; everything else passes through `authorize_passthrough`
(authenticated, task active, `deny_methods`). A refused request answers HTTP 200 with a
JSON-RPC error whose `data` is the problem details, so MCP clients show it to the model.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import lru_cache

import structlog
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from guard.content.pins import PinnedList, pin_check
from guard.domain import Authorized, ToolCall
from guard.errors import GuardError, TaskInactive, Unauthenticated, UnknownTool
from guard.identity.binding import presented
from guard.identity.dpop import authorization
from guard.identity.tokens import TASK_TYP
from guard.mcp.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    REFUSED,
    RpcError,
    RpcMessage,
    check_routing_headers,
    error_body,
    parse_message,
)
from guard.mcp.tools_list import tools_filter
from guard.oauth.metadata import resource_url, www_authenticate
from guard.pipeline import Deps, authorize_call, authorize_passthrough, result_rewrite, tool_visibility
from guard.routes.common import DEPS, connected, read_body
from guard.stages.call import tool_call
from guard.stages.finish import forward_and_finish
from guard.stages.forward import BodyRewriter, Rewrite
from guard.tasks.ends import EndReason
from guard.telemetry import Tracing

__all__ = ["routes"]

routes = web.RouteTableDef()
log = structlog.get_logger("guard.mcp")
_NOT_JSON_RPC = (Unauthenticated, UnknownTool)  # answered as plain HTTP problems (401/404)
DELEGATED = web.RequestKey("delegated", bool)  # an access token of guard's authorization server


@lru_cache(maxsize=256)
def _split_upstream(upstream: str) -> tuple[str, str, str]:
    """The MCP endpoint URL as (origin, raw path, raw query): forward() joins origin + path."""
    url = URL(upstream)
    return str(url.origin()), url.raw_path or "/", url.raw_query_string


def _tool_call(request: web.Request, deps: Deps, body: bytes, msg: RpcMessage | None) -> ToolCall:
    spec = deps.policies.current.tools.get(request.match_info["tool"])
    _, path, query = _split_upstream(spec.upstream) if spec is not None else ("", "/", "")
    is_call = msg is not None and msg.method == "tools/call"
    token, scheme = authorization(request)
    return tool_call(
        "mcp", request.match_info["tool"], request.method, path, query, body, request.headers,
        deps.cfg.approvals.max_wait_s, connected(request), token, presented(request, deps, token, scheme),
        mcp_action=msg.param_str("name") if is_call and msg is not None else None,
        mcp_args=(msg.params.get("arguments") or {}) if is_call and msg is not None else None,
        counted=is_call,
        audience=resource_url(deps.cfg, request.match_info["tool"]) if request.get(DELEGATED) else "guard",
    )


def _to_origin(auth: Authorized, timeout_s: float | None = None) -> Authorized:
    origin, _, _ = _split_upstream(auth.upstream)
    return Authorized(auth.call, auth.caller, auth.state, auth.action, auth.rule_id, origin,  # not replace(): per call
                      timeout_s or auth.timeout_s, auth.minted, auth.audit_fields)


def _rpc_response(body: bytes, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _refusal(err: GuardError, msg: RpcMessage) -> web.Response:
    """A refused request: HTTP 200, JSON-RPC error, problem details in `data`. A refused
    notification or response has no id to answer, so it gets the plain problem."""
    if msg.kind != "request":
        raise err
    code = REFUSED if err.status < 500 else INTERNAL_ERROR
    headers = dict(err.headers)
    for key, name in (("task_id", "Guard-Task-Id"), ("call_id", "Guard-Call-Id")):
        if err.extra.get(key):
            headers[name] = str(err.extra[key])
    return _rpc_response(error_body(msg.rpc_id, code, err.detail, err.problem()), 200, headers)


def _delegated(request: web.Request, deps: Deps) -> bool:
    """True for an access token of guard's authorization server (its `aud` is the one MCP endpoint
    it is for): one for another MCP endpoint is refused (RFC 8707)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or deps.keys.typ_of(token.strip()) != TASK_TYP:
        return False
    aud = deps.keys.verify(token.strip(), TASK_TYP, audience=None, cache=True).get("aud")
    if aud == "guard":  # an agent's own task token
        return False
    if aud != resource_url(deps.cfg, request.match_info["tool"]):
        raise Unauthenticated("this access token is for another resource")
    return True


def _challenged(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A 401 names the protected resource metadata (RFC 9728), so an MCP client can find guard's
    authorization server; an access token whose task has ended is a 401 too (invalid_token)."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        deps = request.app[DEPS]
        tool = request.match_info["tool"]
        try:
            request[DELEGATED] = _delegated(request, deps)
            return await handler(request)
        except Unauthenticated as err:
            if "WWW-Authenticate" not in err.headers:  # a DPoP proof refusal keeps its own challenge (RFC 9449)
                err.headers["WWW-Authenticate"] = www_authenticate(
                    deps.cfg, tool, "invalid_token" if request.headers.get("Authorization") else None)
            raise
        except TaskInactive as err:
            if request.get(DELEGATED):
                raise _inactive(deps, tool, err) from err
            raise

    return wrapped


def _inactive(deps: Deps, tool: str, err: GuardError) -> Unauthenticated:
    out = Unauthenticated("the delegation has ended: authorize again", **err.extra)
    out.headers["WWW-Authenticate"] = www_authenticate(deps.cfg, tool, "invalid_token")
    return out


@routes.post("/mcp/{tool}")
@_challenged
async def mcp_post(request: web.Request) -> web.StreamResponse:
    deps = request.app[DEPS]
    _presents_credentials(request)  # before the body is read: no token is the 401 challenge, whatever the body
    body = await read_body(request, deps.cfg.limits.max_body_bytes)
    try:
        msg = parse_message(body)
        check_routing_headers(msg, request.headers.getall("Mcp-Method", []), request.headers.getall("Mcp-Name", []))
        if msg.method == "tools/call":
            _check_call_shape(msg)
    except RpcError as err:
        log.info("mcp_rejected", tool=request.match_info["tool"], code=err.code, reason=err.message)
        return _rpc_response(err.body(), err.http_status)
    call = _tool_call(request, deps, body, msg)
    farewell = _farewell(msg, call.call_id) if msg.kind == "request" else None
    try:
        if deps.tracing is not None:
            return await _traced(request, deps, call, msg, farewell, deps.tracing)
        return await _forward_message(request, deps, call, msg, farewell)
    except _NOT_JSON_RPC:
        raise
    except GuardError as err:
        if isinstance(err, TaskInactive) and request.get(DELEGATED):
            raise  # an OAuth client answers a 401 by authorizing again
        err.extra.setdefault("call_id", call.call_id)
        return _refusal(err, msg)


async def _traced(request: web.Request, deps: Deps, call: ToolCall, msg: RpcMessage,
                  farewell: Callable[[EndReason], bytes] | None, tracing: Tracing) -> web.StreamResponse:
    """mcp_post's forwarding, as a span (guard.telemetry); a refusal leaves it as an exception."""
    meta = msg.params.get("_meta")
    with tracing.call(call, request.headers, msg.label, msg.rpc_id, meta if isinstance(meta, dict) else None) as call:
        return await _forward_message(request, deps, call, msg, farewell)


async def _forward_message(request: web.Request, deps: Deps, call: ToolCall, msg: RpcMessage,
                           farewell: Callable[[EndReason], bytes] | None) -> web.StreamResponse:
    """A message's way through the pipeline to its tool: a tools/call is authorized as a call (its
    result inspected), anything else passes through (tools/list filtered to what the task may use)."""
    if msg.method == "tools/call":
        auth = await authorize_call(call, deps)
        return await forward_and_finish(request, _to_origin(auth), deps.http, deps.audit, deps.store,
                                        tls=deps.tool_ssl, task_ends=deps.task_ends, farewell=farewell,
                                        rewrite=result_rewrite(deps, auth))
    auth = await authorize_passthrough(call, deps, msg.label)
    rewrite = await _list_filter(deps, auth, msg) if msg.method == "tools/list" else None
    return await forward_and_finish(request, _to_origin(auth), deps.http, deps.audit, deps.store,
                                    event="mcp_forwarded", rewrite=rewrite, tls=deps.tool_ssl,
                                    task_ends=deps.task_ends, farewell=farewell)


def _presents_credentials(request: web.Request) -> None:
    """A request with neither a token (`Authorization`) nor a Txn-Token (a chained call) is
    unauthenticated (401 with the challenge, added by _challenged). The token itself is checked in
    the pipeline, as for every call."""
    token, _ = authorization(request)  # a malformed Authorization header is a 401 too
    if token is None and "Txn-Token" not in request.headers:
        raise Unauthenticated("missing bearer token")


def _farewell(msg: RpcMessage, call_id: str) -> Callable[[EndReason], bytes]:
    """The last event of an SSE answer cut because its task ended: the request's JSON-RPC error,
    so the client learns why at once instead of waiting for an answer that cannot come."""

    def event(reason: EndReason) -> bytes:
        err = TaskInactive(f"the task ended ({reason}): its stream was closed", call_id=call_id)
        return b"event: message\ndata: " + error_body(msg.rpc_id, REFUSED, err.detail, err.problem()) + b"\n\n"

    return event


def _check_call_shape(msg: RpcMessage) -> None:
    if msg.kind != "request":
        raise RpcError(INVALID_REQUEST, "Invalid Request: tools/call must have an id", msg.rpc_id)
    if not msg.param_str("name"):
        raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs params.name", msg.rpc_id)
    args = msg.params.get("arguments")
    if args is not None and not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: params.arguments must be an object", msg.rpc_id)


async def _list_filter(deps: Deps, auth: Authorized, msg: RpcMessage) -> Rewrite:
    """tools/list answers show only the tools this task could be allowed to call, and (tool
    pinning) only definitions that match their pins."""
    visible = tool_visibility(deps, auth)
    check = await pin_check(deps.store, deps.audit, deps.policies.current.tools.get(auth.action.tool), auth,
                            deps.content.note_changed if deps.content is not None else None)

    def make(headers: CIMultiDictProxy[str]) -> BodyRewriter:
        inner = tools_filter(headers.get("Content-Type", ""), headers.get("Content-Encoding", ""),
                             msg.rpc_id, visible, check.keep if check is not None else None)
        return inner if check is None else PinnedList(inner, check)

    return make


@routes.get("/mcp/{tool}")
@routes.delete("/mcp/{tool}")
@_challenged
async def mcp_session(request: web.Request) -> web.StreamResponse:
    """GET: the server-to-client SSE stream; DELETE: end of session. Both pass through."""
    deps = request.app[DEPS]
    call = _tool_call(request, deps, b"", None)
    auth = await authorize_passthrough(call, deps, request.method.upper())
    # the GET stream may sit idle for long: it may last as long as the task
    idle = max(1.0, auth.state.task.expires_at - time.time()) if request.method == "GET" else None
    return await forward_and_finish(request, _to_origin(auth, idle), deps.http, deps.audit, deps.store,
                                    event="mcp_forwarded", tls=deps.tool_ssl, task_ends=deps.task_ends)
