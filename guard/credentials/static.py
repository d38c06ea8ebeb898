"""`mode: static`: a fixed secret read from the environment (`secret_env`), in one header."""

from __future__ import annotations

from collections.abc import Mapping

from guard.credentials.base import CredentialRequest, Issued
from guard.errors import GuardError

__all__ = ["StaticProvider"]


class StaticProvider:
    mode = "static"

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    async def issue(self, req: CredentialRequest) -> Issued:
        spec = req.tool.credential
        secret = self.environ.get(spec.secret_env or "")
        if not secret:
            raise GuardError("static credential is not configured", task_id=req.state.task.task_id,
                             call_id=req.call.call_id)
        return Issued({spec.header or "X-Api-Key": secret})
