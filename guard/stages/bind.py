"""Binding: a bound token comes from its holder, and an agent that must bind does not call with a
bearer token. The token's `cnf` is checked against what the request presented when the caller is
authenticated (guard.identity.binding.bound_to); here, the DPoP proof is used up (once, across
every instance sharing the store) and the agent's `binding: required` is enforced."""

from __future__ import annotations

from typing import Any

from guard.domain import Caller, ToolCall
from guard.errors import InvalidDpopProof, Unauthenticated
from guard.policy import PolicySet
from guard.stores.base import Store

__all__ = ["bind", "consume_proof", "refuse_unbound"]


async def bind(caller: Caller, call: ToolCall, policies: PolicySet, store: Store) -> None:
    """The binding stage of a call: refuse an unbound token the agent may not use; use up its proof."""
    refuse_unbound(caller, call, policies)
    if caller.binding == "dpop":
        seen = call.presented
        assert seen.dpop_replay_key is not None
        await consume_proof(store, seen.dpop_replay_key, seen.dpop_exp, task_id=caller.task_id, call_id=call.call_id)


def refuse_unbound(caller: Caller, call: ToolCall, policies: PolicySet) -> None:
    """An agent that must bind its tokens does not call with a bearer task token."""
    if caller.binding == "bearer" and caller.via == "task_token":
        entry = policies.agent_entry(caller.agent)
        if entry is not None and entry.binding == "required":
            raise Unauthenticated(f"agent {caller.agent!r} must bind its task token (mTLS or DPoP): "
                                  "bearer task tokens are refused", task_id=caller.task_id, call_id=call.call_id)


async def consume_proof(store: Store, replay_key: str, exp: float, **extra: Any) -> None:
    """A DPoP proof is used once, across every instance sharing the store (the one replay check:
    calls, the task endpoints and task creation alike)."""
    if not await store.consume_dpop_jti(replay_key, exp):
        raise InvalidDpopProof("DPoP proof replayed: its jti was used before", **extra)
