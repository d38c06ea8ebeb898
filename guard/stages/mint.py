"""The credential swap: a Txn-Token for every forwarded call, and the credential its tool's
provider makes (guard/credentials/)."""

from __future__ import annotations

import time

from guard.credentials import CredentialRequest, Credentials
from guard.domain import Action, Caller, Minted, TaskState, ToolCall
from guard.identity.tokens import TXN_TYP, GuardKeys
from guard.policy import ToolSpec

__all__ = ["mint_credentials"]


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
    now = int(time.time())
    chain = [*caller.chain, tool.name]
    scope = f"{tool.name}.{action.name}"
    task = state.task
    headers = {"Guard-Task-Id": task.task_id, "Guard-Call-Id": call.call_id}
    headers["Txn-Token"] = keys.sign(
        TXN_TYP,
        {
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
        },
    )
    issued = await credentials.issue(CredentialRequest(call, caller, state, action, tool, ttl_s))
    headers.update(issued.headers)
    return Minted(headers, issued.jti)
