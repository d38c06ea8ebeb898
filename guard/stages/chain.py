"""Chained calls: the depth limit, and the parent call whose Txn-Token was presented must
still be in flight (checked again, atomically, at admission)."""

from __future__ import annotations

from guard.domain import Caller
from guard.errors import ChainTooDeep, TxnInactive
from guard.stores.base import CallStore

__all__ = ["check_chain"]


async def check_chain(store: CallStore, caller: Caller, max_depth: int, call_id: str) -> None:
    """Refuse a chain deeper than `max_depth` or a Txn-Token whose call has finished, before
    any policy is evaluated (so a dead Txn-Token cannot even open an approval)."""
    if caller.parent_call_id is None:
        return
    ids = {"task_id": caller.task_id, "call_id": call_id}
    if len(caller.chain) > max_depth:
        raise ChainTooDeep(f"chain depth {len(caller.chain)} exceeds {max_depth}", **ids)
    if not await store.call_in_flight(caller.task_id, caller.parent_call_id):
        raise TxnInactive("the call this Txn-Token was issued with has finished", **ids)
