"""`guard audit …` against a running guard (`--url` and a token) and `guard audit export`.

Without `--url` the commands read the audit folder of the config; with it they read
`GET /v1/tasks/{id}/audit` and `GET /v1/audit?since=` with an auditor or admin token
(`--token`, or `GUARD_TOKEN`, which keeps it out of the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import IO, Any

from guard.audit.chain import Verification
from guard.audit.trails import parse_since, records_since
from guard.config import Config
from guard.errors import ConfigError

__all__ = ["RemoteError", "add_export_command", "add_remote_args", "describe_break", "fetch_trail"]


class RemoteError(Exception):
    """The running guard could not be read (unreachable, refused, no such trail)."""


def add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("GUARD_URL"),
                   help="read from a running guard at this base URL (default $GUARD_URL) instead of the folder")
    p.add_argument("--token", default=os.environ.get("GUARD_TOKEN"),
                   help="an auditor or admin token for --url (default $GUARD_TOKEN)")


def _open(url: str, token: str | None, accept: str) -> Any:
    if not token:
        raise RemoteError("an auditor or admin token is needed with --url (--token or GUARD_TOKEN)")
    if not url.startswith(("http://", "https://")):
        raise RemoteError(f"--url must be http:// or https://, not {url!r}")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})  # noqa: S310
    try:
        return urllib.request.urlopen(req, timeout=30)  # noqa: S310 - the operator names the guard's URL
    except urllib.error.HTTPError as e:
        try:
            problem = json.loads(e.read())
            detail = f"{problem.get('code')}: {problem.get('detail')}"
        except ValueError:
            detail = str(e.reason)
        raise RemoteError(f"{url} answered {e.code} ({detail})") from e
    except (urllib.error.URLError, OSError) as e:
        raise RemoteError(f"cannot reach {url}: {e}") from e


def fetch_trail(base: str, token: str | None, task_id: str) -> list[dict[str, Any]]:
    url = f"{base.rstrip('/')}/v1/tasks/{urllib.parse.quote(task_id, safe='')}/audit"
    with _open(url, token, "application/json") as resp:
        data = json.loads(resp.read())
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise RemoteError(f"{url} did not answer an audit trail")
    return records


def describe_break(records: list[dict[str, Any]], v: Verification) -> str:
    """Names the first bad record: its seq, event and call, and what is wrong with it."""
    rec = next((r for r in records if r.get("seq") == v.first_bad_seq), None)
    what = ""
    if rec is not None:
        what = f" ({rec.get('event')}" + (f", call {rec['call_id']}" if rec.get("call_id") else "") + ")"
    return f"first bad record #{v.first_bad_seq}{what}: {v.reason}"


def _write_lines(out: IO[str], records: list[dict[str, Any]]) -> None:
    for r in records:
        out.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    out.flush()


def cmd_audit_export(args: argparse.Namespace, cfg_of: Callable[[argparse.Namespace], Config]) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        if args.url:
            query = urllib.parse.urlencode({"since": repr(since)})
            with _open(f"{args.url.rstrip('/')}/v1/audit?{query}", args.token, "application/x-ndjson") as resp:
                for line in resp:
                    sys.stdout.write(line.decode())
                sys.stdout.flush()
            return 0
        cfg = cfg_of(args)
        if not cfg.audit.dir:
            raise ConfigError(cfg.source, "audit.dir", "no audit folder configured")
        for records in records_since(cfg.audit.dir, since):
            _write_lines(sys.stdout, records)
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (a SIEM shipper, `head`) went away
        sys.stderr.close()
    return 0


def add_export_command(aud: Any, cfg_of: Callable[[argparse.Namespace], Config]) -> None:
    ex = aud.add_parser("export", help="stream audit records since a time, one JSON object a line (for a SIEM)")
    ex.add_argument("--since", default="", help="unix seconds or an ISO 8601 time (default: everything)")
    ex.add_argument("--format", choices=["ndjson"], default="ndjson")
    add_remote_args(ex)
    ex.set_defaults(func=lambda args: cmd_audit_export(args, cfg_of))
