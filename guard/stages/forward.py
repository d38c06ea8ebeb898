"""Forward an authorized call upstream and stream the answer back. Never retried: tool calls
are not idempotent."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from guard.domain import Authorized, frozen
from guard.errors import GuardError, TaskInactive, UpstreamTimeout, UpstreamUnavailable
from guard.identity.mtls import ToolContexts
from guard.log import get_logger, network_cause, without_userinfo
from guard.policy.model import ToolSpec
from guard.tasks.ends import EndReason, TaskWatch
from guard.upstreams import Answer, Upstreams

__all__ = ["HOP_BY_HOP", "BodyRewriter", "Client", "Cut", "Rewrite", "forward", "tool_ssl", "upstream_headers"]

log = get_logger("guard.forward")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
)
_NEVER_UPSTREAM = HOP_BY_HOP | {
    "authorization", "cookie", "host", "content-length", "txn-token", "guard-task-id",
    "guard-call-id", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "prefer", "expect", "dpop",
}
# the request body codings aiohttp's parser decodes: the guard decides on the decoded body and
# forwards exactly that, so the coding no longer describes it
_DECODED = frozenset({"gzip", "deflate", "br", "zstd"})
_NEVER_DOWNSTREAM = HOP_BY_HOP | {"content-length", "set-cookie", "guard-task-id", "guard-call-id", "server", "date"}

# (status, latency_s, complete): complete when the tool's whole answer is already in hand, so the
# call is over upstream and may be finished together with its audit record.
OnHeaders = Callable[[int, float, bool], Awaitable[None]]
BUFFER_MAX = 65536  # answers up to this size (with a Content-Length) are read whole before auditing


class BodyRewriter(Protocol):
    """Rewrites an answer on its way back (MCP tools/list filtering), chunk by chunk."""

    def feed(self, chunk: bytes) -> bytes: ...

    def close(self) -> bytes: ...


class Client(Protocol):
    """The agent's side of a forwarded call (the route holds its request): the headers it sent,
    and the connection its answer goes back on."""

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    async def start(self, resp: web.StreamResponse) -> None:
        """Send the answer's status and headers; its body follows."""

    def drop(self) -> None:
        """Close the agent's connection (an answer that cannot end cleanly)."""


# Given the upstream's answer headers, the rewriter to apply (None: stream through untouched).
Rewrite = Callable[[CIMultiDictProxy[str]], BodyRewriter | None]


@frozen
class Cut:
    """How a streamed answer ends when its task does (guard.tasks.ends).

    A call already forwarded still gets its answer when that answer comes whole (read before it
    is sent); a streamed answer (SSE, unsized or large) opens a watch (`watch()`, when it
    starts) and is cut when it fires, at once if the task ended while the tool was answering
    (a recent end is remembered, an older one found by the watch's first check). The cut: the
    forwarding stops at its next
    await, so nothing the tool sends after that reaches the agent; the tool's connection is
    closed; `on_cut(reason)` runs (it audits `stream_closed`); then the agent's side ends: an SSE
    answer gets `farewell(reason)` (the last bytes, may be empty) and a clean end of stream, any
    other answer is cut (connection closed)."""

    watch: Callable[[], TaskWatch]
    on_cut: Callable[[EndReason], Awaitable[None]]
    farewell: Callable[[EndReason], bytes] | None = None


class _Flow:
    """What forward() has opened so far, for a cut to close."""

    __slots__ = ("arm", "resp", "sse", "upstream", "watch")

    def __init__(self) -> None:
        self.upstream: Answer | None = None
        self.resp: web.StreamResponse | None = None
        self.sse = False
        self.arm: Callable[[], None] | None = None  # called once the answer streams: from then on it may be cut
        self.watch: TaskWatch | None = None


