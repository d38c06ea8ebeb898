"""`mode: none`: the tool gets no credential (only the Txn-Token and the Guard ids)."""

from __future__ import annotations

from guard.credentials.base import CredentialRequest, HoldsNothing, Issued

__all__ = ["NoneProvider"]

_NOTHING = Issued({}, {"mode": "none", "source": "none"})


class NoneProvider(HoldsNothing):
    mode = "none"

    async def issue(self, req: CredentialRequest) -> Issued:
        return _NOTHING
