"""guard.tool for aiohttp: a server middleware that verifies guard's credential, and a client
middleware that forwards the Txn-Token on the tool's own calls through guard.

    app = protect(web.Application(), Verifier(guard_url, "notes"))
    ...
    async def read(request):
        cred = credential(request)          # task, agent, chain, scope
    ...
    session = aiohttp.ClientSession(middlewares=(txn_token_middleware(guard_url),))
    await session.post(f"{guard_url}/tools/notes/notes", json=...)   # chained: no code needed
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from guard.tool.verify import Credential, CredentialRejected, GuardUnavailable, Verifier, current_credential, refusal

__all__ = ["CREDENTIAL", "credential", "middleware", "protect", "txn_token_middleware"]

#: Where the middleware keeps the request's Credential (`request[CREDENTIAL]`).
CREDENTIAL = web.RequestKey("guard_credential", Credential)


def credential(request: web.Request) -> Credential:
    """The verified credential of the request being handled."""
    return request[CREDENTIAL]


def middleware(verifier: Verifier) -> Middleware:
    """Only requests with a live credential for this tool and this very request reach a handler:
    401 (problem details) otherwise, 503 when the guard cannot be asked. `protect` adds it to an
    app and closes the verifier's HTTP session with it."""

    @web.middleware
    async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()  # cached: the handler can still read it
        try:
            cred = await verifier.verify(request.headers.get("Authorization"), request.method, request.raw_path,
                                         body, request.headers.get("Txn-Token"))
        except (CredentialRejected, GuardUnavailable) as e:
            status, headers, payload = refusal(e)
            return web.Response(status=status, headers=headers, body=payload)
        request[CREDENTIAL] = cred
        token = current_credential.set(cred)
        try:
            return await handler(request)
        finally:
            current_credential.reset(token)

    return guard_middleware


def protect(app: web.Application, verifier: Verifier) -> web.Application:
    """Put `middleware(verifier)` in front of every handler of `app` (before it starts)."""

    async def close(_: web.Application) -> None:
        await verifier.close()

    app.middlewares.append(middleware(verifier))
    app.on_cleanup.append(close)
    return app


def txn_token_middleware(guard_url: str) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware: a request to the guard made while a credential is being
    handled carries that request's Txn-Token (and nothing is added to requests elsewhere)."""
    base = guard_url.rstrip("/") + "/"

    async def forward_txn_token(req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
                                ) -> aiohttp.ClientResponse:
        cred = current_credential.get()
        if cred is not None and cred.txn_token and str(req.url).startswith(base) and "Txn-Token" not in req.headers:
            req.headers["Txn-Token"] = cred.txn_token
        return await handler(req)

    return forward_txn_token
