"""Shared Signals: push delivery of SETs (RFC 8935) at `POST /ssf/events`, the streams' health, and
an agent's history (the signals about it and its suspensions)."""

from __future__ import annotations

from aiohttp import web

from guard.errors import NotFound, PayloadTooLarge
from guard.identity.auth import ADMIN, AUDITOR
from guard.routes.common import DEPS, authorized, json_response, read_body
from guard.signals.receiver import Signals, agent_trail
from guard.signals.sets import SetError
from guard.signals.transmitter import ssf_configuration

__all__ = ["SIGNALS", "routes"]

routes = web.RouteTableDef()
SIGNALS = web.AppKey("signals", Signals)


def _refused(e: SetError) -> web.Response:
    return web.json_response(e.body(), status=e.status)


@routes.post("/ssf/events")
async def push(request: web.Request) -> web.Response:
    """RFC 8935: one SET in the body (`application/secevent+jwt`); 202 when accepted, else 400 with
    `{err, description}`. The SET's signature is what authenticates the transmitter."""
    signals = request.app.get(SIGNALS)
    if signals is None:
        raise NotFound("no Shared Signals transmitter is configured")
    limit = signals.cfg.max_set_bytes
    try:
        body = await read_body(request, limit)
    except PayloadTooLarge:
        return _refused(SetError("invalid_request", f"a SET is at most {limit} bytes", 413))
    if request.content_type != "application/secevent+jwt":
        return _refused(SetError("invalid_request", "Content-Type must be application/secevent+jwt"))
    try:
        token = body.decode("ascii").strip()
        await signals.receive(token)
    except UnicodeDecodeError:
        return _refused(SetError("invalid_request", "a SET is a compact JWT (ASCII)"))
    except SetError as e:
        return _refused(e)
    return web.Response(status=202)


@routes.get("/.well-known/ssf-configuration")
async def ssf_configuration_document(request: web.Request) -> web.Response:
    """SSF 1.0 transmitter metadata: guard's SETs are signed with the keys at its jwks_uri."""
    deps = request.app[DEPS]
    if deps.cfg.signals is None:
        raise NotFound("Shared Signals are not configured")
    return json_response(ssf_configuration(deps.cfg), headers={"Cache-Control": "public, max-age=300"})


@routes.get("/v1/signals/streams")
async def streams(request: web.Request) -> web.Response:
    """Each transmitter's stream as this instance sees it: status, last event, SETs received and
    refused, failed polls."""
    await authorized(request, ADMIN, AUDITOR)
    signals = request.app.get(SIGNALS)
    return json_response(signals.stream_views() if signals is not None else [])


@routes.get("/v1/agents/{sub}/history")
async def history(request: web.Request) -> web.Response:
    """The agent's history trail: the signals received about it and the suspensions they caused."""
    await authorized(request, ADMIN, AUDITOR)
    sub = request.match_info["sub"]
    return json_response({"agent": sub, "records": await request.app[DEPS].audit.records(agent_trail(sub))})
