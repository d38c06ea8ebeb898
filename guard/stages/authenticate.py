"""Who is calling: a task token, or the Txn-Token of a call still in flight (a chained call)."""

from __future__ import annotations

from guard.domain import Caller, ToolCall
from guard.errors import Unauthenticated
from guard.identity.tokens import TASK_TYP, TXN_TYP, GuardKeys

__all__ = ["authenticate"]


def authenticate(call: ToolCall, keys: GuardKeys) -> Caller:
    if call.txn_token is not None and call.bearer is None:
        claims = keys.verify(call.txn_token, TXN_TYP, audience=keys.issuer, cache=True)
        tctx = claims.get("tctx")
        chain = tctx.get("chain") if isinstance(tctx, dict) else None
        if not isinstance(chain, list) or not chain or not all(isinstance(t, str) for t in chain):
            raise Unauthenticated("Txn-Token without a chain")
        return Caller(str(claims["sub"]), str(claims["txn"]), tuple(chain), str(claims["jti"]), "txn_token")
    if call.bearer is None:
        raise Unauthenticated("missing bearer token")
    claims = keys.verify(call.bearer, TASK_TYP, audience="guard", cache=True)
    return Caller(str(claims["sub"]), str(claims["txn"]), (), None, "task_token")
