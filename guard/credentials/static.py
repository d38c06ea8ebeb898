"""`mode: static`: a tool's own API key, from any secret source, put into `header` through `format`."""

from __future__ import annotations

import time

from guard.config import CredentialsHygieneCfg
from guard.credentials.base import CredentialRequest, HoldsNothing, Issued
from guard.credentials.hygiene import check_secret
from guard.credentials.sources import Secret, SecretSource
from guard.policy.model import CredentialSpec

__all__ = ["StaticProvider"]


class StaticProvider(HoldsNothing):
    mode = "static"

    def __init__(self, source: SecretSource, header: str, fmt: str, spec: CredentialSpec | None = None,
                 hygiene: CredentialsHygieneCfg | None = None) -> None:
        self.source = source
        self.header = header
        self.format = fmt
        self._last: tuple[Secret, Issued] | None = None  # the secret last issued, formatted once
        self.spec = spec
        self.hygiene = hygiene
        # credentials hygiene: checked on a call only when configured or an exception is declared
        self._checked = spec is not None and (hygiene is not None or spec.exception is not None)

    async def issue(self, req: CredentialRequest) -> Issued:
        secret = await self.source.get()
        if self._checked:
            assert self.spec is not None
            stale_age = check_secret(secret, self.spec, self.hygiene, time.time())
            if stale_age is not None:  # on_stale: warn (the service audits credential_stale)
                issued = self._issued(secret)
                return Issued(issued.headers, {**(issued.audit or {}), "stale": True, "age_s": int(stale_age)})
        return self._issued(secret)

    def _issued(self, secret: Secret) -> Issued:
        last = self._last
        if last is not None and last[0] is secret:
            return last[1]
        audit: dict[str, object] = {"mode": "static", "source": self.source.label}
        if secret.version is not None:
            audit["version"] = secret.version
        issued = Issued({self.header: self.format.replace("{secret}", secret.value)}, audit)
        self._last = (secret, issued)
        return issued
