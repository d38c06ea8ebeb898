"""Audit trails: one task's (verified), and every record since a time (one JSON object a line);
`?format=ocsf` gives either as OCSF API Activity events, one a line (guard.audit.ocsf)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from guard.audit.ocsf import ocsf_lines
from guard.audit.trails import list_trails, parse_since
from guard.errors import BadRequest, NotFound
from guard.hashchain import verify_chain
from guard.identity.auth import ADMIN, AUDITOR
from guard.routes.common import DEPS, authorized, json_response

__all__ = ["routes"]

routes = web.RouteTableDef()
NDJSON = "application/x-ndjson"


def _ocsf(request: web.Request) -> bool:
    """`?format=ocsf` (OCSF events) or `?format=json` / none (guard's records); anything else is refused."""
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "ocsf"):
        raise BadRequest("format must be json or ocsf")
    return fmt == "ocsf"


@routes.get("/v1/tasks/{task_id}/audit")
async def task_audit(request: web.Request) -> web.StreamResponse:
    await authorized(request, AUDITOR, ADMIN)
    deps = request.app[DEPS]
    task_id = request.match_info["task_id"]
    ocsf = _ocsf(request)
    records = await deps.audit.records(task_id)
    if not records:
        raise NotFound("no audit trail for this task", task_id=task_id)
    if ocsf:
        return web.Response(body=ocsf_lines(records), content_type=NDJSON)
    result = verify_chain(records)
    if "application/x-ndjson" in request.headers.get("Accept", ""):
        import json

        lines = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        return web.Response(body=lines, content_type="application/x-ndjson")
    out: dict[str, Any] = {"task_id": task_id, "verified": result.verified, "records": records}
    if not result.verified:
        out["first_bad_seq"] = result.first_bad_seq
        out["reason"] = result.reason
    return json_response(out)


@routes.get("/v1/audit")
async def export_audit(request: web.Request) -> web.StreamResponse:
    """Auditor, admin: every record with `ts >= since` (unix or ISO), one JSON object a line."""
    await authorized(request, AUDITOR, ADMIN)
    deps = request.app[DEPS]
    ocsf = _ocsf(request)
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
        if records and ocsf:
            await resp.write(ocsf_lines(records))
        elif records:
            await resp.write(b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records))
    await resp.write_eof()
    return resp
