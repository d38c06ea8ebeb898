"""Helpers shared by the handlers: the AppKey of the dependencies, who is calling, bodies, JSON answers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import http_exceptions, web
from pydantic import BaseModel, ValidationError

from guard.deps import DEPS
from guard.errors import BadRequest, PayloadTooLarge
from guard.identity.auth import principal, require_role
from guard.identity.tokens import Principal
from guard.oauth.sessions import session_principal

__all__ = ["DEPS", "authorized", "connected", "json_response", "parse_error_detail", "read_body", "read_model"]

M = TypeVar("M", bound=BaseModel)


async def authorized(request: web.Request, *roles: str, task_token: bool = False) -> Principal:
    """The caller of an API endpoint, holding one of `roles` (any authenticated caller when none is
    named). With `task_token`, a task token also stands for its agent, limited to its own task."""
    deps = request.app[DEPS]
    who = await principal(request.headers, deps.identity, deps.keys, allow_task_token=task_token,
                          signed_in=lambda: session_principal(request))
    if roles:
        require_role(who, *roles)
    return who


def connected(request: web.Request) -> Callable[[], bool]:
    """False once the client went away (ends an approval hold)."""
    return lambda: request.transport is not None and not request.transport.is_closing()


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to exceed `limit`."""
    if not request.body_exists:  # no Content-Length (or zero) and not chunked: nothing to wait for
        return b""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body over {limit} bytes")
    timeout_s = request.app[DEPS].cfg.limits.read_timeout_s
    try:
        if request.content.is_eof():  # all of it is here already (a small body comes with its headers)
            body = request.content.read_nowait()
            if len(body) > limit:
                raise PayloadTooLarge(f"body over {limit} bytes")
            return body
        async with asyncio.timeout(timeout_s):  # a slow client cannot hold a handler forever
            return await _read_limited(request, limit)
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {timeout_s:g} s") from None
    except web.RequestPayloadError as e:  # a body aiohttp could not decode (bad gzip, chunks…)
        raise BadRequest(parse_error_detail(e.__cause__ or e)) from None


# The kind of a parser error, for the ones whose message is not llhttp's "<reason>:\n\n  <input>".
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.InvalidURLError, "malformed request target"),
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.BadHttpMethod, "not an HTTP/1.x request"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.TransferEncodingError, "malformed chunked body"),
    (http_exceptions.ContentLengthError, "the body does not match its Content-Length"),
    (http_exceptions.ContentEncodingError, "the body does not decode with its Content-Encoding"),
)
# llhttp's reason (a fixed string of the parser), before the echo of the offending bytes
_LLHTTP = re.compile(r"(?:Bad status line:\n  )?([A-Za-z][A-Za-z0-9 /`'-]{0,80}):\n\n  ")


def parse_error_detail(exc: BaseException | None) -> str:
    """What a client is told about a request aiohttp's parser refused: what kind of error,
    never the input that caused it (a token in a bad header line, for one)."""
    message = exc.message if isinstance(exc, http_exceptions.HttpProcessingError) else ""
    m = _LLHTTP.match(str(message))
    if m:
        return f"malformed HTTP request: {m.group(1)}"
    kind = next((text for cls, text in _KINDS if isinstance(exc, cls)), None)
    return f"malformed HTTP request: {kind}" if kind else "malformed HTTP request"


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)


async def read_model(request: web.Request, model: type[M]) -> M:
    body = await read_body(request, request.app[DEPS].cfg.limits.max_body_bytes)
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest("malformed JSON body") from e
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise BadRequest(f"{where}: {err['msg']}") from e


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )
