"""An MCP agent through guard: the official `mcp` SDK, pointed at guard instead of the server.

Start guard and the files MCP server first (see examples/README.md), then:

    python -m examples.mcp_agent --config examples/guard.yaml

It opens a task for "weekly research report", connects the SDK's streamable HTTP client to
`{guard}/mcp/files` with the task token as its bearer, lists the tools (guard hides those
the policy never allows), calls one allowed tool and one denied tool, and prints what
happened:

    tools/list                      -> search_files, read_file, slow_count, whoami, share_file
    [allow]   read_file             -> # Week 1 ...
    [denied]  delete_file           -> -32001 (rule file-deletes-denied)

The exit code is 0 when every answer was the one the demo policy predicts, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import aiohttp
import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from examples.agent import RESEARCHER, dev_token

__all__ = ["HIDDEN", "main", "run"]

HIDDEN = {"write_file", "delete_file"}  # no rule allows them: guard leaves them out of tools/list


async def open_task(guard_url: str, agent_token: str) -> dict[str, Any]:
    body = {"purpose": "weekly research report", "requested_by": "alice@acme.example"}
    async with aiohttp.ClientSession() as http, http.post(
        f"{guard_url}/v1/tasks", json=body, headers={"Authorization": f"Bearer {agent_token}"}
    ) as r:
        task: dict[str, Any] = await r.json(content_type=None)
        if r.status != 201:
            raise SystemExit(f"could not create a task: {r.status} {task}")
        return task


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content).strip()


async def run(guard_url: str, task_token: str, mode: str = "auto") -> int:
    """List, call an allowed tool, call a denied one; returns the number of surprises."""
    surprises = 0
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {task_token}"})
    transport = streamable_http_client(f"{guard_url}/mcp/files", http_client=http)
    async with http, Client(transport, mode=mode) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        print(f"{'tools/list':<32}-> {', '.join(names)}")
        if HIDDEN & set(names) or "read_file" not in names:
            surprises += 1
            print("    <-- expected read_file listed and write_file, delete_file hidden")

        result = await client.call_tool("read_file", {"path": "reports/2026-w01.md"})
        first_line = _text(result).splitlines()[0] if _text(result) else ""
        print(f"{'[allow]   read_file':<32}-> {first_line}")
        surprises += int(result.is_error or not first_line)

        try:
            await client.call_tool("delete_file", {"path": "reports/2026-w01.md"})
            print(f"{'[allow]   delete_file':<32}-> went through   <-- expected denied")
            surprises += 1
        except MCPError as err:
            problem = err.data if isinstance(err.data, dict) else {}
            rule = f" (rule {problem['rule_id']})" if problem.get("rule_id") else ""
            print(f"{'[' + str(problem.get('code')) + ']':<10}{'delete_file':<22}-> {err.code}{rule}")
            print(f"{'':<32}   {json.dumps(problem, sort_keys=True)[:120]}")
            surprises += int(problem.get("code") != "denied")
    return surprises


async def main_async(args: argparse.Namespace) -> int:
    guard_url = args.guard_url.rstrip("/")
    token = args.token or await dev_token(RESEARCHER, config=args.config)
    task = await open_task(guard_url, token)
    print(f"task {task['task_id']} for {task['agent']}\n")
    surprises = await run(guard_url, task["task_token"], args.mode)
    print("\nevery call got the expected answer" if not surprises else f"\n{surprises} surprise(s)")
    return 0 if not surprises else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="an MCP agent through guard")
    parser.add_argument("--guard-url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", help=f"an IdP token for the agent (default: a dev token for {RESEARCHER})")
    parser.add_argument("--config", default=None, help="guard config, for dev-token (default: $GUARD_CONFIG)")
    parser.add_argument("--mode", default="auto", help="MCP revision: auto, legacy (2025-11-25) or 2026-07-28")
    try:
        sys.exit(asyncio.run(main_async(parser.parse_args(argv))))
    except (aiohttp.ClientError, httpx2.HTTPError) as e:
        sys.exit(f"cannot reach guard: {e}")


if __name__ == "__main__":
    main()
