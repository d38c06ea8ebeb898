"""The credential swap: a fresh single-use credential and a Txn-Token for every forwarded call."""

from __future__ import annotations

import time
from collections.abc import Mapping

from guard.canonical import call_digest
from guard.domain import Action, Caller, Minted, TaskState, ToolCall
from guard.errors import GuardError
from guard.identity.tokens import CRED_TYP, TXN_TYP, GuardKeys, jti
from guard.policy import ToolSpec

__all__ = ["mint_credentials"]


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
