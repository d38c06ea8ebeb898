"""The connections forwarded calls go out on: HTTP/1.1 to the tools, kept alive between calls.

aiohttp's `ClientSession` builds a request in about 1,500 bytecodes (its pool, timers, tracing,
cookie and redirect handling, a task to write the body); a forwarded call needs none of that but
the pool. Here the request is written as one block of bytes, and the answer read by aiohttp's
own `ResponseHandler`: the same C parser, payload stream, limits and read timeout
`ClientSession` reads it with.

- One request at a time on a connection. A connection goes back to the pool only when its
  answer was read to the end and neither side asked to close it; any other end closes it.
- A connection is kept per (scheme, host, port, TLS context): a context carries the identity
  the tool must prove (guard.identity.mtls), so no call reuses a connection checked for another.
- Nothing is retried: a call that fails on a connection the tool had closed while it sat idle
  fails (tool calls are not idempotent).
- Header names and values that hold CR, LF or NUL are refused before anything is written: no
  value can end the request head early.
- The tool gets `Host` from the URL, and only the headers it is given: no user agent or other
  default of a client library, and no `Authorization` made from a `user:password@` in the
  URL (a tool's credential comes from its credential mode).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Iterable

from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = ["Answer", "Upstreams"]

CONNECT_S = 5.0  # as the shared client's sock_connect
IDLE_S = 30.0  # an idle connection older than this is closed, not reused (the shared client's keepalive_timeout)
IDLE_MAX = 64  # idle connections kept per origin
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_OURS = frozenset({"host", "content-length", "transfer-encoding"})  # written here, from the URL and the body
_Key = tuple[str, str, int, ssl.SSLContext | None]


class Answer:
    """A tool's answer: status, headers, and its body as a stream (`content`)."""

    __slots__ = ("_key", "_pool", "_proto", "content", "content_length", "headers", "reason", "status")

    def __init__(self, pool: Upstreams, key: _Key, proto: ResponseHandler, status: int, reason: str,
                 headers: CIMultiDictProxy[str], content: StreamReader) -> None:
        self._pool, self._key = pool, key
        self._proto: ResponseHandler | None = proto
        self.status, self.reason, self.headers, self.content = status, reason, headers, content
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool when the body was read to
        the end and nothing asked to close it; otherwise it is closed."""
        proto, self._proto = self._proto, None
        if proto is not None:
            self._pool.put(self._key, proto)

    def close(self) -> None:
        """Close the connection, read to the end or not."""
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.close()


class Upstreams:
    """The pool of connections to the tools (one per guard process)."""

    def __init__(self) -> None:
        self._idle: dict[_Key, deque[tuple[ResponseHandler, float]]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self._closed = False
        self._sweep: asyncio.TimerHandle | None = None  # closes what stayed idle too long

    async def request(self, method: str, url: URL, headers: Iterable[tuple[str, str]], body: bytes,
                      read_timeout_s: float, tls: ssl.SSLContext | None) -> Answer:
        """Send one request and read its answer's head. Raises OSError (the tool cannot be
        reached; ssl.SSLCertVerificationError: its certificate was refused), TimeoutError, or
        one of aiohttp's ClientErrors (the connection broke, the answer is not HTTP)."""
        head = _head(method, url, headers, len(body) if body or method in _BODY_METHODS else None)
        https = url.scheme == "https"
        if https and tls is None:
            if self._default_tls is None:
                self._default_tls = ssl.create_default_context()
            tls = self._default_tls
        host = url.raw_host or ""
        key: _Key = (url.scheme, host, url.port or (443 if https else 80), tls if https else None)
        proto = self._take(key)
        if proto is None:
            proto = await self._connect(key)
        try:
            proto.set_response_params(skip_payload=method == "HEAD", read_until_eof=True, auto_decompress=False,
                                      read_timeout=read_timeout_s)
            assert proto.transport is not None
            proto.transport.write(head + body if body else head)
            proto.start_timeout()
            while True:
                message, payload = await proto.read()
                if not 100 <= message.code < 200 or message.code == 101:  # 1xx: an interim answer, read on
                    break
        except BaseException:
            proto.close()
            raise
        return Answer(self, key, proto, message.code, message.reason, message.headers, payload)

    def _take(self, key: _Key) -> ResponseHandler | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = asyncio.get_running_loop().time() - IDLE_S
        while idle:
            proto, since = idle.pop()  # the most recently used first
            if since >= oldest and proto.is_connected() and not proto.should_close:
                return proto
            proto.close()
        return None

    async def _connect(self, key: _Key) -> ResponseHandler:
        _, host, port, tls = key
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_S):
            _, proto = await loop.create_connection(lambda: ResponseHandler(loop), host, port, ssl=tls,
                                                    server_hostname=host if tls is not None else None)
        return proto

    def put(self, key: _Key, proto: ResponseHandler) -> None:
        """A connection whose answer is done: kept for the next call when it can be."""
        if self._closed or proto.should_close or not proto.is_connected():
            proto.close()
            return
        idle = self._idle.setdefault(key, deque())
        if len(idle) >= IDLE_MAX:
            idle.popleft()[0].close()
        loop = asyncio.get_running_loop()
        idle.append((proto, loop.time()))
        if self._sweep is None:
            self._sweep = loop.call_later(IDLE_S, self._close_stale)

    def _close_stale(self) -> None:
        """Close the connections idle for IDLE_S or more; look again while any stay."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest = loop.time() - IDLE_S
        for key, idle in list(self._idle.items()):
            while idle and idle[0][1] <= oldest:
                idle.popleft()[0].close()
            if not idle:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweep = loop.call_later(IDLE_S, self._close_stale)

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
        for idle in self._idle.values():
            for proto, _ in idle:
                proto.close()
        self._idle.clear()


def _head(method: str, url: URL, headers: Iterable[tuple[str, str]], length: int | None) -> bytes:
    """The request line and headers: `Host` from the URL (never the agent's), Content-Length
    from the body (whatever `headers` say of either)."""
    lines = [f"{method} {url.raw_path_qs} HTTP/1.1", f"Host: {url.host_port_subcomponent}"]
    for name, value in headers:
        if name.lower() not in _OURS:
            lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    joined = "".join(lines)  # looked through before any line break is put in (one memchr a character)
    if "\r" in joined or "\n" in joined or "\x00" in joined:
        raise ValueError("a header holds CR, LF or NUL")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")  # the bytes the agent sent, as aiohttp decoded them
