"""How a forwarded call's credential is made: one provider per credential mode of a tool
(`credential.mode` in its policy), behind the small protocol of base.py.

To add a mode: a module here with a class that has `mode` and `issue()`, an entry in
`providers()` below, and the mode's name in the policy schema (guard/policy/model.py)."""

from __future__ import annotations

from collections.abc import Mapping

from guard.credentials.base import Credential, CredentialProvider, CredentialRequest
from guard.credentials.jwt import JwtProvider
from guard.credentials.none import NoCredential
from guard.credentials.static import StaticProvider
from guard.identity.tokens import GuardKeys

__all__ = ["Credential", "CredentialProvider", "CredentialRequest", "providers"]


def providers(keys: GuardKeys, environ: Mapping[str, str]) -> dict[str, CredentialProvider]:
    """Every credential mode's provider, by mode; built once when the app starts."""
    made: list[CredentialProvider] = [JwtProvider(keys), StaticProvider(environ), NoCredential()]
    return {p.mode: p for p in made}
