"""Credentials hygiene (guard.yaml `credentials_hygiene`): how old each static secret is, and the
documented exception each may need.

- A static secret's age runs from when its value was set: the OpenBao/Vault KV version's
  `created_time`, the file's mtime, or guard's start for an environment variable.
- Past `max_secret_age_s`, a call answers 503 `credential_stale` (`on_stale: deny`), or goes
  through with a `credential_stale` record in its task's trail (`warn`).
- `exception: {owner, reason, expires}` beside the secret documents why it is allowed; past
  `expires` the secret is not used (503 `credential_exception_expired`), configured hygiene or not.
- With `require_exceptions: true`, a static secret without an exception is a policy error at load.

With no `credentials_hygiene` and no exception, nothing here runs on a call.
"""

from __future__ import annotations

import time
from typing import Any

from guard.config import Config, CredentialsHygieneCfg
from guard.credentials.sources import Secret
from guard.errors import ConfigError, CredentialExceptionExpired, CredentialStale
from guard.policy import PolicySet
from guard.policy.model import CredentialSpec

__all__ = ["check_secret", "require_exceptions", "secret_view"]


def check_secret(secret: Secret, spec: CredentialSpec, hygiene: CredentialsHygieneCfg | None,
                 now: float) -> float | None:
    """Refuse a secret whose exception expired, or that is stale under `on_stale: deny`. Returns its
    age when it is stale under `warn` (the caller audits `credential_stale`), else None."""
    if spec.exception is not None and now >= spec.exception.expires:
        raise CredentialExceptionExpired(f"the exception for this tool's static secret expired "
                                         f"(owner {spec.exception.owner}); rotate it or renew the exception")
    if hygiene is None or hygiene.max_secret_age_s is None or secret.created_at is None:
        return None
    age = now - secret.created_at
    if age <= hygiene.max_secret_age_s:
        return None
    if hygiene.on_stale == "deny":
        raise CredentialStale(f"this tool's static secret is {int(age)} s old, past max_secret_age_s "
                              f"({int(hygiene.max_secret_age_s)} s): rotate it")
    return age


def secret_view(secret: Secret | None, spec: CredentialSpec, hygiene: CredentialsHygieneCfg | None,
                now: float | None = None, error: str | None = None) -> dict[str, Any]:
    """What the inventory shows of a tool's static secret (never its value)."""
    now = time.time() if now is None else now
    age = round(now - secret.created_at, 3) if secret is not None and secret.created_at is not None else None
    max_age = hygiene.max_secret_age_s if hygiene is not None else None
    assert spec.secret is not None
    return {"source": spec.secret.label, "version": secret.version if secret is not None else None,
            "age_s": age, "max_age_s": max_age,
            "stale": age is not None and max_age is not None and age > max_age,
            "exception": spec.exception.view() if spec.exception is not None else None,
            "exception_expired": spec.exception is not None and now >= spec.exception.expires,
            **({"error": error} if error else {})}


def require_exceptions(cfg: Config, policies: PolicySet) -> None:
    """With `require_exceptions: true`, every static secret declares its exception (a load error
    otherwise: start-up fails, a reload keeps the policies in force)."""
    if cfg.credentials_hygiene is None or not cfg.credentials_hygiene.require_exceptions:
        return
    for name, tool in sorted(policies.tools.items()):
        if tool.credential.mode == "static" and tool.credential.exception is None:
            raise ConfigError(str(cfg.policies), f"tools.{name}.credential.exception",
                              "credentials_hygiene.require_exceptions: a static secret needs "
                              "exception: {owner, reason, expires}")
