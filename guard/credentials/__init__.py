"""Credentials for tools: one provider per credential mode, behind a small protocol (`base.Provider`).

    jwt            a single-use cred+jwt the guard signs (jwt.py)
    static         a tool's own secret from env, a file or OpenBao/Vault KV (static.py, sources.py)
    none           nothing (none.py)
    oauth2         client credentials at the tool's authorization server (oauth2.py)
    token_exchange RFC 8693 at the tool's authorization server (oauth2.py)
    vault_lease    a dynamic secret leased per task (lease.py, vault.py)

`service.Credentials` builds them per tool, issues each call's credential, and gives back what a
task held when it ends (`release_task`).
"""

from guard.credentials.base import CredentialRequest, Holding, Issued, Provider
from guard.credentials.service import Credentials

__all__ = ["CredentialRequest", "Credentials", "Holding", "Issued", "Provider"]
