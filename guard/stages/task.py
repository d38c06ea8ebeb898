"""The task a call belongs to: read (and expired when due), and remembered for the allow path."""

from __future__ import annotations

from guard.domain import Caller, TaskState
from guard.errors import TaskInactive
from guard.policy import PolicySet
from guard.stores.base import TaskStore
from guard.tasks.ends import TaskEnds

__all__ = ["TaskCache", "load_active_task"]


async def load_active_task(caller: Caller, store: TaskStore, ends: TaskEnds, now: float) -> TaskState:
    """The caller's task, expired first when due (guard.tasks.ends); TaskInactive unless active."""
    state = await store.get_task(caller.task_id)
    if state is None or state.task.agent != caller.agent:
        raise TaskInactive("unknown task", task_id=caller.task_id)
    state = await ends.expired(state, now)
    if state.task.status != "active":
        raise TaskInactive(f"task is {state.task.status}", task_id=caller.task_id)
    return state


class TaskCache:
    """Recently called tasks, by id, so the allow path needs no store read before admission.

    Only what never changes is used from here (agent, purpose, labels, tools, requested_by,
    expiry): status, expiry, idle time, budget and rates are checked atomically at admission on
    every call, and any refusal reads the task afresh. When a policy looks at a task's history,
    every call reads the task (its history changes with each call)."""

    MAX = 10_000

    def __init__(self) -> None:
        self._states: dict[str, TaskState] = {}
        self._policies: PolicySet | None = None
        self._history = True

    def get(self, caller: Caller, policies: PolicySet) -> TaskState | None:
        if policies is not self._policies:
            self._policies, self._history = policies, any(r.history is not None for r in policies.rules)
        if self._history:
            return None
        state = self._states.get(caller.task_id)
        return state if state is not None and state.task.agent == caller.agent else None

    def put(self, state: TaskState) -> None:
        if len(self._states) >= self.MAX:
            self._states.pop(next(iter(self._states)))
        self._states[state.task.task_id] = state

    def drop(self, task_id: str) -> None:
        self._states.pop(task_id, None)
