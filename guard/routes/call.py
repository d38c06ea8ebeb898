"""What a request brings, read once by the route: its token and what proves it holds it (the
connection's SPIFFE ID, a DPoP proof), its body, and the ToolCall the pipeline runs
(`read_call`); and, for the task endpoints, who presents the request (`task_principal`,
`task_creator`). Nothing past here sees the aiohttp request."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from guard.deps import DEPS, Deps
from guard.domain import PLAIN, Presented, ToolCall
from guard.errors import BadRequest, InvalidDpopProof, Unauthenticated
from guard.identity.auth import principal
from guard.identity.binding import bound_to
from guard.identity.mtls import ServerTLS, peer_svid
from guard.identity.tokens import TASK_TYP, Principal, new_id
from guard.mcp.rpc import INVALID_PARAMS, INVALID_REQUEST, RpcError, RpcMessage, check_routing_headers, parse_message
from guard.oauth.metadata import resource_url
from guard.oauth.sessions import session_principal
from guard.routes.common import connected, read_body
from guard.stages.bind import consume_proof
from guard.stages.match import check_tool_path

__all__ = [
    "DELEGATED", "RequestClient", "authorization", "parse_prefer_wait", "presented", "read_call",
    "require_client_cert", "split_upstream", "task_creator", "task_principal", "tool_call",
]

DELEGATED = web.RequestKey("delegated", bool)  # an access token of guard's authorization server (routes/mcp.py)
_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d+)")


async def read_call(request: web.Request, kind: Literal["http", "mcp"]) -> tuple[ToolCall, RpcMessage | None]:
    """The call a request makes (with its id), and for an MCP POST the JSON-RPC message it carries.

    An http tool call: `ANY /tools/{tool}/{path}`. An MCP request: `POST /mcp/{tool}` (a message;
    a request that presents no credentials is refused before its body is read, so it gets the 401
    challenge whatever it sent) or `GET`/`DELETE` (no body). A malformed message raises RpcError."""
    deps = request.app[DEPS]
    tool = request.match_info["tool"]
    if kind == "http":
        raw_path, _, query = request.raw_path.partition("?")
        prefix = f"/tools/{tool}"
        if not raw_path.startswith(prefix + "/"):
            raise BadRequest("the tool path must be /tools/{tool}/{path}")
        path = check_tool_path(raw_path[len(prefix):])
        token, scheme = authorization(request)  # a malformed Authorization header is a 401
        body = await read_body(request, deps.cfg.limits.max_body_bytes)
        return tool_call("http", tool, request.method, path, query, body, request.headers,
                         deps.cfg.approvals.max_wait_s, connected(request), token,
                         presented(request, deps, token, scheme)), None
    token, scheme = authorization(request)
    msg: RpcMessage | None = None
    body = b""
    if request.method == "POST":
        if token is None and "Txn-Token" not in request.headers:  # checked in the pipeline, as for every call
            raise Unauthenticated("missing bearer token")
        body = await read_body(request, deps.cfg.limits.max_body_bytes)
        msg = parse_message(body)
        check_routing_headers(msg, request.headers.getall("Mcp-Method", []), request.headers.getall("Mcp-Name", []))
        if msg.method == "tools/call":
            _check_call_shape(msg)
    spec = deps.policies.current.tools.get(tool)
    _, path, query = split_upstream(spec.upstream) if spec is not None else ("", "/", "")
    is_call = msg is not None and msg.method == "tools/call"
    call = tool_call(
        "mcp", tool, request.method, path, query, body, request.headers,
        deps.cfg.approvals.max_wait_s, connected(request), token, presented(request, deps, token, scheme),
        mcp_action=msg.param_str("name") if is_call and msg is not None else None,
        mcp_args=(msg.params.get("arguments") or {}) if is_call and msg is not None else None,
        counted=is_call,
        audience=resource_url(deps.cfg, tool) if request.get(DELEGATED) else "guard",
    )
    return call, msg


class RequestClient:
    """The agent's side of a forwarded call, for guard.stages.forward: its request's headers, and
    its connection."""

    __slots__ = ("request",)

    def __init__(self, request: web.Request) -> None:
        self.request = request

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.request.headers

    async def start(self, resp: web.StreamResponse) -> None:
        await resp.prepare(self.request)

    def drop(self) -> None:
        if self.request.transport is not None:
            self.request.transport.close()


def _check_call_shape(msg: RpcMessage) -> None:
    if msg.kind != "request":
        raise RpcError(INVALID_REQUEST, "Invalid Request: tools/call must have an id", msg.rpc_id)
    if not msg.param_str("name"):
        raise RpcError(INVALID_PARAMS, "Invalid params: tools/call needs params.name", msg.rpc_id)
    args = msg.params.get("arguments")
    if args is not None and not isinstance(args, dict):
        raise RpcError(INVALID_PARAMS, "Invalid params: params.arguments must be an object", msg.rpc_id)


@lru_cache(maxsize=256)
def split_upstream(upstream: str) -> tuple[str, str, str]:
    """An MCP endpoint URL as (origin, raw path, raw query): forward() joins origin + path."""
    url = URL(upstream)
    return str(url.origin()), url.raw_path or "/", url.raw_query_string


def authorization(request: web.Request) -> tuple[str | None, str]:
    """(token, scheme) of the Authorization header: scheme `bearer` or `dpop`."""
    value = request.headers.get("Authorization")
    if value is None:
        return None, "bearer"
    scheme, _, token = value.partition(" ")
    token = token.strip()
    lowered = scheme.lower()
    if lowered not in ("bearer", "dpop") or not token:
        raise Unauthenticated("Authorization must be 'Bearer <token>' or 'DPoP <token>'")
    return token, lowered


def parse_prefer_wait(prefer: str, max_wait: float) -> float:
    """`Prefer: wait=N`, capped at `max_wait` (0 without it)."""
    m = _WAIT.search(prefer)
    return min(float(m.group(1)), max_wait) if m else 0.0


def tool_call(
    kind: Literal["http", "mcp"],
    tool: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: Mapping[str, str],
    max_wait: float,
    connected: Callable[[], bool],
    token: str | None,
    presented: Presented = PLAIN,
    mcp_action: str | None = None,
    mcp_args: Any = None,
    counted: bool = True,
    audience: str = "guard",
) -> ToolCall:
    """A new call (with its id). `token` is the one of the Authorization header (Bearer or DPoP
    scheme), `presented` what the request proves besides it. `Prefer: wait` is honoured only for
    a counted call (an http tool call or MCP tools/call)."""
    return ToolCall(
        call_id=new_id("call"),
        kind=kind,
        tool=tool,
        method=method.upper(),
        path=path,
        query=query,
        body=body,
        bearer=token,
        txn_token=headers.get("Txn-Token"),
        prefer_wait=parse_prefer_wait(headers.get("Prefer", ""), max_wait) if counted else 0.0,
        content_type=headers.get("Content-Type", ""),
        mcp_action=mcp_action,
        mcp_args=mcp_args,
        counted=counted,
        connected=connected,
        presented=presented,
        audience=audience,
    )


def _htu(request: web.Request, deps: Deps) -> str:
    return deps.dpop.htu(request.scheme, request.host, request.raw_path)


def presented(request: web.Request, deps: Deps, token: str | None, scheme: str) -> Presented:
    """What the request proves besides its token: its connection's SPIFFE ID, its DPoP proof."""
    spiffe_id = deps.tls.spiffe_id(request.transport) if deps.tls is not None else None
    if scheme != "dpop":
        return PLAIN if spiffe_id is None else Presented("bearer", spiffe_id)
    proofs = request.headers.getall("DPoP", [])
    if len(proofs) != 1:
        return Presented("dpop", spiffe_id)  # refused by bound_to, or unbound token: refused there too
    proof = deps.dpop.verify(proofs[0], request.method, _htu(request, deps), token)
    return Presented("dpop", spiffe_id, proof.jkt, proof.replay_key, proof.exp)


