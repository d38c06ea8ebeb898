"""The credential swap: a fresh single-use credential and a Txn-Token for every forwarded call."""

from __future__ import annotations

import time
from collections.abc import Mapping

from guard.calls import Action, Caller, Minted, ToolCall
from guard.canonical import call_digest
from guard.domain import TaskState
from guard.errors import GuardError
from guard.policy import ToolSpec
from guard.tokens import CRED_TYP, TXN_TYP, GuardKeys, jti

__all__ = ["mint_credentials", "txn_holder"]


def txn_holder(caller: Caller, tool: ToolSpec) -> str | None:
    """Whom a Txn-Token is bound to (cnf.spiffe_id): the tool it is sent to when the task is
    bound and the tool's SVID was checked (`spiffe_id`), else the task's own workload."""
    if tool.spiffe_id is not None and caller.binding != "bearer":
        return tool.spiffe_id
    return caller.spiffe_id


def mint_credentials(
    call: ToolCall,
    caller: Caller,
    state: TaskState,
    action: Action,
    tool: ToolSpec,
    keys: GuardKeys,
    ttl_s: int,
    txn_ttl_s: float,
    environ: Mapping[str, str],
) -> Minted:
    now = int(time.time())
    chain = [*caller.chain, tool.name]
    scope = f"{tool.name}.{action.name}"
    task = state.task
    headers = {"Guard-Task-Id": task.task_id, "Guard-Call-Id": call.call_id}
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
    cred_jti: str | None = None
    mode = tool.credential.mode
    if mode == "jwt":
        cred_jti = jti()
        token = keys.sign(
            CRED_TYP,
            {
                "iss": keys.issuer,
                "aud": f"tool:{tool.name}",
                "sub": caller.agent,
                "txn": task.task_id,
                "scope": scope,
                "call_digest": call_digest(call.method, call.path_qs, call.body),
                "chain": list(caller.chain),
                "binding": caller.binding,
                "jti": cred_jti,
                "iat": now,
                "exp": now + ttl_s,
            },
        )
        headers[tool.credential.header or "Authorization"] = f"Bearer {token}"
    elif mode == "static":
        secret = environ.get(tool.credential.secret_env or "")
        if not secret:
            raise GuardError("static credential is not configured", task_id=task.task_id, call_id=call.call_id)
        headers[tool.credential.header or "X-Api-Key"] = secret
    return Minted(headers, cred_jti)
