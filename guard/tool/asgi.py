"""guard.tool for ASGI apps (Starlette, FastAPI, or any other): a middleware that verifies guard's
credential before the app sees the request. Pure ASGI: it imports no framework.

    app = FastAPI()
    app.add_middleware(GuardMiddleware, verifier=Verifier(guard_url, "notes"))

    @app.get("/notes/{id}")
    async def read(id: str, request: Request):
        cred = request.state.guard            # task, agent, chain, scope (also current_credential)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from guard.tool.verify import CredentialRejected, GuardUnavailable, Verifier, current_credential, problem, refusal

__all__ = ["GuardMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class GuardMiddleware:
    """401 (problem details) for a request without a live credential for this tool and this very
    request, 503 when the guard cannot be asked; otherwise the app runs with the `Credential` in
    `scope["state"]["guard"]` (Starlette's `request.state.guard`) and in `current_credential`.
    The body is read once to check the call digest, then replayed to the app unchanged."""

    def __init__(self, app: ASGIApp, verifier: Verifier, max_body_bytes: int = 1 << 20) -> None:
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes  # larger bodies get 413 before they are read in full

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(send, 413, *problem(413, "payload too large",
                                                       f"the body is over {self.max_body_bytes} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path_qs = raw_path.decode("latin-1")
        if scope.get("query_string"):
            path_qs += "?" + scope["query_string"].decode("latin-1")
        try:
            cred = await self.verifier.verify(headers.get("authorization"), scope["method"], path_qs, body,
                                              headers.get("txn-token"))
        except (CredentialRejected, GuardUnavailable) as e:
            await self._refuse(send, *refusal(e))
            return
        scope.setdefault("state", {})["guard"] = cred
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = current_credential.set(cred)
        try:
            await self.app(scope, replay, send)
        finally:
            current_credential.reset(token)

    @staticmethod
    async def _refuse(send: Send, status: int, headers: dict[str, str], payload: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": payload})

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan through; close the verifier's HTTP session at shutdown."""

        async def closing_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.verifier.close()
            await send(message)

        await self.app(scope, receive, closing_send)
