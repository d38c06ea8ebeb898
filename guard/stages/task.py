"""The task a call belongs to, and admission against its budget and rates."""

from __future__ import annotations

from typing import Any

import structlog

from guard.audit import AuditLog
from guard.calls import Caller
from guard.domain import Admission, AuditRecord, CallLimits, TaskState
from guard.errors import BudgetExhausted, GuardError, RateLimited, StoreUnavailable, TaskInactive, TxnInactive
from guard.stores.base import Store

__all__ = ["admit", "admit_and_record", "expire_if_due", "finish_quietly", "load_active_task"]

log = structlog.get_logger("guard.task")


async def expire_if_due(state: TaskState, store: Store, audit: AuditLog, now: float) -> TaskState:
    """Persist the expiry of a task past `expires_at` or idle for `idle_s` (audited once)."""
    if state.task.status == "active" and state.effective_status(now) == "expired":
        reason = "expires_at reached" if now >= state.task.expires_at else "idle"
        ended = await store.end_task(state.task.task_id, "expired", now, reason)
        if ended is not None:
            await audit.append(ended.task_id, "task_expired", ended.agent, detail=reason)
            return TaskState(ended, state.calls, state.last_call_at, state.history)
    return state


async def load_active_task(caller: Caller, store: Store, audit: AuditLog, now: float) -> TaskState:
    state = await store.get_task(caller.task_id)
    if state is None or state.task.agent != caller.agent:
        raise TaskInactive("unknown task", task_id=caller.task_id)
    state = await expire_if_due(state, store, audit, now)
    if state.task.status != "active":
        raise TaskInactive(f"task is {state.task.status}", task_id=caller.task_id)
    return state


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
