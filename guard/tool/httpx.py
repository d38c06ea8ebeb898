"""guard.tool for httpx clients: the Txn-Token of the request being handled goes with every
request the tool sends to the guard, so its chained calls need no code.

    client = httpx.AsyncClient(auth=TxnTokenAuth(guard_url))
    await client.post(f"{guard_url}/tools/notes/notes", json=...)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from guard.tool.verify import current_credential

__all__ = ["TxnTokenAuth"]

try:  # httpx is optional (the `tool` extra); the class below only needs its Auth base
    import httpx

    _Auth: Any = httpx.Auth
except ImportError:  # pragma: no cover - without httpx there is no client to wrap
    _Auth = object


class TxnTokenAuth(_Auth):  # type: ignore[misc]
    """An httpx auth flow: a request to `guard_url` made while a credential is being handled
    carries that request's Txn-Token; other requests go out unchanged."""

    def __init__(self, guard_url: str) -> None:
        self.base = guard_url.rstrip("/") + "/"

    def auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        cred = current_credential.get()
        if cred is not None and cred.txn_token and str(request.url).startswith(self.base) \
                and "Txn-Token" not in request.headers:
            request.headers["Txn-Token"] = cred.txn_token
        yield request
