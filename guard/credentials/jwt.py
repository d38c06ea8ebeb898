"""`mode: jwt`: a single-use JWT signed by the guard, bound to one tool, action and request."""

from __future__ import annotations

import time

from guard.canonical import call_digest
from guard.credentials.base import CredentialRequest, Issued
from guard.identity.tokens import CRED_TYP, GuardKeys, jti

__all__ = ["JwtProvider"]


class JwtProvider:
    mode = "jwt"

    def __init__(self, keys: GuardKeys) -> None:
        self.keys = keys

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
                "jti": cred_jti,
                "iat": now,
                "exp": now + req.ttl_s,
            },
        )
        return Issued({tool.credential.header or "Authorization": f"Bearer {token}"}, cred_jti)
