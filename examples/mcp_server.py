"""The `files` MCP tool: a small file store served over MCP streamable HTTP (official SDK).

    python -m examples.mcp_server [--port 9103]

It serves `http://127.0.0.1:<port>/mcp`, the `upstream` of the `files` tool in
policies/tools.yaml. Its tools:

| tool | what it does | demo policy |
|---|---|---|
| `search_files(query)` | paths whose name or text contains `query` | allowed |
| `read_file(path)` | a file's text | allowed |
| `slow_count(n)` | counts to `n`, one progress notification a step | allowed |
| `whoami()` | what reached the server: the token types of `Authorization` and `Txn-Token` | allowed |
| `share_file(path, to)` | shares a file with someone outside | step-up (finance approves) |
| `write_file(path, content)` | writes a file | no rule: denied, hidden from tools/list |
| `delete_file(path)` | deletes a file | denied by rule, hidden from tools/list |

Behind guard the server never sees the agent's token: it gets a `cred+jwt` credential and a
`txntoken+jwt` Txn-Token instead, which `whoami` shows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os

import anyio
from mcp.server.mcpserver import Context, MCPServer

__all__ = ["build_server", "main"]

FILES: dict[str, str] = {
    "reports/2026-w01.md": "# Week 1\nAgent sandboxing: three papers read, one summary written.\n",
    "reports/2026-w02.md": "# Week 2\nTool authorization: task-bound credentials compared.\n",
    "notes/sources.txt": "arxiv 2401.00001\narxiv 2402.00002\n",
}


def _token_type(value: str | None) -> str | None:
    """The `typ` in a JWT's header, read without verifying (for display only)."""
    if not value:
        return None
    token = value.removeprefix("Bearer ").strip()
    head = token.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, UnicodeDecodeError):
        return "opaque"
    return str(header.get("typ")) if isinstance(header, dict) else "opaque"


def build_server() -> MCPServer:
    server = MCPServer("files", instructions="A small file store: search, read, share.", log_level="WARNING")
    files = dict(FILES)

    @server.tool()
    def search_files(query: str) -> list[str]:
        """Paths of the files whose path or text contains `query`."""
        q = query.lower()
        return sorted(p for p, text in files.items() if q in p.lower() or q in text.lower())

    @server.tool()
    def read_file(path: str) -> str:
        """The text of one file."""
        if path not in files:
            raise ValueError(f"no such file: {path}")
        return files[path]

    @server.tool()
    def write_file(path: str, content: str) -> str:
        """Create or replace a file."""
        files[path] = content
        return f"wrote {len(content)} characters to {path}"

    @server.tool()
    def delete_file(path: str) -> str:
        """Delete a file."""
        files.pop(path, None)
        return f"deleted {path}"

    @server.tool()
    def share_file(path: str, to: str) -> str:
        """Share a file with someone outside the organisation."""
        if path not in files:
            raise ValueError(f"no such file: {path}")
        return f"shared {path} with {to}"

    @server.tool()
    async def slow_count(n: int, ctx: Context) -> str:
        """Count to `n`, reporting progress at every step."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"counted {i}")
            await anyio.sleep(0.05)
        return f"counted to {n}"

    @server.tool()
    def whoami(ctx: Context) -> dict[str, str | None]:
        """The token types this server received with the request."""
        headers = ctx.headers or {}
        return {
            "authorization": _token_type(headers.get("authorization")),
            "txn_token": _token_type(headers.get("txn-token")),
            "guard_task_id": headers.get("guard-task-id"),
        }

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the files MCP tool")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9103")))
    args = parser.parse_args(argv)
    build_server().run("streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
