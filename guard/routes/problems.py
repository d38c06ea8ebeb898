"""Every error answer, rendered in one place: RFC 9457 problem details (the middleware, and the
server's own answers in guard.cli.serving), RFC 6749 OAuth error bodies, and the JSON-RPC error of
a refused MCP request (HTTP 200, the problem details in `data`)."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from guard.canonical import compact_json
from guard.deps import DEPS
from guard.errors import GuardError, HTTPProblem, MethodNotAllowed, NotFound, StoreUnavailable
from guard.log import get_logger
from guard.mcp.rpc import INTERNAL_ERROR, REFUSED, RpcMessage, error_body
from guard.metrics import request_started
from guard.oauth.clients import RegistrationLimited
from guard.oauth.errors import OAuthError
from guard.routes.common import json_response

__all__ = ["oauth_error", "problem_middleware", "problem_response", "rpc_refusal", "rpc_response"]

log = get_logger("guard.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem_response(err: GuardError) -> web.Response:
    return web.Response(
        body=compact_json(err.problem()),
        status=getattr(err, "http_status", err.status),
        content_type="application/problem+json",
        headers=err.headers,
    )


def oauth_error(err: OAuthError) -> web.Response:
    """An OAuth endpoint's error (RFC 6749 §5.2): `{error, error_description}`, never cached."""
    headers = {"Cache-Control": "no-store"}
    if err.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="guard"'
    if isinstance(err, RegistrationLimited):
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after_s)))
    return json_response(err.body(), err.status, headers=headers)


def rpc_response(body: bytes, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def rpc_refusal(err: GuardError, msg: RpcMessage) -> web.Response:
    """A refused MCP request: HTTP 200, JSON-RPC error, problem details in `data`. A refused
    notification or response has no id to answer, so it gets the plain problem."""
    if msg.kind != "request":
        raise err
    code = REFUSED if err.status < 500 else INTERNAL_ERROR
    headers = dict(err.headers)
    for key, name in (("task_id", "Guard-Task-Id"), ("call_id", "Guard-Call-Id")):
        if err.extra.get(key):
            headers[name] = str(err.extra[key])
    return rpc_response(error_body(msg.rpc_id, code, err.detail, err.problem()), 200, headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: every error leaves as RFC 9457 problem details (counted by code), an
    OAuth endpoint's as an OAuth error; and the request's start is marked for the overhead
    histogram (guard.metrics)."""
    token = request_started.set(time.perf_counter())
    try:
        return await handler(request)
    except GuardError as err:
        deps = request.app.get(DEPS)
        if deps is not None:
            deps.metrics.count_error(err.code)
            if isinstance(err, StoreUnavailable):
                deps.metrics.store_errors.labels("request").inc()
        return problem_response(err)
    except OAuthError as err:
        return oauth_error(err)
    except web.HTTPNotFound:
        return problem_response(NotFound("no such endpoint"))
    except web.HTTPMethodNotAllowed:
        return problem_response(MethodNotAllowed("method not allowed here"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(HTTPProblem(exc.status, exc.reason))
    except Exception:
        log.exception("request_failed", path=request.path)
        return problem_response(GuardError("internal error"))
    finally:
        request_started.reset(token)