async def task_principal(request: web.Request, deps: Deps) -> Principal:
    """`principal(allow_task_token=True)` for the task endpoints, where a bound task token must
    come from its holder too (its connection's SPIFFE ID, a fresh DPoP proof)."""
    token, scheme = authorization(request)
    if token is None or deps.keys.typ_of(token) != TASK_TYP:
        if scheme == "dpop":
            raise InvalidDpopProof("only a DPoP-bound task token goes with the DPoP scheme")
        return await principal(request.headers, deps.identity, deps.keys, allow_task_token=True,
                               signed_in=lambda: session_principal(request))
    claims = deps.keys.verify(token, TASK_TYP, audience="guard", cache=True)
    seen = presented(request, deps, token, scheme)
    binding, _ = bound_to(claims, seen)
    if binding == "dpop":
        assert seen.dpop_replay_key is not None
        await consume_proof(deps.store, seen.dpop_replay_key, seen.dpop_exp)
    return Principal(str(claims["sub"]), frozenset(), deps.keys.issuer, claims)


async def task_creator(request: web.Request, deps: Deps) -> tuple[Principal, dict[str, str]]:
    """Who creates a task (an agent: an IdP token, or an SVID admitted by an x509 issuer; never a
    person's browser session, which answers 401) and the `cnf`
    its task token gets: the connection's SPIFFE ID, the DPoP proof's key, both or none."""
    spiffe_id = deps.tls.spiffe_id(request.transport) if deps.tls is not None else None
    cnf: dict[str, str] = {}
    if spiffe_id is not None:
        cnf["spiffe_id"] = spiffe_id
    if request.headers.get("Authorization") is None and spiffe_id is not None:
        svid = peer_svid(request.transport)
        if not deps.x509.admit(spiffe_id, svid.chain_root if svid is not None else None):
            raise Unauthenticated(f"no bearer token, and no x509 issuer admits {spiffe_id}")
        who = Principal(spiffe_id, frozenset(), "x509", {})
    else:
        who = await principal(request.headers, deps.identity, deps.keys)  # an agent's token: never a browser session
    proofs = request.headers.getall("DPoP", [])
    if len(proofs) > 1:
        raise InvalidDpopProof("one DPoP proof per request")
    if proofs:
        proof = deps.dpop.verify(proofs[0], request.method, _htu(request, deps), None)
        await consume_proof(deps.store, proof.replay_key, proof.exp)
        cnf["jkt"] = proof.jkt
    entry = deps.policies.current.agent_entry(who.sub)
    if not cnf and entry is not None and entry.binding == "required":
        raise Unauthenticated(f"agent {who.sub!r} must bind its task (mTLS or DPoP): no bearer task token")
    return who, cnf


_OPEN_PATHS = ("/healthz", "/readyz", "/.well-known/")


def require_client_cert(tls: ServerTLS) -> Callable[..., Any]:
    """Middleware for `client_auth: required`: every request but the probes and well-known
    documents needs a valid SVID."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if not request.path.startswith(_OPEN_PATHS):
            tls.spiffe_id(request.transport)
        resp: web.StreamResponse = await handler(request)
        return resp

    return middleware
