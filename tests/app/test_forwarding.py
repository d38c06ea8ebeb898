"""How a call goes out to its tool, on a raw loopback tool that scripts its connection."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.app.conftest import AppFactory
from tests.support.client import AGENT, bearer, create_task, echo_policy

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def test_a_call_the_tool_drops_on_a_kept_connection_is_not_sent_again(
        app_factory: AppFactory, http: aiohttp.ClientSession) -> None:
    """The tool reads the second call, then closes the kept-alive connection without an answer
    (it may have acted on it): the agent gets 502 and the tool never sees the call twice, even
    for a GET (tool calls are not idempotent, whatever their method)."""
    seen: list[bytes] = []
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first = connections == 1
        try:
            for n in range(2):
                seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")[0])
                if first and n == 1:
                    break  # read, then dropped
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        g = await app_factory(echo_policy(f"http://127.0.0.1:{port}"))
        task = await create_task(http, g.url, g.token(AGENT))
        async with http.get(f"{g.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
            assert r.status == 200
        async with http.get(f"{g.url}/tools/echo/items/2", headers=bearer(task["task_token"])) as r:
            assert r.status == 502
            assert (await r.json())["code"] == "upstream_unavailable"
        assert seen == [b"GET /items/1 HTTP/1.1", b"GET /items/2 HTTP/1.1"]
        assert connections == 1
    finally:
        server.close()
