"""`mode: static`: a tool's own API key, from any secret source, put into `header` through `format`."""

from __future__ import annotations

from guard.credentials.base import CredentialRequest, HoldsNothing, Issued
from guard.credentials.sources import Secret, SecretSource

__all__ = ["StaticProvider"]


class StaticProvider(HoldsNothing):
    mode = "static"

    def __init__(self, source: SecretSource, header: str, fmt: str) -> None:
        self.source = source
        self.header = header
        self.format = fmt
        self._last: tuple[Secret, Issued] | None = None  # the secret last issued, formatted once

    async def issue(self, req: CredentialRequest) -> Issued:
        secret = await self.source.get()
        last = self._last
        if last is not None and last[0] is secret:
            return last[1]
        audit: dict[str, object] = {"mode": "static", "source": self.source.label}
        if secret.version is not None:
            audit["version"] = secret.version
        issued = Issued({self.header: self.format.replace("{secret}", secret.value)}, audit)
        self._last = (secret, issued)
        return issued
