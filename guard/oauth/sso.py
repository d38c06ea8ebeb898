"""guard as an OpenID Connect relying party of the organisation's IdP (`sso:`): authorization
code with PKCE and a nonce; the ID token is checked like any issuer token (signature by the IdP's
JWKS, allowed algorithms, `iss`, `aud` = guard's client_id, `exp`, and the nonce).

A person is keyed on the ID token's `iss` and `sub` (OpenID Connect Core §5.7: the only claims
that identify an end-user for good); the `email` claim is shown, and names them on pages, only
when `email_verified` is true. Tasks, approvals, consents and delegations record the key."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt

from guard.config import Config, SecretSource, SsoCfg
from guard.errors import ConfigError, Unauthenticated
from guard.log import get_logger
from guard.stores import Store

__all__ = ["Sso", "person_key", "read_secret"]

log = get_logger("guard.sso")
LOGIN_TTL_S = 600
_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}


def read_secret(source: SecretSource, environ: dict[str, str], where: str) -> str:
    if source.env is not None:
        value = environ.get(source.env)
        if not value:
            raise ConfigError(where, "sso.client_secret.env", f"{source.env} is not set")
        return value
    if source.file is not None:
        try:
            return Path(source.file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(where, "sso.client_secret.file", f"cannot read: {e.strerror}") from e
    raise ConfigError(where, "sso.client_secret", "name a source: env or file")


def person_key(claims: dict[str, Any]) -> tuple[str, str]:
    """(the key of the person an ID token names: `<iss>#<sub>`, their display name)."""
    key = f"{claims['iss']}#{claims['sub']}"
    email = claims.get("email")
    verified = claims.get("email_verified") is True
    return key, str(email) if verified and isinstance(email, str) and email else key


class Sso:
    def __init__(self, cfg: Config, store: Store, http: aiohttp.ClientSession) -> None:
        assert cfg.sso is not None
        self.sso: SsoCfg = cfg.sso
        self.store = store
        self.http = http
        self.secret = read_secret(cfg.sso.client_secret, cfg.environ, cfg.source) if cfg.sso.client_secret else None
        self.redirect_uri = f"{cfg.base_url.rstrip('/')}/login/callback"
        self._meta: dict[str, Any] | None = None
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_at = 0.0

    async def _get(self, url: str) -> dict[str, Any]:
        async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            r.raise_for_status()
            data: dict[str, Any] = await r.json(content_type=None)
            return data

    async def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            meta = await self._get(f"{self.sso.issuer.rstrip('/')}/.well-known/openid-configuration")
            if meta.get("issuer") != self.sso.issuer:
                raise Unauthenticated("the IdP's discovery document names another issuer")
            self._meta = meta
        return self._meta

    async def begin(self, next_path: str) -> tuple[str, str]:
        """(the IdP's authorization URL, the state that the browser's login cookie binds)."""
        meta = await self.metadata()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        await self.store.put_grant("login", state, {"nonce": nonce, "verifier": verifier, "next": next_path},
                                   LOGIN_TTL_S)
        query = {"response_type": "code", "client_id": self.sso.client_id, "redirect_uri": self.redirect_uri,
                 "scope": " ".join(self.sso.scopes), "state": state, "nonce": nonce,
                 "code_challenge": challenge, "code_challenge_method": "S256"}
        return f"{meta['authorization_endpoint']}?{urlencode(query)}", state

    async def finish(self, state: str, code: str) -> tuple[tuple[str, str], frozenset[str], str]:
        """((the person's key, their display name), their roles, where to go next) for the IdP's answer."""
        login = await self.store.take_grant("login", state)
        if login is None:
            raise Unauthenticated("this sign-in is unknown, used or expired: start again")
        meta = await self.metadata()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": login["verifier"], "client_id": self.sso.client_id}
        basic = base64.b64encode(f"{self.sso.client_id}:{self.secret}".encode()).decode() if self.secret else None
        headers = {"Authorization": f"Basic {basic}"} if basic else None
        async with self.http.post(meta["token_endpoint"], data=form, headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=10)) as r:
            body = await r.json(content_type=None)
        if r.status != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            log.warning("sso_token_failed", status=r.status)
            raise Unauthenticated("the IdP did not issue an ID token")
        claims = await self._verify(body["id_token"], str(login["nonce"]))
        person = person_key(claims)
        roles = claims.get(self.sso.roles_claim)
        role_set = frozenset(roles.split()) if isinstance(roles, str) else \
            frozenset(str(r) for r in roles) if isinstance(roles, list) else frozenset()
        return person, role_set, str(login["next"])

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        if kid not in self._jwks and time.monotonic() - self._jwks_at > 30:
            self._jwks_at = time.monotonic()
            jwks = await self._get(str((await self.metadata())["jwks_uri"]))
            self._jwks = {str(k.get("kid")): jwt.PyJWK(k) for k in jwks.get("keys", []) if k.get("kty") != "oct"}
        key = self._jwks.get(str(kid)) if kid is not None else (
            next(iter(self._jwks.values())) if len(self._jwks) == 1 else None)
        if key is None:
            raise Unauthenticated("unknown key id")
        return key

    async def _verify(self, token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated("malformed ID token") from e
        alg = str(header.get("alg"))
        if alg not in self.sso.algorithms or "crit" in header:
            raise Unauthenticated("ID token algorithm not allowed")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        if not alg.startswith(_FAMILY.get(str(key.key_type), ())):
            raise Unauthenticated("algorithm does not fit the key")
        try:
            claims: dict[str, Any] = jwt.decode(token, key=key.key, algorithms=[alg], audience=self.sso.client_id,
                                                issuer=self.sso.issuer, leeway=30,
                                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.PyJWTError as e:
            raise Unauthenticated("invalid ID token") from e
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise Unauthenticated("ID token nonce mismatch")
        return claims
