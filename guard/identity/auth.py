"""Who may use an API endpoint: principals from IdP tokens (or a task token for its owner)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from guard.errors import Forbidden, Unauthenticated
from guard.identity.issuers import Identity
from guard.identity.tokens import TASK_TYP, GuardKeys, Principal

__all__ = ["ADMIN", "APPROVER", "AUDITOR", "bearer", "principal", "require_role"]

ADMIN = "guard:admin"
AUDITOR = "guard:auditor"
APPROVER = "guard:approver"


def bearer(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>` (None without the header; 401 when malformed)."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    return token.strip()


async def principal(
    headers: Mapping[str, str], identity: Identity, keys: GuardKeys, allow_task_token: bool = False,
    signed_in: Callable[[], Awaitable[Principal | None]] | None = None,
) -> Principal:
    """The authenticated caller. With `allow_task_token`, a task token stands for its agent,
    limited to its own task (claims["txn"]). Without a bearer token, `signed_in` names the person
    signed in on the review page, if any (guard.oauth.sessions.session_principal)."""
    token = bearer(headers)
    if token is None:
        person = await signed_in() if signed_in is not None else None
        if person is not None:
            return person
        raise Unauthenticated("missing bearer token")
    if allow_task_token and keys.typ_of(token) == TASK_TYP:
        claims = keys.verify(token, TASK_TYP, audience="guard", cache=True)
        return Principal(str(claims["sub"]), frozenset(), keys.issuer, claims)
    return await identity.authenticate(token)


def require_role(p: Principal, *roles: str) -> None:
    if not p.roles.intersection(roles):
        raise Forbidden(f"needs one of the roles {', '.join(roles)}")
