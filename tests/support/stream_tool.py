"""An MCP tool (official SDK, streamable HTTP) whose answers go on for as long as they are read.

    python -m tests.support.stream_tool --port PORT

- `tick(interval_s)`: answers at once, then sends `notifications/resources/updated` with
  uri `tick://<n>` every `interval_s` on the session's own stream (the MCP GET stream);
- `slow_count(n, interval_s)`: counts to `n`, one progress notification a step, on the
  tools/call answer's SSE stream.
"""

from __future__ import annotations

import argparse
import asyncio

import anyio
from mcp.server.mcpserver import Context, MCPServer

__all__ = ["build_server"]

_TICKERS: set[asyncio.Task[None]] = set()


def build_server() -> MCPServer:
    server = MCPServer("streams", log_level="WARNING")

    @server.tool()
    async def tick(interval_s: float, ctx: Context) -> str:
        """Send a resource update on the session's stream every `interval_s`, from now on."""
        session = ctx.session

        async def ticks() -> None:
            n = 0
            while True:
                n += 1
                try:
                    await session.send_resource_updated(f"tick://{n}")
                except Exception:
                    return  # the session is gone
                await asyncio.sleep(interval_s)

        task = asyncio.get_running_loop().create_task(ticks())
        _TICKERS.add(task)
        task.add_done_callback(_TICKERS.discard)
        return "ticking"

    @server.tool()
    async def slow_count(n: int, interval_s: float, ctx: Context) -> str:
        """Count to `n`, reporting progress at every step."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"counted {i}")
            await anyio.sleep(interval_s)
        return f"counted to {n}"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="an MCP tool with long streams")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    build_server().run("streamable-http", host="127.0.0.1", port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
