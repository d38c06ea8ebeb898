"""Tasks: create, list, read, complete, revoke."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from typing import Annotated, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from guard.deps import Deps
from guard.domain import Task, TaskState
from guard.errors import AgentSuspended, BadRequest, Forbidden, NotFound, UnregisteredAgent
from guard.identity.auth import ADMIN, AUDITOR, require_role
from guard.identity.binding import binding_of
from guard.identity.tokens import TASK_TYP, Principal, jti, new_id
from guard.routes.call import task_creator, task_principal
from guard.routes.common import DEPS, authorized, json_response, read_model
from guard.tasks.ends import EndReason

__all__ = ["routes"]

routes = web.RouteTableDef()
_STATUSES = ("active", "completed", "revoked", "expired")


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: str = Field(min_length=1, max_length=1000)
    requested_by: str | None = Field(None, max_length=320)
    ttl_s: int | None = Field(None, gt=0)
    max_calls: int | None = Field(None, gt=0)
    tools: list[str] | None = None
    labels: dict[Annotated[str, Field(min_length=1, max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=64)


class RevokeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=1000)


def task_view(state: TaskState, pending: list[str], now: float | None = None) -> dict[str, Any]:
    """A task as the API shows it (status with expiry applied as of `now`)."""
    t = state.task
    return {
        "task_id": t.task_id,
        "agent": t.agent,
        "purpose": t.purpose,
        "requested_by": t.requested_by,
        "status": state.effective_status(time.time() if now is None else now),
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "calls": state.calls,
        "max_calls": t.max_calls,
        "tools": list(t.tools) if t.tools is not None else None,
        "labels": t.labels,
        "pending_approvals": pending,
    }


async def _load(deps: Deps, task_id: str) -> TaskState:
    state = await deps.store.get_task(task_id)
    if state is None:
        raise NotFound("no such task", task_id=task_id)
    return await deps.task_ends.expired(state, time.time())


def _is_owner(p: Principal, state: TaskState) -> bool:
    if p.sub != state.task.agent:
        return False
    txn = p.claims.get("txn")
    return txn is None or txn == state.task.task_id


@routes.post("/v1/tasks")
async def create_task(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who, cnf = await task_creator(request, deps)
    body = await read_model(request, TaskRequest)
    policies = deps.policies.current
    if policies.has_inventory and policies.agent_entry(who.sub) is None:
        await deps.store.record_agent_event(who.sub, "unregistered_attempt", time.time())
        raise UnregisteredAgent(f"agent {who.sub!r} is not in the inventory")
    if await deps.store.is_suspended(who.sub):
        raise AgentSuspended(f"agent {who.sub!r} is suspended")
    unknown = [t for t in body.tools or [] if t not in policies.tools]
    if unknown:
        raise BadRequest(f"tools: unknown tool(s) {unknown}")
    now = time.time()
    ttl = min(body.ttl_s or deps.cfg.limits.task_ttl_s, deps.cfg.limits.task_ttl_s)
    task = Task(
        task_id=new_id("task"),
        agent=who.sub,
        purpose=body.purpose,
        requested_by=body.requested_by,
        status="active",
        created_at=now,
        expires_at=now + ttl,
        max_calls=body.max_calls,
        tools=tuple(body.tools) if body.tools is not None else None,
        labels=body.labels,
        idle_s=float(deps.cfg.limits.task_idle_s),
    )
    await deps.store.create_task(task)
    await deps.audit.append(task.task_id, "task_created", task.agent, detail=f"ttl_s={ttl}",
                            binding=binding_of(cnf))
    if await deps.store.is_suspended(task.agent):  # suspended meanwhile: the kill switch may have missed it
        await end_task(deps, task.task_id, "revoked", "guard", "agent suspended", "agent_suspended")
        raise AgentSuspended(f"agent {who.sub!r} is suspended")
    await deps.store.record_agent_event(task.agent, "task_created", now)
    claims = {"iss": deps.keys.issuer, "aud": "guard", "sub": task.agent, "txn": task.task_id,
              "iat": int(now), "exp": int(task.expires_at), "jti": jti()}
    if cnf:
        claims["cnf"] = cnf  # bound to its holder (guard.identity.binding)
    token = deps.keys.sign(TASK_TYP, claims)
    return json_response(
        {"task_id": task.task_id, "task_token": token, "status": task.status,
         "expires_at": task.expires_at, "agent": task.agent, "binding": binding_of(cnf),
         "token_type": "DPoP" if "jkt" in cnf else "Bearer"},
        status=201,
    )


@routes.get("/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    """Admin, auditor: `?status=&agent=&limit=`, newest first, with pending approvals per task."""
    await authorized(request, ADMIN, AUDITOR)
    deps = request.app[DEPS]
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


@routes.get("/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await task_principal(request, deps)
    state = await _load(deps, request.match_info["task_id"])
    if not _is_owner(who, state):
        require_role(who, ADMIN, AUDITOR)
    pending = [a.approval_id for a in await deps.approvals.pending(state.task.task_id)]
    return json_response(task_view(state, pending))


@routes.get("/v1/tasks/{task_id}/tools")
async def task_tools(request: web.Request) -> web.Response:
    """Owner agent: the tools this task may reach and their actions (for the client SDK and the
    framework adapters; whether a call is allowed is still decided per call by the rules)."""
    deps = request.app[DEPS]
    who = await task_principal(request, deps)
    state = await _load(deps, request.match_info["task_id"])
    if not _is_owner(who, state):
        raise Forbidden("only the task's agent may list its tools", task_id=state.task.task_id)
    policies = deps.policies.current
    allowed = set(policies.tools)
    if state.task.tools is not None:
        allowed &= set(state.task.tools)
    entry = policies.agent_entry(state.task.agent)
    if entry is not None and entry.tools is not None:
        allowed &= set(entry.tools)
    tools: list[dict[str, Any]] = []
    for name in sorted(allowed):
        spec = policies.tools[name]
        if spec.kind == "mcp":
            tools.append({"name": name, "kind": "mcp", "url": f"/mcp/{name}"})
        else:
            tools.append({"name": name, "kind": "http", "url": f"/tools/{name}",
                          "actions": [{"name": a.name, "method": a.method, "path": a.path} for a in spec.actions]})
    return json_response({"task_id": state.task.task_id, "tools": tools})


async def end_task(deps: Deps, task_id: str, status: str, actor: str, reason: str | None,
                   why: EndReason | None = None) -> Task | None:
    """End an active task (audited with who did it and why, announced to its open streams on
    every instance); None when it was not active."""
    return await deps.task_ends.end(task_id, status, actor, reason, why)


@routes.post("/v1/tasks/{task_id}/complete")
async def complete_task(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await task_principal(request, deps)
    state = await _load(deps, request.match_info["task_id"])
    if not _is_owner(who, state):
        raise Forbidden("only the task's agent may complete it", task_id=state.task.task_id)
    ended = await end_task(deps, state.task.task_id, "completed", who.sub, None)
    return await _view(deps, state, ended)


@routes.post("/v1/tasks/{task_id}/revoke")
async def revoke_task(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await authorized(request, ADMIN)
    body = await read_model(request, RevokeRequest)
    state = await _load(deps, request.match_info["task_id"])
    ended = await end_task(deps, state.task.task_id, "revoked", who.sub, body.reason)
    return await _view(deps, state, ended)


async def _view(deps: Deps, before: TaskState, ended: Task | None) -> web.Response:
    """The task as it is after it was ended; when retention (`retention.ended_task_s`) has removed
    it already, as it was ended (`ended`; None: it was not active, as loaded)."""
    state = await deps.store.get_task(before.task.task_id)
    if state is None:
        state = before if ended is None else replace(before, task=ended)
    return json_response(task_view(state, []))
