"""`mode: static`: a fixed secret read from the environment (`secret_env`), in one header."""

from __future__ import annotations

from collections.abc import Mapping

from guard.credentials.base import Credential, CredentialRequest
from guard.errors import GuardError

__all__ = ["StaticProvider"]


class StaticProvider:
    mode = "static"

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    async def issue(self, request: CredentialRequest) -> Credential:
        spec = request.tool.credential
        secret = self.environ.get(spec.secret_env or "")
        if not secret:
            raise GuardError("static credential is not configured", task_id=request.task.task_id,
                             call_id=request.call.call_id)
        return Credential({spec.header or "X-Api-Key": secret})
