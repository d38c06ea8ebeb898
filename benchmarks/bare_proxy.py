"""The floor for a Python proxy: aiohttp, one shared keep-alive ClientSession, the body streamed
through, hop-by-hop headers dropped, nothing else. Same URL shape as the guard:

    /tools/{tool}/{path}  ->  UPSTREAM/{path}
    /mcp/{tool}           ->  UPSTREAM/mcp

Run: python -m benchmarks.bare_proxy PORT UPSTREAM_URL
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from benchmarks.common import install_uvloop

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host"})
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def proxy(request: web.Request, path: str) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    url = request.app[UPSTREAM] + path + (f"?{request.query_string}" if request.query_string else "")
    data = request.content if request.body_exists else None
    async with request.app[SESSION].request(request.method, url, headers=headers, data=data,
                                            allow_redirects=False, auto_decompress=False) as up:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for k, v in up.headers.items():
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-length", "date", "server"):
                resp.headers.add(k, v)
        if up.content_length is not None:
            resp.content_length = up.content_length
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def tools(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/" + request.match_info["path"])


async def mcp(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/mcp")


def main() -> None:
    install_uvloop()
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        yield
        await app[SESSION].close()

    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/tools/{tool}/{path:.*}", tools)
    app.router.add_route("*", "/mcp/{tool}", mcp)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
