"""`guard audit show | verify | export`: a task's timeline, its chain verified, records for a SIEM.

Without `--url` the commands read the audit folder of the config; with it they read
`GET /v1/tasks/{id}/audit` and `GET /v1/audit?since=` with an auditor or admin token
(`--token`, or `GUARD_TOKEN`, which keeps it out of the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import IO, Any

from guard.audit.calltree import call_tree
from guard.audit.ocsf import ocsf_lines
from guard.audit.trails import parse_since, read_trail, records_since
from guard.config import load_config
from guard.errors import ConfigError
from guard.hashchain import Verification, verify_chain

__all__ = ["RemoteError", "add_commands", "describe_break", "fetch_trail", "format_timeline"]


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


def cmd_audit_export(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ocsf = args.format == "ocsf"
    try:
        if args.url:
            query = urllib.parse.urlencode({"since": repr(since), "format": "ocsf" if ocsf else "json"})
            with _open(f"{args.url.rstrip('/')}/v1/audit?{query}", args.token, "application/x-ndjson") as resp:
                for line in resp:
                    sys.stdout.write(line.decode())
                sys.stdout.flush()
            return 0
        cfg = load_config(args.config, secrets=False)
        if not cfg.audit.dir:
            raise ConfigError(cfg.source, "audit.dir", "no audit folder configured")
        for records in records_since(cfg.audit.dir, since):
            if ocsf:
                sys.stdout.write(ocsf_lines(records).decode())
                sys.stdout.flush()
            else:
                _write_lines(sys.stdout, records)
    except RemoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader (a SIEM shipper, `head`) went away
        sys.stderr.close()
    return 0


def _fmt_time(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), UTC).strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError):
        return "?"


def _printable(text: str) -> str:
    """Escape control and format characters (ANSI escapes, CR, bidi overrides) so a hostile
    value in a record cannot rewrite the reader's terminal."""
    return "".join(
        c if c.isprintable() and unicodedata.category(c) != "Cf" else f"\\u{ord(c):04x}" for c in text
    )


def format_timeline(records: list[dict[str, Any]]) -> list[str]:
    """One line per record; a chained call is indented under the call that led to it."""
    lines = []
    for depth, r in call_tree(records):
        what = f"{r.get('tool')}.{r.get('action')}" if r.get("tool") else ""
        cols = [
            _fmt_time(r.get("ts")),
            f"#{r.get('seq')}",
            "  " * depth + ("└ " if depth else "") + str(r.get("event")),
            what,
            str(r.get("effect") or ""),
            f"rule={r['rule_id']}" if r.get("rule_id") else "",
            f"status={r['status']}" if r.get("status") is not None else "",
            f"{r['latency_ms']}ms" if r.get("latency_ms") is not None else "",
            str(r.get("detail") or ""),
        ]
        lines.append(_printable("  ".join(c for c in cols if c)))
    return lines


def _trail(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.url:
        try:
            return fetch_trail(args.url, args.token, args.task)
        except RemoteError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from e
    cfg = load_config(args.config, secrets=False)
    if not cfg.audit.dir:
        raise ConfigError(cfg.source, "audit.dir", "no audit folder configured")
    records = read_trail(cfg.audit.dir, args.task)
    if not records:
        print(f"no audit trail for {args.task} in {cfg.audit.dir}", file=sys.stderr)
        raise SystemExit(1)
    return records


def cmd_audit_show(args: argparse.Namespace) -> int:
    records = _trail(args)
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    day = datetime.fromtimestamp(float(records[0].get("ts") or 0), UTC).strftime("%Y-%m-%d")
    print(f"task {_printable(args.task)}: {len(records)} records, times UTC from {day}")
    for line in format_timeline(records):
        print(line)
    v = verify_chain(records)
    print("chain: verified" if v.verified else _printable(f"chain: BROKEN: {describe_break(records, v)}"))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    records = _trail(args)
    v = verify_chain(records)
    if v.verified:
        print(f"verified: {v.count} records, chain intact")
        return 0
    print(_printable(f"BROKEN: {describe_break(records, v)}"))
    return 2


def add_commands(sub: Any) -> None:
    aud = sub.add_parser("audit", help="read audit trails").add_subparsers(dest="audit_cmd", required=True)
    sh = aud.add_parser("show", help="print a task's timeline")
    sh.add_argument("task", metavar="TASK_ID", help="the task's id (task_...)")
    sh.add_argument("--json", action="store_true", help="print the records as JSON")
    add_remote_args(sh)
    sh.set_defaults(func=cmd_audit_show)
    ve = aud.add_parser("verify", help="verify a task's hash chain (exit 2 naming the first bad record)")
    ve.add_argument("task", metavar="TASK_ID", help="the task's id (task_...)")
    add_remote_args(ve)
    ve.set_defaults(func=cmd_audit_verify)
    ex = aud.add_parser("export", help="stream audit records since a time, one JSON object a line (for a SIEM)")
    ex.add_argument("--since", default="", help="unix seconds or an ISO 8601 time (default: everything)")
    ex.add_argument("--format", choices=["ndjson", "ocsf"], default="ndjson",
                    help="ndjson: guard's records; ocsf: OCSF API Activity events (class 6003), one a line")
    add_remote_args(ex)
    ex.set_defaults(func=cmd_audit_export)
