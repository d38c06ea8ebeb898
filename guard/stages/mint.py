"""The credential swap: a Txn-Token for every forwarded call, and the tool's credential from its
provider (guard.credentials: a single-use cred+jwt, a static secret, an OAuth token, a lease)."""

from __future__ import annotations

import time

from guard.credentials import CredentialRequest, Credentials
from guard.domain import Action, Caller, Minted, TaskState, ToolCall
from guard.identity.tokens import TXN_TYP, GuardKeys
from guard.policy import ToolSpec

__all__ = ["mint_credentials", "txn_holder"]


def txn_holder(caller: Caller, tool: ToolSpec) -> str | None:
    """Whom a Txn-Token is bound to (cnf.spiffe_id): the tool it is sent to when the task is
    bound and the tool's SVID was checked (`spiffe_id`), else the task's own workload."""
    if tool.spiffe_id is not None and caller.binding != "bearer":
        return tool.spiffe_id
    return caller.spiffe_id


async def mint_credentials(
    call: ToolCall,
    caller: Caller,
    state: TaskState,
    action: Action,
    tool: ToolSpec,
    keys: GuardKeys,
    credentials: Credentials,
    ttl_s: int,
    txn_ttl_s: float,
) -> Minted:
    """Raises CredentialUnavailable when the tool's provider cannot answer (nothing is forwarded)."""
    now = int(time.time())
    chain = [*caller.chain, tool.name]
    task = state.task
    headers = {"Guard-Task-Id": task.task_id, "Guard-Call-Id": call.call_id}
    scope = f"{tool.name}.{action.name}"
    txn: dict[str, object] = {
        "iss": keys.issuer,
        "aud": keys.issuer,
        "sub": caller.agent,
        "txn": task.task_id,
        "scope": scope,
        "req_wl": f"tool:{tool.name}",
        "tctx": {"purpose": task.purpose, "requested_by": task.requested_by, "chain": chain},
        "jti": call.call_id,
        "iat": now,
        "exp": now + int(txn_ttl_s),
    }
    holder = txn_holder(caller, tool)
    if holder is not None:
        txn["cnf"] = {"spiffe_id": holder}
    headers["Txn-Token"] = keys.sign(TXN_TYP, txn)
    issued = await credentials.issue(CredentialRequest(call, caller, state, action, tool, ttl_s))
    headers.update(issued.headers)
    return Minted(headers, issued.jti, issued.audit)
