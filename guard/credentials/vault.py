"""guard's client of OpenBao / HashiCorp Vault (the same HTTP API): its own login, renewed before
it expires, KV v2 reads (cached `cache_s`, one request shared by concurrent readers), and the
dynamic secrets of leases (read, shorten, revoke).

Login is lazy (at the first need, so the `jwt` method works when OpenBao fetches the guard's own
JWKS from the running guard), then kept alive by a renewal task: renewed at two thirds of its
TTL, or logged in afresh when it cannot be renewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from guard.config import VaultCfg
from guard.credentials.flight import shared
from guard.errors import CredentialUnavailable
from guard.identity.tokens import GuardKeys, jti
from guard.log import get_logger, network_cause, unbound, without_userinfo
from guard.policy.load import VAULT_REF

__all__ = ["Vault", "VaultError"]

log = get_logger("guard.credentials.vault")
LOGIN_JWT_TTL_S = 60
RENEW_AT = 2 / 3  # of the token's TTL


class VaultError(Exception):
    """OpenBao answered with an error status (the body is never kept: it may echo a secret), or
    (status 0) gave no answer at all: `why` says what happened instead."""

    def __init__(self, status: int, path: str, why: str | None = None) -> None:
        super().__init__(f"OpenBao answered {status} for {path}" if status else f"{why or 'no answer'} ({path})")
        self.status = status


class Vault:
    def __init__(self, cfg: VaultCfg, http: aiohttp.ClientSession, keys: GuardKeys, base: Path | None) -> None:
        self.cfg = cfg
        self.url = cfg.url.rstrip("/")
        self.http = http
        self.keys = keys
        self.base = base
        self._token: str | None = None
        self._token_exp = 0.0  # 0: does not expire
        self._token_file_stat: tuple[int, int] | None = None
        self._login: asyncio.Future[str] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._kv: dict[str, tuple[dict[str, Any], int | None, float]] = {}  # path -> (data, version, read at)
        self._kv_created: dict[str, float | None] = {}  # path -> created_time of the version read (hygiene)
        self._kv_reads: dict[str, asyncio.Future[tuple[dict[str, Any], int | None]]] = {}
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)

    # -- plumbing ---------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() or self.base is None else self.base / p

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       token: str | None = None) -> dict[str, Any]:
        headers = {"X-Vault-Token": token} if token else {}
        try:
            async with self.http.request(method, f"{self.url}/v1/{path}", json=body, headers=headers,
                                         timeout=self._timeout) as resp:
                if resp.status >= 400:
                    raise VaultError(resp.status, path)
                if resp.status == 204:
                    return {}
                data: dict[str, Any] = await resp.json(content_type=None)
                return data
        except (aiohttp.ClientError, TimeoutError) as e:
            raise VaultError(0, path, f"could not connect to OpenBao at {without_userinfo(self.url)}: "
                                      f"{network_cause(e)}") from e
        except ValueError as e:
            raise VaultError(0, path, f"OpenBao at {without_userinfo(self.url)} answered something else than "
                                      "JSON") from e

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """An API call with the guard's token; one fresh login when the token was refused."""
        token = await self.token()
        try:
            return await self._request(method, path, body, token)
        except VaultError as e:
            if e.status != 403:
                raise
        self._forget(token)
        return await self._request(method, path, body, await self.token())

    # -- the guard's own login ----------------------------------------------------------------
    def _forget(self, token: str) -> None:
        if self._token == token:
            self._token, self._token_exp = None, 0.0

    def _token_usable(self) -> bool:
        if self._token is None:
            return False
        if self.cfg.auth.method == "token" and self._token_file_changed():
            return False
        return self._token_exp == 0.0 or time.time() < self._token_exp - 5

    def _token_file_changed(self) -> bool:
        assert self.cfg.auth.token_file is not None
        try:
            st = os.stat(self._path(self.cfg.auth.token_file))
        except OSError:
            return True
        return (st.st_mtime_ns, st.st_size) != self._token_file_stat

    async def token(self) -> str:
        if self._token_usable():
            assert self._token is not None
            return self._token
        if self._login is None:  # guard's own login, for every call: its lines name none
            self._login = asyncio.get_running_loop().create_task(self._log_in(), context=unbound())
            self._login.add_done_callback(self._login_done)
        try:
            return await asyncio.shield(self._login)
        except VaultError as e:
            raise CredentialUnavailable("the guard cannot log in to the secrets manager") from e

    def _login_done(self, fut: asyncio.Future[str]) -> None:
        self._login = None
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("vault_login_failed", method=self.cfg.auth.method, error=str(fut.exception()))

    async def _log_in(self) -> str:
        auth = self.cfg.auth
        if auth.method == "token":
            assert auth.token_file is not None
            path = self._path(auth.token_file)
            try:
                st = os.stat(path)
                token = path.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise VaultError(0, "token_file", f"cannot read {path}: {e.strerror or e}") from e
            info = (await self._request("GET", "auth/token/lookup-self", token=token)).get("data") or {}
            self._token_file_stat = (st.st_mtime_ns, st.st_size)
            ttl, renewable = float(info.get("ttl") or 0), bool(info.get("renewable"))
        else:
            if auth.method == "approle":
                assert auth.role_id_file is not None and auth.secret_id_file is not None
                try:
                    body = {"role_id": self._path(auth.role_id_file).read_text(encoding="utf-8").strip(),
                            "secret_id": self._path(auth.secret_id_file).read_text(encoding="utf-8").strip()}
                except OSError as e:
                    raise VaultError(0, "approle files", f"cannot read {e.filename}: {e.strerror or e}") from e
                mount = auth.mount or "approle"
            else:
                body = {"role": str(auth.role), "jwt": self._login_jwt()}
                mount = auth.mount or "jwt"
            out = (await self._request("POST", f"auth/{mount}/login", body)).get("auth") or {}
            token = str(out.get("client_token") or "")
            if not token:
                raise VaultError(0, f"auth/{mount}/login", "the login answer holds no token")
            ttl, renewable = float(out.get("lease_duration") or 0), bool(out.get("renewable"))
        self._token, self._token_exp = token, (time.time() + ttl if ttl else 0.0)
        log.info("vault_logged_in", method=auth.method, ttl_s=ttl, renewable=renewable)
        if ttl:
            self._schedule_renewal(token, ttl, renewable)
        return token

    def _login_jwt(self) -> str:
        now = int(time.time())
        return self.keys.sign("JWT", {"iss": self.keys.issuer, "sub": self.keys.issuer, "aud": self.cfg.auth.audience,
                                      "iat": now, "nbf": now - 5, "exp": now + LOGIN_JWT_TTL_S, "jti": jti()})

    def _schedule_renewal(self, token: str, ttl: float, renewable: bool) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        self._renewer = asyncio.get_running_loop().create_task(self._renew(token, ttl, renewable), context=unbound())

    async def _renew(self, token: str, ttl: float, renewable: bool) -> None:
        """Before the token expires: renew it, or log in again (the token method re-reads its file)."""
        await asyncio.sleep(max(1.0, ttl * RENEW_AT))
        if self._token != token:
            return
        if renewable:
            try:
                out = (await self._request("POST", "auth/token/renew-self", {}, token)).get("auth") or {}
                new_ttl = float(out.get("lease_duration") or 0)
                if new_ttl >= 2:
                    self._token_exp = time.time() + new_ttl
                    log.info("vault_token_renewed", ttl_s=new_ttl)
                    self._renewer = None
                    self._schedule_renewal(token, new_ttl, True)
                    return
            except VaultError as e:
                log.warning("vault_renewal_failed", error=str(e))
        self._forget(token)
        self._renewer = None
        with contextlib.suppress(CredentialUnavailable):
            await self.token()  # logged in afresh (its own renewal scheduled)

    async def close(self) -> None:
        for task in (self._renewer, self._login):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    # -- KV v2 ------------------------------------------------------------------------------
    async def kv_field(self, ref: str) -> tuple[str, int | None]:
        """The field of `MOUNT/data/PATH#FIELD` and the secret's version. A read is reused for
        cache_s; past it, the secrets manager must answer (nothing older is used)."""
        m = VAULT_REF.match(ref)
        if m is None:
            raise CredentialUnavailable("malformed secret reference")
        path = f"{m['mount']}/data/{m['path']}"
        hit = self._kv.get(path)
        if hit is None or time.monotonic() - hit[2] >= self.cfg.cache_s:
            data, version = await shared(self._kv_reads, path, lambda: self._read_kv(path))
        else:
            data, version = hit[0], hit[1]
        value = data.get(m["field"])
        if not isinstance(value, str) or not value:
            raise CredentialUnavailable(f"the secret has no field {m['field']!r}")
        return value, version

    def kv_created(self, ref: str) -> float | None:
        """When the version last read of `MOUNT/data/PATH#FIELD` was written (KV metadata created_time)."""
        m = VAULT_REF.match(ref)
        return self._kv_created.get(f"{m['mount']}/data/{m['path']}") if m is not None else None

    async def _read_kv(self, path: str) -> tuple[dict[str, Any], int | None]:
        try:
            out = (await self.call("GET", path)).get("data") or {}
        except VaultError as e:
            raise CredentialUnavailable("the secrets manager did not answer the read") from e
        data, meta = out.get("data") or {}, out.get("metadata") or {}
        version = meta.get("version") if isinstance(meta.get("version"), int) else None
        self._kv_created[path] = _rfc3339(meta.get("created_time"))
        self._kv[path] = (data, version, time.monotonic())
        return data, version

    # -- leases -----------------------------------------------------------------------------
    async def read_lease(self, path: str) -> dict[str, Any]:
        """A dynamic secret: {lease_id, lease_duration, data}."""
        try:
            return await self.call("GET", path)
        except VaultError as e:
            raise CredentialUnavailable("the secrets manager did not grant a lease") from e

    async def shorten_lease(self, lease_id: str, ttl_s: int) -> int:
        out = await self.call("PUT", "sys/leases/renew", {"lease_id": lease_id, "increment": ttl_s})
        return int(out.get("lease_duration") or ttl_s)

    async def revoke_lease(self, lease_id: str) -> None:
        await self.call("PUT", "sys/leases/revoke", {"lease_id": lease_id})



def _rfc3339(value: object) -> float | None:
    """KV metadata's created_time (RFC 3339, nanoseconds, Z) as unix time; None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import datetime

    text = value.replace("Z", "+00:00")
    if "." in text:  # Python reads at most microseconds
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None
