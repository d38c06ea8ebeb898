"""`guard tools pin TOOL [NAME]`: accept the current definitions of an MCP tool's tools (all, or
one) on a running guard: `POST /v1/tools/{tool}/pins` (admin)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from guard.config import load_config

__all__ = ["add_commands"]


def _post(url: str, token: str, tool: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 - the operator names the guard's URL
        f"{url.rstrip('/')}/v1/tools/{urllib.parse.quote(tool, safe='')}/pins", data=json.dumps(body).encode(),
        method="POST", headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
        return dict(json.loads(resp.read()))


def cmd_pin(args: argparse.Namespace) -> int:
    if not args.token:
        print("error: an admin token is needed (--token or GUARD_TOKEN)", file=sys.stderr)
        return 1
    if not args.url:
        args.url = load_config(getattr(args, "config", None), secrets=False).base_url
    try:
        out = _post(args.url, args.token, args.tool, {"names": [args.name]} if args.name else {})
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", e.reason)
        except ValueError:
            detail = e.reason
        print(f"error: {args.url} answered {e.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    for name, digest in sorted(out.get("pins", {}).items()):
        print(f"{args.tool}  {name}  {digest}")
    return 0


def add_commands(sub: Any) -> None:
    """Register `guard tools pin` on the CLI's subparsers."""
    tools = sub.add_parser("tools", help="MCP tool definitions of a running guard")
    tsub = tools.add_subparsers(dest="tools_command", required=True)
    pin = tsub.add_parser("pin", help="accept the current definitions of an MCP tool's tools (all, or NAME)")
    pin.add_argument("tool", help="the guard tool (kind: mcp)")
    pin.add_argument("name", nargs="?", help="one MCP tool name (default: every definition seen)")
    pin.add_argument("--url", default=os.environ.get("GUARD_URL"),
                     help="the guard's base URL (default $GUARD_URL, else the config's public_url or listen address)")
    pin.add_argument("--token", default=os.environ.get("GUARD_TOKEN"), help="an admin token (default $GUARD_TOKEN)")
    pin.set_defaults(func=cmd_pin)
