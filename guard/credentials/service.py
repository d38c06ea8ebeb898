"""`Credentials`: each forwarded call's credential, from the provider of its tool's mode."""

from __future__ import annotations

from collections.abc import Mapping

from guard.credentials.base import CredentialRequest, Issued, Provider
from guard.credentials.jwt import JwtProvider
from guard.credentials.none import NoneProvider
from guard.credentials.static import StaticProvider
from guard.identity.tokens import GuardKeys

__all__ = ["Credentials"]


class Credentials:
    """Every credential mode's provider, built once when the app starts."""

    def __init__(self, keys: GuardKeys, environ: Mapping[str, str]) -> None:
        made: list[Provider] = [JwtProvider(keys), StaticProvider(environ), NoneProvider()]
        self.providers: dict[str, Provider] = {p.mode: p for p in made}

    async def issue(self, req: CredentialRequest) -> Issued:
        return await self.providers[req.tool.credential.mode].issue(req)
