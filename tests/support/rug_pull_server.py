"""An MCP server (official SDK, streamable HTTP) whose `read_file` description is given on the
command line, so a test can restart it with another one: the "rug pull", a tool definition that
changes after it was approved.

    python -m tests.support.rug_pull_server --port P --description TEXT
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an MCP server whose read_file description is set at start")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--description", required=True)
    args = parser.parse_args(argv)
    server = MCPServer("files", log_level="WARNING")

    @server.tool(description=args.description)
    def read_file(path: str) -> str:
        return f"the text of {path}"

    @server.tool()
    def search_files(query: str) -> list[str]:
        """Paths of the files whose path or text contains `query`."""
        return [f"{query}.md"]

    server.run("streamable-http", host="127.0.0.1", port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
