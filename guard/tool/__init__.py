"""guard.tool: the tool side of guard.

A tool behind guard receives, with each request, a single-use credential (`Authorization: Bearer
<cred+jwt>`) minted for exactly that request, and a `Txn-Token` for its own chained calls. This
package checks the one and forwards the other, so a tool's handlers hold only their own logic:

- `Verifier`: checks a credential's signature against guard's JWKS (cached, refetched on an
  unknown `kid`), its audience, issuer, expiry and call digest, and introspects it at the guard
  (which consumes it: a replayed credential is refused) unless told the tool needs no single use.
- `guard.tool.aiohttp.middleware(...)` and `guard.tool.asgi.GuardMiddleware(...)` (Starlette,
  FastAPI, any ASGI app) run the verifier before any handler and expose the `Credential`.
- `guard.tool.aiohttp.txn_token_middleware` and `guard.tool.httpx.TxnTokenAuth` add the current
  request's Txn-Token to the tool's own calls through guard.

Starlette, FastAPI and httpx are optional (`pip install guard[tool]`); nothing here imports them.
"""

from guard.tool.verify import (
    Credential,
    CredentialRejected,
    GuardUnavailable,
    Verifier,
    current_credential,
)

__all__ = ["Credential", "CredentialRejected", "GuardUnavailable", "Verifier", "current_credential"]
