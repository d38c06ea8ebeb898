"""Where a secret comes from: the environment (read once), a file (re-read when it changes), or a
KV v2 secret in OpenBao / Vault (reused for `secrets.vault.cache_s`).

    source = secret_source(ref, environ, vault)
    secret = await source.get()          # Secret(value, version); CredentialUnavailable if it cannot
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from guard.credentials.vault import Vault
from guard.errors import CredentialUnavailable
from guard.policy.model import SecretRef

__all__ = ["FILE_CHECK_S", "Secret", "SecretSource", "secret_source"]

FILE_CHECK_S = 0.5  # a file source looks at the file's stat at most this often (a change is seen within 1 s)
STARTED = time.time()  # an environment variable's secret is as old as the process that read it


@dataclass(frozen=True, slots=True)
class Secret:
    value: str
    version: int | str | None = None  # the KV version, the file's mtime; never derived from the value
    created_at: float | None = None  # when this value was set: KV created_time, file mtime, env: guard's start


class SecretSource(Protocol):
    label: str

    async def get(self) -> Secret: ...


class EnvSource:
    """An environment variable, read at start: rotating it means a restart."""

    def __init__(self, ref: SecretRef, environ: Mapping[str, str]) -> None:
        self.label = ref.label
        value = environ.get(ref.ref)
        self._secret = Secret(value, None, STARTED) if value else None

    async def get(self) -> Secret:
        if self._secret is None:
            raise CredentialUnavailable(f"the secret's environment variable ({self.label}) is not set")
        return self._secret


class FileSource:
    """A file (a Kubernetes secret volume, an agent's sink), re-read when its stat changes. A
    missing or empty file fails closed; a trailing newline is not part of the secret."""

    def __init__(self, ref: SecretRef) -> None:
        self.label = ref.label
        self.path = ref.ref
        self._secret: Secret | None = None
        self._stat: tuple[int, int, int] | None = None
        self._checked = 0.0

    async def get(self) -> Secret:
        now = time.monotonic()
        if self._secret is not None and now - self._checked < FILE_CHECK_S:
            return self._secret
        self._checked = now
        try:
            st = os.stat(self.path)  # one stat at most every FILE_CHECK_S
            stat = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stat != self._stat or self._secret is None:
                with open(self.path, encoding="utf-8") as f:
                    value = f.read().rstrip("\r\n")
                self._stat = stat
                self._secret = Secret(value, st.st_mtime_ns // 1_000_000, st.st_mtime) if value else None
        except OSError:
            self._secret, self._stat = None, None
        if self._secret is None:
            raise CredentialUnavailable(f"the secret file ({self.label}) cannot be read or is empty")
        return self._secret


class VaultSource:
    """A field of a KV v2 secret, through the guard's OpenBao / Vault client (cached there)."""

    def __init__(self, ref: SecretRef, vault: Vault | None) -> None:
        self.label = ref.label
        self.ref = ref.ref
        self.vault = vault

    async def get(self) -> Secret:
        if self.vault is None:
            raise CredentialUnavailable("secrets.vault is not configured")
        value, version = await self.vault.kv_field(self.ref)
        return Secret(value, version, self.vault.kv_created(self.ref))


def secret_source(ref: SecretRef, environ: Mapping[str, str], vault: Vault | None) -> SecretSource:
    if ref.kind == "env":
        return EnvSource(ref, environ)
    if ref.kind == "file":
        return FileSource(ref)
    return VaultSource(ref, vault)