def _connection_listed(headers: Mapping[str, str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", []) if isinstance(headers, CIMultiDictProxy) else []:
        listed.update(v.strip().lower() for v in value.split(","))
    return listed


def upstream_headers(incoming: CIMultiDictProxy[str], minted: Mapping[str, str]) -> CIMultiDict[str]:
    """The agent's headers minus its credentials, cookies, hop-by-hop and Connection-listed
    headers (and a Content-Encoding the body was decoded from), plus the minted credential,
    Txn-Token and Guard ids."""
    drop = _connection_listed(incoming)  # besides _NEVER_UPSTREAM
    drop.update(k.lower() for k in minted)
    coding = incoming.get("Content-Encoding")
    if coding is not None and coding.lower() in _DECODED:
        drop.add("content-encoding")
    out: CIMultiDict[str] = CIMultiDict(
        [(k, v) for k, v in incoming.items() if (name := k.lower()) not in _NEVER_UPSTREAM and name not in drop])
    out.update(minted)
    return out


async def forward(
    client: Client,
    auth: Authorized,
    tools: Upstreams,
    on_headers: OnHeaders,
    rewrite: Rewrite | None = None,
    ssl_context: ssl.SSLContext | None = None,
    cut: Cut | None = None,
) -> web.StreamResponse:
    """Send the call upstream; `on_headers(status, latency_s, complete)` runs (and writes the
    audit record) before anything is sent back to the agent. A small answer is read whole first
    (complete=True) and sent in one piece; a larger or unsized one is streamed. `rewrite` may
    transform the answer; `cut` ends it when its task ends."""
    flow = _Flow()
    if cut is None:
        return await _forward(client, auth, tools, on_headers, rewrite, flow, ssl_context)
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def fire(_: object) -> None:
        nonlocal fired
        fired = True
        task.cancel()  # the forwarding stops at its next await: no later chunk is written

    def arm() -> None:
        flow.watch = cut.watch()
        flow.watch.on_end(fire)

    flow.arm = arm
    try:
        return await _forward(client, auth, tools, on_headers, rewrite, flow, ssl_context)
    except asyncio.CancelledError:
        if not fired:
            raise
        task.uncancel()
        return await _end_cut(client, auth, flow, cut)
    finally:
        if flow.watch is not None:
            flow.watch.close()
        flow.arm = None  # arm holds flow: without this the call's objects wait for the cycle collector


async def _end_cut(client: Client, auth: Authorized, flow: _Flow, cut: Cut) -> web.StreamResponse:
    if flow.upstream is not None:
        flow.upstream.close()  # the tool's side: the connection is closed, not pooled
    reason = (flow.watch.reason if flow.watch is not None else None) or "task_revoked"
    try:
        await cut.on_cut(reason)
    except GuardError as e:  # the record could not be written: the stream is cut all the same
        log.error("stream_close_unaudited", error=e.code)
    resp = flow.resp
    if resp is None or not resp.prepared:
        raise TaskInactive(f"the task ended ({reason}) while its call was in flight", **_ids(auth))
    try:
        if not flow.sse:
            raise ConnectionResetError("a plain answer is cut, never ended as if complete")
        tail = cut.farewell(reason) if cut.farewell is not None else b""
        if tail:
            await resp.write(tail)
        await resp.write_eof()
    except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
        client.drop()
    return resp


async def _forward(
    client: Client,
    auth: Authorized,
    tools: Upstreams,
    on_headers: OnHeaders,
    rewrite: Rewrite | None,
    flow: _Flow,
    ssl_context: ssl.SSLContext | None,
) -> web.StreamResponse:
    call = auth.call
    url = URL(auth.upstream.rstrip("/") + call.path_qs, encoded=True)
    headers = upstream_headers(client.headers, auth.minted.headers)
    if rewrite is not None:  # a rewritten answer must come uncompressed
        headers.popall("Accept-Encoding", None)
    started = time.perf_counter()
    try:
        upstream = await tools.request(call.method, url, headers.items(), call.body, auth.timeout_s, ssl_context)
    except TimeoutError as e:
        _unreachable(auth, e)
        raise UpstreamTimeout("the tool did not answer in time", **_ids(auth)) from e
    except ssl.SSLCertVerificationError as e:  # another identity: nothing was sent
        raise UpstreamUnavailable(f"the tool's certificate was refused: {e}", **_ids(auth)) from e
    except (OSError, aiohttp.ClientError) as e:
        _unreachable(auth, e)
        raise UpstreamUnavailable("the tool could not be reached", **_ids(auth)) from e
    flow.upstream = upstream
    resp: web.StreamResponse | None = None
    try:
        latency_s = time.perf_counter() - started
        size = upstream.content_length
        buffer = size is not None and size <= BUFFER_MAX and call.method != "HEAD"
        whole = await upstream.read() if buffer else None
        if whole is not None and rewrite is not None:  # rewritten whole, its findings audited first
            whole = await _rewritten(rewrite, upstream.headers, whole)
        await on_headers(upstream.status, latency_s, whole is not None)
        resp = web.Response(body=whole) if whole is not None else web.StreamResponse()
        resp.set_status(upstream.status, upstream.reason)
        listed = _connection_listed(upstream.headers)
        for k, v in upstream.headers.items():
            lower = k.lower()
            if lower not in _NEVER_DOWNSTREAM and lower not in listed:
                resp.headers.add(k, v)
        resp.headers["Guard-Task-Id"] = auth.caller.task_id
        resp.headers["Guard-Call-Id"] = call.call_id
        if whole is not None:
            return resp  # sent whole by the server once the handler returns
        rewriter = rewrite(upstream.headers) if rewrite is not None else None
        if upstream.content_length is not None and rewriter is None:
            resp.content_length = upstream.content_length
        flow.resp, flow.sse = resp, upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        await client.start(resp)
        if flow.arm is not None:
            flow.arm()
        settle = getattr(rewriter, "settle", None)  # a rewriter's findings are audited before they go out
        async for chunk in upstream.content.iter_any():
            out = rewriter.feed(chunk) if rewriter is not None else chunk
            if out:
                if settle is not None:
                    await settle()
                await resp.write(out)
        tail = rewriter.close() if rewriter is not None else b""
        if settle is not None:
            await settle()
        if tail:
            await resp.write(tail)
        await resp.write_eof()
        return resp
    except (TimeoutError, aiohttp.ClientError, ConnectionResetError):
        if resp is None or not resp.prepared:
            raise UpstreamUnavailable("the tool's answer broke off", **_ids(auth)) from None
        # the answer had started: nothing more can be said to the agent but a closed connection
        client.drop()
        return resp
    finally:
        upstream.release()


async def _rewritten(rewrite: Rewrite, headers: CIMultiDictProxy[str], whole: bytes) -> bytes:
    rewriter = rewrite(headers)
    if rewriter is None:
        return whole
    out = rewriter.feed(whole) + rewriter.close()
    settle = getattr(rewriter, "settle", None)
    if settle is not None:
        await settle()
    return out


def _unreachable(auth: Authorized, e: BaseException) -> None:
    """The operator's side of a 502/504: why (refused, DNS, timed out, ...) and which address. The
    agent's problem says only that the tool could not be reached."""
    log.warning("tool_unreachable", tool=auth.call.tool, upstream=without_userinfo(auth.upstream),
                cause=network_cause(e), error=type(e).__name__, **_ids(auth))


def _ids(auth: Authorized) -> dict[str, str]:
    return {"task_id": auth.caller.task_id, "call_id": auth.call.call_id}


def tool_ssl(contexts: ToolContexts, spec: ToolSpec | None, auth: Authorized) -> ssl.SSLContext | None:
    """The TLS the tool asks for (`tls`, `spiffe_id`); unreadable files reach nothing."""
    if spec is None or (spec.tls is None and spec.spiffe_id is None):
        return None
    try:
        return contexts.context(spec.tls, spec.spiffe_id)
    except (OSError, ssl.SSLError, ValueError) as e:
        log.error("tool_tls_failed", tool=spec.name, reason=str(e))
        raise UpstreamUnavailable("the guard's TLS files for this tool cannot be read", **_ids(auth)) from e
