"""`mode: jwt`: a single-use JWT signed by the guard, bound to one tool, action and request."""

from __future__ import annotations

from guard.canonical import call_digest
from guard.credentials.base import Credential, CredentialRequest
from guard.identity.tokens import CRED_TYP, GuardKeys, jti

__all__ = ["JwtProvider"]


class JwtProvider:
    mode = "jwt"

    def __init__(self, keys: GuardKeys) -> None:
        self.keys = keys

    async def issue(self, request: CredentialRequest) -> Credential:
        call, tool, now = request.call, request.tool, request.now
        cred_jti = jti()
        token = self.keys.sign(
            CRED_TYP,
            {
                "iss": self.keys.issuer,
                "aud": f"tool:{tool.name}",
                "sub": request.caller.agent,
                "txn": request.task.task_id,
                "scope": request.scope,
                "call_digest": call_digest(call.method, call.path_qs, call.body),
                "chain": list(request.caller.chain),
                "jti": cred_jti,
                "iat": now,
                "exp": now + request.ttl_s,
            },
        )
        return Credential({tool.credential.header or "Authorization": f"Bearer {token}"}, cred_jti)
