"""`POST/GET/DELETE /mcp/{tool}`: MCP streamable HTTP through the pipeline.

`tools/call` is a call (action = `params.name`, args = `params.arguments`) and goes through
`authorize_call` like an http tool call; everything else passes through `authorize_passthrough`
(authenticated, task active, `deny_methods`). A refused request answers HTTP 200 with a
JSON-RPC error whose `data` is the problem details, so MCP clients show it to the model.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDictProxy

from guard.content.pins import PinnedList, pin_check
from guard.deps import DEPS, Deps
from guard.domain import Authorized, ToolCall
from guard.errors import GuardError, TaskInactive, Unauthenticated, UnknownTool
from guard.identity.tokens import TASK_TYP
from guard.log import get_logger
from guard.mcp.rpc import (
    REFUSED,
    RpcError,
    RpcMessage,
    error_body,
)
from guard.mcp.tools_list import tools_filter
from guard.oauth.metadata import resource_url, www_authenticate
from guard.pipeline import handle, tool_visibility
from guard.routes.call import DELEGATED, RequestClient, read_call, split_upstream
from guard.routes.problems import rpc_refusal, rpc_response
from guard.stages.forward import BodyRewriter, Rewrite
from guard.tasks.ends import EndReason
from guard.telemetry import Tracing

__all__ = ["routes"]

routes = web.RouteTableDef()
log = get_logger("guard.mcp")
_NOT_JSON_RPC = (Unauthenticated, UnknownTool)  # answered as plain HTTP problems (401/404)


def _to_origin(auth: Authorized, timeout_s: float | None = None) -> Authorized:
    origin, _, _ = split_upstream(auth.upstream)
    return Authorized(auth.call, auth.caller, auth.state, auth.action, auth.rule_id, origin,  # not replace(): per call
                      timeout_s or auth.timeout_s, auth.minted, auth.audit_fields)


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
    try:  # no credentials: the 401 challenge before the body is read, whatever the body
        call, msg = await read_call(request, "mcp")
    except RpcError as err:
        log.info("mcp_rejected", tool=request.match_info["tool"], code=err.code, reason=err.message)
        return rpc_response(err.body(), err.http_status)
    assert msg is not None  # a POST carries a message
    farewell = _farewell(msg, call.call_id) if msg.kind == "request" else None
    try:
        if deps.tracing is not None:
            return await _traced(request, deps, call, msg, farewell, deps.tracing)
        return await handle(call, deps, _Message(request, msg, farewell))
    except _NOT_JSON_RPC:
        raise
    except GuardError as err:
        if isinstance(err, TaskInactive) and request.get(DELEGATED):
            raise  # an OAuth client answers a 401 by authorizing again
        err.extra.setdefault("call_id", call.call_id)
        return rpc_refusal(err, msg)


async def _traced(request: web.Request, deps: Deps, call: ToolCall, msg: RpcMessage,
                  farewell: Callable[[EndReason], bytes] | None, tracing: Tracing) -> web.StreamResponse:
    """mcp_post's forwarding, as a span (guard.telemetry); a refusal leaves it as an exception."""
    meta = msg.params.get("_meta")
    with tracing.call(call, request.headers, msg.label, msg.rpc_id, meta if isinstance(meta, dict) else None) as call:
        return await handle(call, deps, _Message(request, msg, farewell))


class _Message(RequestClient):
    """A message's way through the pipeline to its tool (guard.pipeline.Render): a tools/call is
    authorized as a call (its result inspected), anything else passes through (tools/list filtered
    to what the task may use), to the MCP endpoint's origin."""

    __slots__ = ("event", "farewell", "msg", "passthrough")

    def __init__(self, request: web.Request, msg: RpcMessage, farewell: Callable[[EndReason], bytes] | None) -> None:
        super().__init__(request)
        self.msg, self.farewell = msg, farewell
        is_call = msg.method == "tools/call"
        self.passthrough = None if is_call else msg.label
        self.event = "call_forwarded" if is_call else "mcp_forwarded"

    def upstream(self, auth: Authorized) -> Authorized:
        return _to_origin(auth)

    async def rewrite(self, deps: Deps, auth: Authorized) -> Rewrite | None:
        return await _list_filter(deps, auth, self.msg) if self.msg.method == "tools/list" else None


class _Session(RequestClient):
    """GET (the server-to-client SSE stream) and DELETE (end of session) pass through; the GET
    stream may sit idle for long: it may last as long as the task."""

    __slots__ = ("passthrough",)
    event = "mcp_forwarded"
    farewell = None

    def __init__(self, request: web.Request) -> None:
        super().__init__(request)
        self.passthrough = request.method.upper()

    def upstream(self, auth: Authorized) -> Authorized:
        idle = max(1.0, auth.state.task.expires_at - time.time()) if self.passthrough == "GET" else None
        return _to_origin(auth, idle)

    async def rewrite(self, deps: Deps, auth: Authorized) -> Rewrite | None:
        return None


def _farewell(msg: RpcMessage, call_id: str) -> Callable[[EndReason], bytes]:
    """The last event of an SSE answer cut because its task ended: the request's JSON-RPC error,
    so the client learns why at once instead of waiting for an answer that cannot come."""

    def event(reason: EndReason) -> bytes:
        err = TaskInactive(f"the task ended ({reason}): its stream was closed", call_id=call_id)
        return b"event: message\ndata: " + error_body(msg.rpc_id, REFUSED, err.detail, err.problem()) + b"\n\n"

    return event


async def _list_filter(deps: Deps, auth: Authorized, msg: RpcMessage) -> Rewrite:
    """tools/list answers show only the tools this task could be allowed to call, and (tool
    pinning) only definitions that match their pins."""
    visible = tool_visibility(deps, auth)
    check = await pin_check(deps.store, deps.audit, deps.policies.current.tools.get(auth.action.tool), auth,
                            deps.content.note_changed)

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
    call, _ = await read_call(request, "mcp")
    return await handle(call, deps, _Session(request))
