"""Who is calling the guard's API: tokens of configured issuers (or the development issuer)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from guard.config import Config, IssuerCfg
from guard.errors import Unauthenticated
from guard.identity.tokens import (
    DEV_ISSUER,
    GUARD_TYPS,
    MAX_TOKEN_BYTES,
    GuardKeys,
    KeyFileError,
    Principal,
    PrivateKey,
    load_or_create_key,
    read_key_json,
    unverified_header,
)
from guard.log import get_logger

__all__ = ["Identity", "dev_token"]

log = get_logger("guard.identity")

_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}


class _Issuer:
    """One trusted issuer: its keys (file or URL, cached, refetched on an unknown kid)."""

    def __init__(self, cfg: IssuerCfg, base_dir: Path) -> None:
        self.cfg = cfg
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at: float | None = None  # monotonic time of the last JWKS fetch
        self.base_dir = base_dir
        self._fetching = asyncio.Lock()
        if cfg.jwks_file:
            self._set_keys(_read_jwks(base_dir / cfg.jwks_file))

    def _set_keys(self, jwks: dict[str, Any]) -> None:
        keys: dict[str, jwt.PyJWK] = {}
        for raw in jwks.get("keys", []):
            if raw.get("kty") == "oct":
                continue  # never a shared secret for an asymmetric issuer
            try:
                keys[str(raw.get("kid", ""))] = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                log.warning("jwks_key_skipped", issuer=self.cfg.issuer, kid=raw.get("kid"))
        self.keys = keys

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    def _due(self, key: jwt.PyJWK | None) -> bool:
        """Fetch when the cache is older than jwks_max_age_s, or for an unknown kid at most
        once per jwks_refetch_min_s (a token naming random kids cannot cause a fetch storm)."""
        if not self.cfg.jwks_url:
            return False
        if self.fetched_at is None:
            return True
        age = time.monotonic() - self.fetched_at
        return age > self.cfg.jwks_max_age_s or (key is None and age > self.cfg.jwks_refetch_min_s)

    async def key_for(self, kid: str | None, http: aiohttp.ClientSession | None) -> jwt.PyJWK:
        key = self._lookup(kid)
        if http is not None and self._due(key):
            async with self._fetching:  # concurrent callers wait for the one fetch in flight
                if self._due(self._lookup(kid)):
                    await self._fetch(http)
            key = self._lookup(kid)
        if key is None:
            raise Unauthenticated("unknown key id")
        return key

    async def _fetch(self, http: aiohttp.ClientSession) -> None:
        self.fetched_at = time.monotonic()
        assert self.cfg.jwks_url is not None
        try:
            async with http.get(self.cfg.jwks_url, timeout=aiohttp.ClientTimeout(total=5)) as r:
                r.raise_for_status()
                self._set_keys(await r.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("jwks_fetch_failed", issuer=self.cfg.issuer, error=type(e).__name__)


def _read_jwks(path: Path) -> dict[str, Any]:
    """A JWKS file; a KeyFileError naming it when it is missing, unreadable or not a JWKS."""
    data = read_key_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise KeyFileError(f"{path}: not a JWKS (a JSON object with a list of keys)")
    return data


class Identity:
    """Verifies IdP tokens presented to the API (task creation, admin, auditor, approver).
    A JWKS file or development key that cannot be used is a config error naming it."""

    def __init__(self, cfg: Config, base_dir: Path | None = None, create_keys: bool = True) -> None:
        base = base_dir or Path.cwd()
        self.issuers: dict[str, _Issuer] = {}
        for i, entry in enumerate(cfg.issuers):
            if entry.x509 is None:
                try:
                    self.issuers[entry.issuer] = _Issuer(entry, base)
                except KeyFileError as e:
                    raise cfg.error(("issuers", i, "jwks_file"), str(e)) from None
        self.http: aiohttp.ClientSession | None = None
        self.dev: GuardKeys | None = None
        if cfg.dev_mode:
            self.dev = GuardKeys(dev_key(cfg, create_keys), DEV_ISSUER)

    async def authenticate(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large")
        header = unverified_header(token)
        if header.get("typ") in GUARD_TYPS:
            raise Unauthenticated("a guard-issued token cannot authenticate here")
        if "crit" in header or header.get("cty", "").upper() == "JWT":
            raise Unauthenticated("unsupported token header")
        try:
            iss = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError as e:
            raise Unauthenticated("malformed token") from e
        if self.dev is not None and iss == DEV_ISSUER:
            claims = self.dev.verify(token, "JWT", audience="guard")
            return Principal(str(claims["sub"]), _roles(claims.get("roles")), DEV_ISSUER, claims)
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthenticated("unknown issuer")
        alg = header.get("alg")
        if alg not in issuer.cfg.algorithms:
            raise Unauthenticated("algorithm not allowed")
        kid = header.get("kid")
        key = await issuer.key_for(kid if isinstance(kid, str) else None, self.http)
        if not str(alg).startswith(_FAMILY.get(str(key.key_type), ())):
            raise Unauthenticated("algorithm does not fit the key")
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[str(alg)],
                audience=issuer.cfg.audience,
                issuer=issuer.cfg.issuer,
                leeway=issuer.cfg.leeway_s,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as e:
            raise Unauthenticated(_reason(e)) from e
        return Principal(str(claims["sub"]), _roles(claims.get(issuer.cfg.roles_claim)), issuer.cfg.issuer, claims)


def _roles(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset()


def _reason(e: jwt.PyJWTError) -> str:
    if isinstance(e, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(e, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(e, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(e, jwt.InvalidSignatureError):
        return "bad signature"
    return "invalid token"


def dev_key(cfg: Config, create: bool = True) -> PrivateKey:
    """The development issuer's key (`dev_key_file`), created on first use in an existing folder."""
    try:
        return load_or_create_key(cfg.dev_key_file, "EdDSA", create)
    except KeyFileError as e:
        raise cfg.error(("dev_key_file",), str(e)) from None


def dev_token(cfg: Config, sub: str, roles: list[str], ttl_s: int = 3600) -> str:
    """A token of the local development issuer (`guard dev-token`)."""
    keys = GuardKeys(dev_key(cfg), DEV_ISSUER)
    now = int(time.time())
    claims: dict[str, Any] = {"iss": DEV_ISSUER, "aud": "guard", "sub": sub, "iat": now, "exp": now + ttl_s}
    if roles:
        claims["roles"] = roles
    return keys.sign("JWT", claims)
