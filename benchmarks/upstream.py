"""The benchmark's upstream tool: as cheap as an aiohttp server gets, so the proxies' costs show.

    GET|DELETE /items/{id}   a small JSON answer (the HTTP tool)
    POST /items              reads the body, the same answer
    POST /mcp                a JSON-RPC answer to tools/call (the MCP tool; not the SDK, to stay cheap)
    GET /chain?via=PORT      calls PORT/tools/echo/items/2 with the Txn-Token it got (a chained call)

Run: python -m benchmarks.upstream PORT
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from benchmarks.common import install_uvloop

ITEM = b'{"id":"1","title":"a note","ok":true}'
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def item(request: web.Request) -> web.Response:
    return web.Response(body=ITEM, content_type="application/json")


async def create(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ITEM, content_type="application/json")


async def mcp(request: web.Request) -> web.Response:
    msg = json.loads(await request.read())
    result = {"content": [{"type": "text", "text": "ok"}], "isError": False}
    body = json.dumps({"jsonrpc": "2.0", "id": msg.get("id"), "result": result}, separators=(",", ":"))
    return web.Response(text=body, content_type="application/json")


async def chain(request: web.Request) -> web.Response:
    """Tool A serving a call by calling tool B through the same proxy."""
    via = int(request.query["via"])
    headers: dict[str, str] = {}
    if "Txn-Token" in request.headers:
        headers["Txn-Token"] = request.headers["Txn-Token"]
    async with request.app[SESSION].get(f"http://127.0.0.1:{via}/tools/echo/items/2", headers=headers) as r:
        body = await r.read()
        return web.Response(body=body, status=r.status, content_type="application/json")


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


def main() -> None:
    install_uvloop()
    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/items/{id}", item)
    app.router.add_delete("/items/{id}", item)
    app.router.add_post("/items", create)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/chain", chain)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
