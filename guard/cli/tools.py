"""`guard tools pin TOOL [NAME]`: accept the current definitions of an MCP tool's tools (all, or
one) on a running guard: `POST /v1/tools/{tool}/pins` (admin), through the same API client as
`guard tasks` and `guard approvals` (guard.cli.remote)."""

from __future__ import annotations

import argparse
from typing import Any

from guard.cli.remote import call, quoted, remote_args, runner

__all__ = ["add_commands"]


def _pin(args: argparse.Namespace) -> Any:
    out = call(args, "POST", f"/v1/tools/{quoted(args.tool)}/pins", {"names": [args.name]} if args.name else {})
    if args.json:
        return out
    return [f"{args.tool}  {name}  {digest}" for name, digest in sorted(out.get("pins", {}).items())]


def add_commands(sub: Any) -> None:
    """Register `guard tools pin` on the CLI's subparsers."""
    tools = sub.add_parser("tools", help="MCP tool definitions of a running guard")
    tsub = tools.add_subparsers(dest="tools_command", required=True)
    pin = tsub.add_parser("pin", help="accept the current definitions of an MCP tool's tools (all, or NAME)")
    pin.add_argument("tool", help="the guard tool (kind: mcp)")
    pin.add_argument("name", nargs="?", help="one MCP tool name (default: every definition seen)")
    remote_args(pin, "an admin")
    pin.set_defaults(func=runner(_pin))
