"""Suspending an agent (the kill switch): what `POST /v1/agents/{sub}/suspend` and a Shared Signal
naming the agent (guard.signals) both do.

The store refuses the agent's new tasks first, then every active task of the agent is revoked
through `TaskEnds.end`: its tokens, Txn-Tokens, credentials, leases and pending approvals stop
working, and its open streams close on every instance within a second."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from guard.domain import TaskState
from guard.stores.base import Store
from guard.tasks.ends import TaskEnds

__all__ = ["Suspension", "suspend_agent"]


@dataclass(frozen=True, slots=True)
class Suspension:
    agent: str
    newly: bool  # False: it was suspended already (the first reason stays)
    revoked: tuple[str, ...]  # the task ids revoked now


async def suspend_agent(store: Store, ends: TaskEnds, agent: str, reason: str, actor: str,
                        fields: Mapping[str, Any] | None = None,
                        before_end: Callable[[TaskState], Awaitable[None]] | None = None) -> Suspension:
    """Suspend `agent` and revoke its active tasks; each `task_revoked` record carries `fields`,
    and `before_end(state)` runs before each task is ended (to write what led to it in its trail)."""
    newly = await store.suspend_agent(agent, reason, actor, time.time())
    if newly:
        ends.suspended_here(agent, reason)
    revoked = []
    for state in await store.list_tasks(status="active", agent=agent):
        if before_end is not None:
            await before_end(state)
        if await ends.end(state.task.task_id, "revoked", actor, f"agent suspended: {reason}", "agent_suspended",
                          fields) is not None:
            revoked.append(state.task.task_id)
    return Suspension(agent, newly, tuple(revoked))
