"""RFC 7662 introspection of credentials; the first introspection consumes one."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from guard.errors import GuardError, Unauthenticated
from guard.identity.tokens import CRED_TYP
from guard.log import get_logger
from guard.routes.common import DEPS, json_response, read_body

__all__ = ["routes"]

routes = web.RouteTableDef()
log = get_logger("guard.credentials")
INACTIVE = {"active": False}


def _token_of(body: bytes, content_type: str) -> str | None:
    try:
        if content_type.startswith("application/json"):
            data = json.loads(body or b"{}")
            token = data.get("token") if isinstance(data, dict) else None
        else:
            values = parse_qs(body.decode()).get("token")
            token = values[0] if values else None
    except (ValueError, UnicodeDecodeError):
        return None
    return token if isinstance(token, str) else None


@routes.post("/v1/credentials/introspect")
async def introspect(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    body = await read_body(request, 65536)
    token = _token_of(body, request.headers.get("Content-Type", ""))
    if token is None:
        return json_response(INACTIVE)
    try:
        claims = deps.keys.verify(token, CRED_TYP, audience=None)
    except Unauthenticated:
        return json_response(INACTIVE)
    task_id, agent = str(claims.get("txn")), str(claims.get("sub"))
    state = await deps.store.get_task(task_id)
    active = state is not None and state.effective_status(time.time()) == "active"
    if active:
        active = await deps.store.consume_credential(str(claims["jti"]), float(claims["exp"]))
    try:
        await deps.audit.append(task_id, "credential_introspected", agent, effect="active" if active else "inactive",
                                detail=str(claims.get("scope")), jti_digest=str(claims["jti"])[:8])
    except GuardError:
        if active:
            raise  # fail closed: an unaudited credential is never reported active
    log.info("credential_introspected", task_id=task_id, active=active)
    if not active:
        return json_response(INACTIVE)
    out: dict[str, Any] = {"active": True, "token_type": CRED_TYP}
    for k in ("iss", "sub", "scope", "txn", "aud", "exp", "iat", "call_digest", "chain", "jti"):
        out[k] = claims.get(k)
    out["binding"] = claims.get("binding", "bearer")  # how the calling agent's token was bound
    return json_response(out)
