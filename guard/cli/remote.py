"""`guard tasks list|show|revoke` and `guard approvals list|decide`: a running guard's tasks and
approvals, through its API, with an admin, auditor or approver token (`--token` or `$GUARD_TOKEN`,
which keeps it out of the process list)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from guard.config import load_config

__all__ = ["RemoteError", "add_commands", "call", "quoted", "remote_args", "runner", "table"]


class RemoteError(Exception):
    """The guard could not be asked, or answered with an error (the message says which)."""


def _base(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    return load_config(getattr(args, "config", None), secrets=False).base_url.rstrip("/")


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API request to the guard; its JSON answer, or RemoteError with the problem's detail."""
    if not args.token:
        raise RemoteError("a token is needed (--token or GUARD_TOKEN)")
    url = _base(args) + path
    if not url.startswith(("http://", "https://")):
        raise RemoteError(f"--url must be http:// or https://, not {url!r}")
    headers = {"Authorization": f"Bearer {args.token}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - the operator's URL
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            problem = json.loads(e.read())
            detail = f"{problem.get('code') or problem.get('title')}: {problem.get('detail')}"
        except ValueError:
            detail = str(e.reason)
        raise RemoteError(f"{url} answered {e.code} ({detail})") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RemoteError(f"cannot reach {url}: {e}") from e


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """Plain-text columns, one row a line."""
    lines = [columns, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _tasks_list(args: argparse.Namespace) -> Any:
    query = {k: v for k, v in (("status", args.status), ("agent", args.agent), ("limit", args.limit)) if v}
    data = call(args, "GET", "/v1/tasks" + (f"?{urllib.parse.urlencode(query)}" if query else ""))
    if args.json:
        return data
    rows = [[t["task_id"], t["agent"], t["status"], f"{t.get('calls', 0)}/{t.get('max_calls') or '-'}",
             str(len(t.get("pending_approvals") or [])), _when(t.get("created_at")), t.get("purpose") or ""]
            for t in data.get("tasks", [])]
    return table(["task", "agent", "status", "calls", "pending", "created", "purpose"], rows)


def _task_lines(t: dict[str, Any]) -> list[str]:
    return [f"task      {t['task_id']}", f"agent     {t['agent']}", f"status    {t['status']}",
            f"purpose   {t.get('purpose')}", f"requested {t.get('requested_by') or '-'}",
            f"created   {_when(t.get('created_at'))}", f"expires   {_when(t.get('expires_at'))}",
            f"calls     {t.get('calls', 0)}/{t.get('max_calls') or '-'}",
            f"pending   {', '.join(t.get('pending_approvals') or []) or '-'}"]


def _tasks_show(args: argparse.Namespace) -> Any:
    data = call(args, "GET", f"/v1/tasks/{quoted(args.task)}")
    return data if args.json else _task_lines(data)


def _tasks_revoke(args: argparse.Namespace) -> Any:
    data = call(args, "POST", f"/v1/tasks/{quoted(args.task)}/revoke", {"reason": args.reason})
    return data if args.json else [f"revoked: {data['task_id']} ({data['status']})"]


def _approvals_list(args: argparse.Namespace) -> Any:
    data = call(args, "GET", f"/v1/approvals?{urllib.parse.urlencode({'status': args.status})}")
    if args.json:
        return data
    rows = []
    for a in data.get("approvals", []):
        task = a.get("task") or {}
        decided = len(a.get("decisions") or [])
        rows.append([a["approval_id"], a["status"], f"{a.get('tool')}.{a.get('action')}", a.get("rule_id") or "-",
                     task.get("agent") or "-", task.get("task_id") or a.get("task_id") or "-",
                     f"{decided}/{a.get('required', 1)}", _when(a.get("expires_at"))])
    return table(["approval", "status", "call", "rule", "agent", "task", "decided", "expires"], rows)


def _approvals_decide(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"decision": args.decision}
    if args.reason:
        body["reason"] = args.reason
    data = call(args, "POST", f"/v1/approvals/{quoted(args.approval)}/decision", body)
    return data if args.json else [f"{args.decision}: {data['approval_id']} is now {data['status']}"]


def runner(fn: Any) -> Any:
    """A command from a function of its arguments: its lines (or JSON) printed, a RemoteError one line, exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            out = fn(args)
        except RemoteError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        if isinstance(out, list) and all(isinstance(line, str) for line in out):
            for line in out:
                print(line)
        else:
            print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0

    return run


def remote_args(p: argparse.ArgumentParser, who: str) -> None:
    p.add_argument("--url", default=os.environ.get("GUARD_URL"),
                   help="the guard's base URL (default $GUARD_URL, else the config's public_url or listen address)")
    p.add_argument("--token", default=os.environ.get("GUARD_TOKEN"), help=f"{who} token (default $GUARD_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the guard's JSON answer")


def add_commands(sub: Any) -> None:
    tasks = sub.add_parser("tasks", help="a running guard's tasks").add_subparsers(dest="tasks_cmd", required=True)
    tl = tasks.add_parser("list", help="tasks, newest first, with their pending approvals")
    remote_args(tl, "an admin or auditor")
    tl.add_argument("--status", choices=["active", "completed", "revoked", "expired"], help="only tasks in this state")
    tl.add_argument("--agent", help="only this agent's tasks")
    tl.add_argument("--limit", type=int, help="at most this many (default 200)")
    tl.set_defaults(func=runner(_tasks_list))
    ts = tasks.add_parser("show", help="one task: agent, state, calls, pending approvals")
    ts.add_argument("task", metavar="TASK_ID", help="the task's id (task_...)")
    remote_args(ts, "an admin or auditor")
    ts.set_defaults(func=runner(_tasks_show))
    tr = tasks.add_parser("revoke", help="end a task now: its tokens, credentials and approvals stop working")
    tr.add_argument("task", metavar="TASK_ID", help="the task's id (task_...)")
    tr.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    remote_args(tr, "an admin")
    tr.set_defaults(func=runner(_tasks_revoke))

    appr = sub.add_parser("approvals", help="a running guard's step-up approvals")
    approvals = appr.add_subparsers(dest="approvals_cmd", required=True)
    al = approvals.add_parser("list", help="approvals with their task and call (pending by default)")
    remote_args(al, "an approver or admin")
    al.add_argument("--status", default="pending",
                    choices=["pending", "approved", "denied", "expired", "consumed"],
                    help="approvals in this state (default pending)")
    al.set_defaults(func=runner(_approvals_list))
    ad = approvals.add_parser("decide", help="approve or deny a pending approval, as the token's subject")
    ad.add_argument("approval", metavar="APPROVAL_ID", help="the approval's id (apr_...)")
    ad.add_argument("decision", choices=["approve", "deny"], help="the decision")
    ad.add_argument("--reason", help="why (kept in the audit trail)")
    remote_args(ad, "an approver")
    ad.set_defaults(func=runner(_approvals_decide))
