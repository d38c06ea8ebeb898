"""Who is calling: a task token, or the Txn-Token of a call still in flight (a chained call),
held by the workload it is bound to (guard.identity.binding)."""

from __future__ import annotations

from typing import Any

from guard.domain import Caller, ToolCall
from guard.errors import Unauthenticated
from guard.identity.binding import Binding, bound_to
from guard.identity.tokens import TASK_TYP, TXN_TYP, GuardKeys
from guard.log import get_logger

log = get_logger("guard.authenticate")

__all__ = ["authenticate"]


def authenticate(call: ToolCall, keys: GuardKeys) -> Caller:
    if call.txn_token is not None and call.bearer is None:
        claims = keys.verify(call.txn_token, TXN_TYP, audience=keys.issuer, cache=True)
        tctx = claims.get("tctx")
        chain = tctx.get("chain") if isinstance(tctx, dict) else None
        if not isinstance(chain, list) or not chain or not all(isinstance(t, str) for t in chain):
            raise Unauthenticated("Txn-Token without a chain")
        binding, spiffe_id = _held(claims, call)
        return Caller(str(claims["sub"]), str(claims["txn"]), tuple(chain), str(claims["jti"]), "txn_token",
                      binding, spiffe_id)
    if call.bearer is None:
        raise Unauthenticated("missing bearer token")
    claims = keys.verify(call.bearer, TASK_TYP, audience=call.audience, cache=True)
    binding, spiffe_id = _held(claims, call)
    return Caller(str(claims["sub"]), str(claims["txn"]), (), None, "task_token", binding, spiffe_id)


def _held(claims: dict[str, Any], call: ToolCall) -> tuple[Binding, str | None]:
    """The token's binding, checked against what the request presented; a refusal is logged
    (a copied token used elsewhere is worth an operator's look)."""
    try:
        return bound_to(claims, call.presented)
    except Unauthenticated as err:
        log.warning("token_binding_refused", task_id=claims.get("txn"), call_id=call.call_id,
                    agent=claims.get("sub"), reason=err.detail, spiffe_id=call.presented.spiffe_id)
        raise
