"""`mode: jwt` (the default): a single-use `cred+jwt` the guard signs for this call alone."""

from __future__ import annotations

import time

from guard.canonical import call_digest
from guard.credentials.base import CredentialRequest, HoldsNothing, Issued
from guard.identity.tokens import CRED_TYP, GuardKeys, jti

__all__ = ["JwtProvider"]


class JwtProvider(HoldsNothing):
    mode = "jwt"

    def __init__(self, keys: GuardKeys, header: str) -> None:
        self.keys = keys
        self.header = header

    async def issue(self, req: CredentialRequest) -> Issued:
        now = int(time.time())
        call, tool = req.call, req.tool
        cred_jti = jti()
        token = self.keys.sign(
            CRED_TYP,
            {
                "iss": self.keys.issuer,
                "aud": f"tool:{tool.name}",
                "sub": req.caller.agent,
                "txn": req.state.task.task_id,
                "scope": f"{tool.name}.{req.action.name}",
                "call_digest": call_digest(call.method, call.path_qs, call.body),
                "chain": list(req.caller.chain),
                "binding": req.caller.binding,
                "jti": cred_jti,
                "iat": now,
                "exp": now + req.ttl_s,
            },
        )
        return Issued({self.header: f"Bearer {token}"}, {"mode": "jwt", "source": "guard", "token_id": cred_jti},
                      cred_jti)
