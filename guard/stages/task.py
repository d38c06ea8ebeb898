"""The task a call belongs to, and admission against its budget and rates."""

from __future__ import annotations

from typing import Any

import structlog

from guard.audit import AuditLog
from guard.calls import Caller
from guard.domain import Admission, AuditRecord, CallLimits, TaskState
from guard.errors import BudgetExhausted, GuardError, RateLimited, StoreUnavailable, TaskInactive, TxnInactive
from guard.lifecycle import TaskEnds
from guard.policy import PolicySet
from guard.stores.base import Store

__all__ = ["TaskCache", "admit", "admit_and_record", "expire_if_due", "finish_quietly", "load_active_task"]

log = structlog.get_logger("guard.task")


async def expire_if_due(state: TaskState, store: Store, audit: AuditLog, now: float,
                        ends: TaskEnds | None = None) -> TaskState:
    """Persist the expiry of a task past `expires_at` or idle for `idle_s` (audited once); with
    `ends`, the expiry is also announced to whatever the task holds open, on every instance."""
    if ends is not None:
        return await ends.expired(state, now)
    if state.task.status == "active" and state.effective_status(now) == "expired":
        reason = "expires_at reached" if now >= state.task.expires_at else "idle"
        ended = await store.end_task(state.task.task_id, "expired", now, reason)
        if ended is not None:
            await audit.append(ended.task_id, "task_expired", ended.agent, detail=reason)
            return TaskState(ended, state.calls, state.last_call_at, state.history)
    return state


async def load_active_task(caller: Caller, store: Store, audit: AuditLog, now: float,
                           ends: TaskEnds | None = None) -> TaskState:
    state = await store.get_task(caller.task_id)
    if state is None or state.task.agent != caller.agent:
        raise TaskInactive("unknown task", task_id=caller.task_id)
    state = await expire_if_due(state, store, audit, now, ends)
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


async def admit(store: Store, caller: Caller, limits: CallLimits) -> int:
    """Count the call against budget and rates, atomically; returns the task's call count."""
    adm = await store.admit_call(caller.task_id, limits)
    if adm.ok:
        return adm.calls
    raise _refusal(adm, caller, limits)


async def admit_and_record(store: Store, caller: Caller, limits: CallLimits, draft: dict[str, Any]) -> AuditRecord:
    """Count the call and chain its decision record, in one atomic store operation (the record's
    durable copy is the caller's to keep); a refusal records nothing and raises."""
    adm, record = await store.admit_and_record(caller.task_id, limits, draft)
    if adm.ok and record is not None:
        return record
    raise _refusal(adm, caller, limits)


def _refusal(adm: Admission, caller: Caller, limits: CallLimits) -> GuardError:
    ids = {"task_id": caller.task_id, "call_id": limits.call_id}
    if adm.reason == "budget_exhausted":
        return BudgetExhausted("the task's max_calls is used up", **ids)
    if adm.reason == "rate_limited":
        err = RateLimited("rate of rule exceeded", rule_id=adm.rule_id, **ids)
        err.headers["Retry-After"] = str(max(1, int((adm.retry_after or 1) + 0.999)))
        return err
    if adm.reason == "txn_inactive":
        return TxnInactive("the call this Txn-Token was issued with has finished", **ids)
    return TaskInactive("task is no longer active", **ids)


async def finish_quietly(store: Store, task_id: str, call_id: str) -> None:
    """End a call in flight (its Txn-Token stops working); a store failure is only logged."""
    try:
        await store.finish_call(task_id, call_id)
    except StoreUnavailable:
        log.warning("call_finish_failed", task_id=task_id, call_id=call_id)
