"""The detail of a request aiohttp's parser refused names the kind of error, never the input."""

from __future__ import annotations

import pytest
from aiohttp import http_exceptions as he

from guard.routes.common import parse_error_detail

SECRET = "eyJhbGciOiJFZERTQSJ9.secret-token"


@pytest.mark.parametrize(("exc", "detail"), [
    (he.BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: Bearer {SECRET}\\x01'\n  ^"),
     "malformed HTTP request: Invalid header value char"),
    (he.BadStatusLine(error=f"Bad status line:\n  Invalid HTTP version:\n\n  b'GET /{SECRET} HTTP/9'\n  ^"),
     "malformed HTTP request: Invalid HTTP version"),
    (he.InvalidURLError(f"http://{SECRET}:1/x"), "malformed HTTP request: malformed request target"),
    (he.LineTooLong(SECRET.encode(), 10), "malformed HTTP request: a request line or header is too long"),
    (he.InvalidHeader(f"Authorization: {SECRET}".encode()), "malformed HTTP request: malformed header"),
    (he.BadStatusLine(f"GET /{SECRET}: HTTP/1.1"), "malformed HTTP request: malformed request line"),
    (he.BadHttpMethod(error="Received HTTPS traffic on an HTTP port"),
     "malformed HTTP request: not an HTTP/1.x request"),
    (he.BadHttpMessage(f"Missing 'Host' header in request: {SECRET}"), "malformed HTTP request"),
    (ValueError(SECRET), "malformed HTTP request"),
    (None, "malformed HTTP request"),
])
def test_detail_names_the_kind_never_the_input(exc: BaseException | None, detail: str) -> None:
    assert parse_error_detail(exc) == detail
    assert "secret" not in parse_error_detail(exc)
