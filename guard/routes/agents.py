"""The NHI inventory: `GET /v1/agents`, and the kill switch (suspend / restore an agent)."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from guard.deps import Deps
from guard.domain import AgentStats
from guard.errors import BadRequest
from guard.identity.auth import ADMIN, AUDITOR
from guard.log import get_logger
from guard.policy import AgentEntry, PolicySet
from guard.routes.common import DEPS, authorized, json_response, read_model
from guard.tasks.suspend import suspend_agent as suspend

__all__ = ["inventory", "routes"]

routes = web.RouteTableDef()
log = get_logger("guard.agents")


class SuspendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)


def _sub(request: web.Request) -> str:
    sub = request.match_info["sub"]  # aiohttp has decoded it (%2F included)
    if not sub or len(sub) > 1024:
        raise BadRequest("the agent's sub must be 1 to 1024 characters, URL-encoded")
    return sub


async def _active_tasks(deps: Deps, now: float) -> dict[str, int]:
    """Active tasks by agent, expiring (and auditing) those past expires_at or idle."""
    counts: dict[str, int] = {}
    for state in await deps.store.list_tasks(status="active"):
        state = await deps.task_ends.expired(state, now)
        if state.task.status == "active":
            counts[state.task.agent] = counts.get(state.task.agent, 0) + 1
    return counts


def _row(agent: str, entry: AgentEntry | None, stats: AgentStats, active: int) -> dict[str, Any]:
    return {
        "agent": agent,
        "owner": entry.owner if entry else None,
        "purpose": entry.purpose if entry else None,
        "registered": entry is not None,
        "entry": entry.pattern if entry else None,
        "tools_cap": list(entry.tools) if entry and entry.tools is not None else None,
        "first_seen": stats.first_seen,
        "last_seen": stats.last_seen,
        "active_tasks": active,
        "tasks_created": stats.tasks_created,
        "calls": stats.calls,
        "denied": stats.denied,
        "unregistered_attempts": stats.attempts,
        "tools_used": sorted(stats.tools_used),
        "suspended": stats.suspended,
        "suspended_reason": stats.suspended_reason,
        "suspended_by": stats.suspended_by,
        "suspended_at": stats.suspended_at,
    }


def inventory(policies: PolicySet, stats: dict[str, AgentStats], active: dict[str, int]) -> list[dict[str, Any]]:
    """One row per agent seen (or suspended, or with a task), then one per entry no seen agent matched."""
    rows = []
    matched: set[str] = set()
    for sub in sorted(set(stats) | set(active)):
        entry = policies.agent_entry(sub)
        if entry is not None:
            matched.add(entry.pattern)
        rows.append(_row(sub, entry, stats.get(sub) or AgentStats(sub), active.get(sub, 0)))
    for entry in policies.agents:
        if entry.pattern not in matched:
            rows.append(_row(entry.pattern, entry, AgentStats(entry.pattern), 0))
    return rows


@routes.get("/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    await authorized(request, ADMIN, AUDITOR)
    deps = request.app[DEPS]
    active = await _active_tasks(deps, time.time())
    policies = deps.policies.current
    rows = inventory(policies, await deps.store.agent_stats(), active)
    secrets = await deps.credentials.secret_report(policies.tools) if deps.credentials is not None else {}
    for row in rows:  # credentials hygiene: the static secrets of the tools the agent may use
        cap = row["tools_cap"]
        row["secrets"] = {tool: view for tool, view in secrets.items() if cap is None or tool in cap}
    if deps.baselines is not None:  # baselines: what each agent usually does
        learn_s = deps.baselines.learn_s
        stats = await deps.store.baseline_stats([row["agent"] for row in rows])
        for row in rows:
            b = stats.get(row["agent"])
            row["baseline"] = None if b is None else {
                "since": b.first_at, "learning": b.first_at is not None and time.time() - b.first_at < learn_s,
                "actions": sorted(b.actions), "busiest_hour_calls": b.busiest, "this_hour_calls": b.hour_calls}
    return json_response(rows)


@routes.post("/v1/agents/{sub}/suspend")
async def suspend_agent(request: web.Request) -> web.Response:
    """Kill switch: refuse new tasks, then revoke every active one (on every instance, through the store)."""
    deps = request.app[DEPS]
    who = await authorized(request, ADMIN)
    agent = _sub(request)
    body = await read_model(request, SuspendRequest)
    done = await suspend(deps.store, deps.task_ends, agent, body.reason, who.sub)
    log.warning("agent_suspended", agent=agent, actor=who.sub, reason=body.reason, revoked_tasks=list(done.revoked),
                already=not done.newly)
    return json_response({"agent": agent, "suspended": True, "revoked_tasks": list(done.revoked)})


@routes.post("/v1/agents/{sub}/restore")
async def restore_agent(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await authorized(request, ADMIN)
    agent = _sub(request)
    lifted = await deps.store.restore_agent(agent)
    log.warning("agent_restored", agent=agent, actor=who.sub, was_suspended=lifted)
    return json_response({"agent": agent, "suspended": False, "restored": lifted})
