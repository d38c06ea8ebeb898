"""`guard agents`: the NHI inventory of a running guard (GET /v1/agents), as a table or JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from guard.config import load_config

__all__ = ["add_commands", "format_inventory", "format_streams"]

_COLUMNS = ("agent", "owner", "reg", "active", "calls", "denied", "tried", "last seen", "tools used", "secrets",
            "status")


def _age(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _secrets(row: dict[str, Any]) -> str:
    """Each static secret of the agent's tools: tool:age, STALE, and its exception's end."""
    cells = []
    for tool, s in sorted((row.get("secrets") or {}).items()):
        cell = f"{tool}:{_age(s.get('age_s'))}"
        if s.get("stale"):
            cell += " STALE"
        exc = s.get("exception")
        if exc:
            cell += f" exc {'EXPIRED' if s.get('exception_expired') else 'to'} {str(exc.get('expires'))[:10]}"
        cells.append(cell)
    return ", ".join(cells) or "-"


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cells(row: dict[str, Any]) -> list[str]:
    status = f"SUSPENDED ({row.get('suspended_reason') or ''})" if row.get("suspended") else "ok"
    return [
        str(row.get("agent")),
        str(row.get("owner") or "-"),
        "yes" if row.get("registered") else "NO",
        str(row.get("active_tasks", 0)),
        str(row.get("calls", 0)),
        str(row.get("denied", 0)),
        str(row.get("unregistered_attempts", 0)),
        _when(row.get("last_seen")),
        ",".join(row.get("tools_used") or []) or "-",
        _secrets(row),
        status,
    ]


def format_inventory(rows: list[dict[str, Any]]) -> list[str]:
    """A plain-text table, one agent a line; unregistered agents say NO under `reg`."""
    table = [list(_COLUMNS), *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]


def format_streams(streams: list[dict[str, Any]]) -> list[str]:
    """The Shared Signals streams guard listens to: status, last event, refused SETs, failed polls."""
    return [f"signals from {s.get('transmitter')}: {s.get('status')}, last event {_when(s.get('last_event_at'))}, "
            f"{s.get('received', 0)} received, {s.get('refused', 0)} refused, {s.get('failures', 0)} failures"
            for s in streams]


def _fetch(url: str, token: str, path: str = "/v1/agents") -> list[dict[str, Any]]:
    req = urllib.request.Request(  # noqa: S310 - the operator names the guard's URL
        url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=15) as resp:  # noqa: S310
        data = json.loads(resp.read())
    if not isinstance(data, list):
        raise ValueError(f"unexpected answer from {path}")
    return data


def cmd_agents(args: argparse.Namespace) -> int:
    if not args.token:
        print("error: an admin or auditor token is needed (--token or GUARD_TOKEN)", file=sys.stderr)
        return 1
    if not args.url:  # the guard the config describes: its public_url, else its listen address
        args.url = load_config(getattr(args, "config", None), secrets=False).base_url
    try:
        rows = _fetch(args.url, args.token)
    except urllib.error.HTTPError as e:
        try:
            detail = json.loads(e.read()).get("detail", e.reason)
        except ValueError:
            detail = e.reason
        print(f"error: {args.url} answered {e.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"error: cannot read the inventory from {args.url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    for line in format_inventory(rows):
        print(line)
    try:  # the Shared Signals streams, where guard listens to some (an older guard has no such endpoint)
        streams = _fetch(args.url, args.token, "/v1/signals/streams")
    except (urllib.error.URLError, OSError, ValueError):
        streams = []
    for line in format_streams(streams):
        print(line)
    return 0


def add_commands(sub: Any) -> None:
    """Register `guard agents` on the CLI's subparsers."""
    a = sub.add_parser("agents", help="list the agent inventory of a running guard")
    a.add_argument("action", nargs="?", choices=["list"], default="list",
                   help="list (the default): one agent a line, with its static secrets' age and exceptions")
    a.add_argument("--url", default=os.environ.get("GUARD_URL"),
                   help="the guard's base URL (default $GUARD_URL, else the config's public_url or listen address)")
    a.add_argument("--token", default=os.environ.get("GUARD_TOKEN"),
                   help="an admin or auditor token (default $GUARD_TOKEN)")
    a.add_argument("--json", action="store_true", help="print the raw JSON rows")
    a.set_defaults(func=cmd_agents)
