"""Admission: the call counted against its task's budget and rates, atomically in the store (with
its decision record, for a call that is decided), or refused with the reason the store gave."""

from __future__ import annotations

from typing import Any

from guard.domain import Admission, AuditRecord, Caller, CallLimits
from guard.errors import BudgetExhausted, GuardError, RateLimited, TaskInactive, TxnInactive
from guard.stores.base import CallStore

__all__ = ["admit", "admit_and_record"]


async def admit(store: CallStore, caller: Caller, limits: CallLimits) -> int:
    """Count the call against budget and rates, atomically; returns the task's call count."""
    adm = await store.admit_call(caller.task_id, limits)
    if adm.ok:
        return adm.calls
    raise _refusal(adm, caller, limits)


async def admit_and_record(store: CallStore, caller: Caller, limits: CallLimits, draft: dict[str, Any]) -> AuditRecord:
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
