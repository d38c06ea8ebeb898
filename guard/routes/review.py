"""What reviewers and approvers read: the task list, pending approvals, the audit export
across tasks, and the review page at `/ui` (static files from guard/ui, strict CSP)."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

from aiohttp import web

from guard.audit.trails import list_trails, parse_since
from guard.errors import BadRequest, NotFound
from guard.identity.auth import ADMIN, APPROVER, AUDITOR, principal, require_role
from guard.routes.common import DEPS, json_response
from guard.routes.tasks import task_view

__all__ = ["SECURITY_HEADERS", "routes"]

routes = web.RouteTableDef()
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
_UI_FILE = re.compile(r"^[a-z0-9_-]{1,64}\.(?:js|css|png|svg)$")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_STATUSES = ("active", "completed", "revoked", "expired")


@routes.get("/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    """Admin, auditor: `?status=&agent=&limit=`, newest first, with pending approvals per task."""
    deps = request.app[DEPS]
    require_role(await principal(request, deps.identity, deps.keys), ADMIN, AUDITOR)
    status = request.query.get("status") or None
    if status is not None and status not in _STATUSES:
        raise BadRequest(f"status: must be one of {', '.join(_STATUSES)}")
    try:
        limit = max(1, min(int(request.query.get("limit", "200")), 1000))
    except ValueError as e:
        raise BadRequest("limit: must be an integer") from e
    now = time.time()
    pending: dict[str, list[str]] = defaultdict(list)
    for a in await deps.approvals.pending():
        pending[a.task_id].append(a.approval_id)
    states = await deps.store.list_tasks(None, request.query.get("agent") or None)
    rows = [task_view(s, pending[s.task.task_id], now) for s in states]
    rows = [r for r in rows if status is None or r["status"] == status]
    rows.sort(key=lambda r: r["created_at"], reverse=True)
    return json_response({"tasks": rows[:limit], "total": len(rows)})


@routes.get("/v1/approvals")
async def list_approvals(request: web.Request) -> web.Response:
    """Approver, admin: `?status=pending` (the default) or any approval status, with task context."""
    deps = request.app[DEPS]
    require_role(await principal(request, deps.identity, deps.keys), APPROVER, ADMIN)
    status = request.query.get("status", "pending")
    approvals = await deps.approvals.pending() if status == "pending" else await deps.store.list_approvals(None, status)
    out = []
    for a in sorted(approvals, key=lambda a: a.created_at):
        item = deps.approvals.describe(a)
        item.update(method=a.method, path=a.path, created_at=a.created_at, required=a.required)
        state = await deps.store.get_task(a.task_id)
        if state is not None:
            t = state.task
            item["task"] = {"task_id": t.task_id, "agent": t.agent, "purpose": t.purpose,
                            "requested_by": t.requested_by}
        out.append(item)
    return json_response({"approvals": out})


@routes.get("/v1/audit")
async def export_audit(request: web.Request) -> web.StreamResponse:
    """Auditor, admin: every record with `ts >= since` (unix or ISO), one JSON object a line."""
    deps = request.app[DEPS]
    require_role(await principal(request, deps.identity, deps.keys), AUDITOR, ADMIN)
    try:
        since = parse_since(request.query.get("since"))
    except ValueError as e:
        raise BadRequest(str(e)) from e
    task_ids = {s.task.task_id for s in await deps.store.list_tasks()}
    if deps.audit.files is not None:
        task_ids.update(list_trails(deps.audit.files.dir))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    for task_id in sorted(task_ids):
        records = [r for r in await deps.audit.records(task_id) if float(r.get("ts") or 0) >= since]
        if records:
            await resp.write(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))
    await resp.write_eof()
    return resp


def _ui_response(path: Path, content_type: str) -> web.Response:
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
    return web.Response(body=path.read_bytes(), content_type=content_type, headers=headers)


@routes.get("/ui")
async def ui_index(request: web.Request) -> web.Response:
    return _ui_response(UI_DIR / "index.html", "text/html")


@routes.get("/ui/")
async def ui_index_slash(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui")


@routes.get("/ui/{name}")
async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    path = UI_DIR / name
    if not _UI_FILE.match(name) or not path.is_file():
        raise NotFound("no such file")
    return _ui_response(path, _TYPES[path.suffix])
