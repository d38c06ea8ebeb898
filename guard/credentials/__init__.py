"""Credentials for tools: one provider per credential mode, behind a small protocol (`base.Provider`).

    jwt      a single-use cred+jwt the guard signs (jwt.py)
    static   a tool's own secret from the environment (static.py)
    none     nothing (none.py)

`service.Credentials` issues each call's credential from the provider of its tool's mode. To add a
mode: a module here with a class that has `mode` and `issue()`, listed in `Credentials`, and the
mode's name in the policy schema (guard/policy/model.py).
"""

from guard.credentials.base import CredentialRequest, Issued, Provider
from guard.credentials.service import Credentials

__all__ = ["CredentialRequest", "Credentials", "Issued", "Provider"]
