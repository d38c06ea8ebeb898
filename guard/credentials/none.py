"""`mode: none`: the tool gets no credential (only the Txn-Token and the Guard ids)."""

from __future__ import annotations

from guard.credentials.base import CredentialRequest, Holding, Issued

__all__ = ["NoneProvider"]

_NOTHING = Issued({}, {"mode": "none", "source": "none"})


class NoneProvider:
    mode = "none"

    async def issue(self, req: CredentialRequest) -> Issued:
        return _NOTHING

    async def revoke(self, holding: Holding) -> None:
        return None

    def forget(self, task_id: str) -> None:
        return None

    def prune(self, now: float) -> None:
        return None

    async def close(self) -> None:
        return None
