"""The connections forwarded calls go out on (guard.upstreams), against a tool on a real loopback
socket that records the bytes it gets and answers as each test scripts it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from yarl import URL

from guard.upstreams import Upstreams

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@dataclass
class Tool:
    """A raw HTTP/1.1 tool: `answer(request_bytes)` gives the bytes to send back (None: close)."""

    answer: Callable[[bytes], bytes | None]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: int = 0  # connections the other side closed
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                out = self.answer(request)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except asyncio.IncompleteReadError:
            self.closed += 1
        except ConnectionError:
            pass
        writer.close()

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/items?q=1", encoded=True)


Answerer = Callable[[bytes], bytes | None]
StartTool = Callable[..., Awaitable[Tool]]


@pytest.fixture
async def start_tool() -> AsyncIterator[StartTool]:
    """`await start_tool(answer=lambda request: OK)`: a tool listening on a free loopback port."""
    servers: list[asyncio.Server] = []
    tools: list[Tool] = []

    async def start(answer: Answerer = lambda _: OK) -> Tool:
        tool = Tool(answer)
        server = await asyncio.start_server(tool.serve, "127.0.0.1", 0)
        servers.append(server)
        tools.append(tool)
        tool.port = server.sockets[0].getsockname()[1]
        return tool

    yield start
    for server in servers:
        server.close()
    for tool in tools:
        for writer in tool.writers:
            writer.close()


async def call(pool: Upstreams, tool: Tool, headers: list[tuple[str, str]] | None = None,
               body: bytes = b'{"a":1}') -> tuple[int, bytes]:
    answer = await pool.request("POST", tool.url, headers or [], body, 5.0, None)
    try:
        return answer.status, await answer.read()
    finally:
        answer.release()


async def test_a_connection_is_kept_for_the_next_call(start_tool: StartTool) -> None:
    tool = await start_tool()
    pool = Upstreams()
    assert await call(pool, tool) == (200, b"{}")
    assert await call(pool, tool) == (200, b"{}")
    assert tool.connections == 1 and len(tool.requests) == 2
    await pool.close()


async def test_the_request_carries_the_tools_host_and_the_bodys_length(start_tool: StartTool) -> None:
    tool = await start_tool()
    pool = Upstreams()
    await call(pool, tool, [("Host", "agent.example"), ("X-Seen", "yes"), ("content-length", "999"),
                            ("Transfer-Encoding", "chunked")])
    head, _, body = tool.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /items?q=1 HTTP/1.1"
    assert sorted(lines[1:]) == sorted([f"Host: 127.0.0.1:{tool.port}".encode(), b"X-Seen: yes", b"Content-Length: 7"])
    assert body == b'{"a":1}'
    await pool.close()


@pytest.mark.parametrize("header", [("X-Bad", "a\r\nX-Injected: 1"), ("X-Bad", "a\nb"), ("X-Bad", "a\rb"),
                                    ("X-Bad\r\nX-Injected", "1"), ("X-Bad", "a\x00b")])
async def test_a_header_that_would_end_its_line_is_refused_before_anything_is_sent(
        start_tool: StartTool, header: tuple[str, str]) -> None:
    tool = await start_tool()
    pool = Upstreams()
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        await pool.request("POST", tool.url, [header], b"{}", 5.0, None)
    await asyncio.sleep(0.05)
    assert tool.requests == [] and tool.connections == 0
    await pool.close()


async def test_an_answer_not_read_to_the_end_closes_its_connection(start_tool: StartTool) -> None:
    """Part of the body is still to come: the connection cannot carry another call."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
    answers = iter([partial, OK])
    tool = await start_tool(lambda _: next(answers))
    pool = Upstreams()
    answer = await pool.request("GET", tool.url, [], b"", 5.0, None)
    assert await answer.content.readany() == b"x" * 10
    answer.release()
    assert await call(pool, tool) == (200, b"{}")
    assert tool.connections == 2
    await pool.close()


async def test_a_connection_the_tool_closed_while_idle_is_not_used(start_tool: StartTool) -> None:
    tool = await start_tool()
    pool = Upstreams()
    assert await call(pool, tool) == (200, b"{}")
    tool.writers[0].close()  # the tool ends its keep-alive connection
    await asyncio.sleep(0.1)
    assert await call(pool, tool) == (200, b"{}")
    assert tool.connections == 2
    await pool.close()


async def test_an_answer_asking_to_close_is_not_kept(start_tool: StartTool) -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    tool = await start_tool(lambda _: closing)
    pool = Upstreams()
    assert await call(pool, tool) == (200, b"{}")
    assert await call(pool, tool) == (200, b"{}")
    assert tool.connections == 2
    await pool.close()


async def test_an_interim_answer_is_read_past(start_tool: StartTool) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK
    tool = await start_tool(lambda _: early)
    pool = Upstreams()
    assert await call(pool, tool) == (200, b"{}")
    await pool.close()


async def test_a_tool_that_closes_without_answering_is_a_client_error(start_tool: StartTool) -> None:
    tool = await start_tool(lambda _: None)
    pool = Upstreams()
    with pytest.raises(aiohttp.ClientError):
        await call(pool, tool)
    await pool.close()


async def test_a_tool_that_is_not_listening_is_an_os_error() -> None:
    pool = Upstreams()
    with pytest.raises(OSError):
        await pool.request("GET", URL("http://127.0.0.1:9/x"), [], b"", 5.0, None)
    await pool.close()


async def test_a_silent_tool_times_out(start_tool: StartTool) -> None:
    def never(_: bytes) -> bytes:
        return b""  # reads the request, answers nothing

    tool = await start_tool(never)
    pool = Upstreams()
    with pytest.raises(TimeoutError):
        answer = await pool.request("GET", tool.url, [], b"", 0.2, None)
        answer.release()
    await pool.close()


async def test_a_connection_idle_too_long_is_closed(start_tool: StartTool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("guard.upstreams.IDLE_S", 0.2)
    tool = await start_tool()
    pool = Upstreams()
    assert await call(pool, tool) == (200, b"{}")
    assert tool.closed == 0
    await asyncio.sleep(0.6)
    assert tool.closed == 1
    assert await call(pool, tool) == (200, b"{}")
    assert tool.connections == 2
    await pool.close()
