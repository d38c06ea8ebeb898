"""`mode: none`: the tool gets no credential (only the Txn-Token and the Guard ids)."""

from __future__ import annotations

from guard.credentials.base import Credential, CredentialRequest

__all__ = ["NoCredential"]


class NoCredential:
    mode = "none"

    async def issue(self, request: CredentialRequest) -> Credential:
        return Credential({})
