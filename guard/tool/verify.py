"""Checking guard's per-call credential: JWKS signature, claims, call digest, single use."""

from __future__ import annotations

import asyncio
import json
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from guard.canonical import call_digest

__all__ = ["Credential", "CredentialRejected", "GuardUnavailable", "Verifier", "current_credential"]

CRED_TYP = "cred+jwt"
ALGORITHMS = ["EdDSA", "ES256"]  # what guard signs with (signing.algorithm)


class CredentialRejected(Exception):
    """The request's credential is missing, forged, expired, for another tool or request, or used."""


class GuardUnavailable(Exception):
    """The guard could not be asked (JWKS or introspection): the request is refused, fail closed."""


@dataclass(frozen=True, slots=True)
class Credential:
    """What guard vouches for in this request."""

    task: str  # the task id (`txn`)
    agent: str  # the agent the call belongs to (`sub`)
    tool: str
    action: str
    scope: str  # `<tool>.<action>`
    chain: tuple[str, ...]  # the tools that led to this call, outermost first (empty for a direct call)
    txn_token: str | None  # forward it for chained calls (the client wrappers do)
    claims: dict[str, Any] = field(repr=False, compare=False)


#: The credential of the request being handled (set by the middlewares around the handler).
current_credential: ContextVar[Credential | None] = ContextVar("guard_credential", default=None)


class Verifier:
    """Verifies the credentials guard mints for one tool.

    `introspect=True` (the default) asks the guard at `/v1/credentials/introspect` too, which
    consumes the credential: a replay is refused. Turn it off only for a tool whose every action is
    safe to repeat; the signature, audience, expiry and call digest are still checked locally.
    """

    def __init__(self, guard_url: str, tool: str, *, issuer: str = "urn:guard", introspect: bool = True,
                 refetch_min_s: float = 30.0, max_age_s: float = 3600.0, leeway_s: float = 5.0,
                 timeout_s: float = 10.0) -> None:
        self.guard_url = guard_url.rstrip("/")
        self.tool = tool
        self.audience = f"tool:{tool}"
        self.issuer = issuer
        self.introspect = introspect
        self.refetch_min_s, self.max_age_s, self.leeway_s = refetch_min_s, max_age_s, leeway_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _fetch_jwks(self) -> None:
        try:
            async with self._http().get(self.guard_url + "/.well-known/jwks.json") as resp:
                if resp.status != 200:
                    raise GuardUnavailable(f"JWKS answered {resp.status}")
                data = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise GuardUnavailable(f"cannot read guard's JWKS: {e}") from e
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in data.get("keys", []) if isinstance(data, dict) else []:
            try:
                keys[str(jwk["kid"])] = jwt.PyJWK.from_dict(jwk)
            except (KeyError, jwt.PyJWTError):
                continue  # a key type this verifier does not know cannot have signed our credential
        self._keys, self._fetched_at = keys, time.monotonic()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key `kid` from guard's JWKS: cached; an unknown kid refetches it, at most every
        `refetch_min_s` (concurrent requests wait for the one fetch in flight)."""
        now = time.monotonic()
        stale = now - self._fetched_at > self.max_age_s
        if kid not in self._keys or stale:
            async with self._lock:
                now = time.monotonic()
                due = not self._fetched_at or now - self._fetched_at >= self.refetch_min_s
                if (kid not in self._keys and due) or now - self._fetched_at > self.max_age_s:
                    await self._fetch_jwks()
        found = self._keys.get(kid)
        if found is None:
            raise CredentialRejected("credential signed by an unknown key")
        return found

    async def verify(self, authorization: str | None, method: str, path_qs: str, body: bytes,
                     txn_token: str | None = None) -> Credential:
        """The credential of a request, or CredentialRejected / GuardUnavailable."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise CredentialRejected("missing bearer credential")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise CredentialRejected("malformed credential") from e
        if header.get("typ") != CRED_TYP or header.get("alg") not in ALGORITHMS:
            raise CredentialRejected("not a guard credential")
        key = await self.key(str(header.get("kid")))
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, audience=self.audience, issuer=self.issuer,
                leeway=self.leeway_s, options={"require": ["exp", "iat", "jti", "txn", "sub", "scope"]},
            )
        except jwt.PyJWTError as e:
            raise CredentialRejected(f"credential refused: {e}") from e
        if claims.get("call_digest") != call_digest(method, path_qs, body):
            raise CredentialRejected("credential was minted for a different request")
        if self.introspect:
            await self._introspect(token, str(claims["jti"]))
        scope = str(claims["scope"])
        tool, _, action = scope.partition(".")
        chain = claims.get("chain") or []
        return Credential(task=str(claims["txn"]), agent=str(claims["sub"]), tool=tool, action=action, scope=scope,
                          chain=tuple(str(c) for c in chain), txn_token=txn_token, claims=claims)

    async def _introspect(self, token: str, jti: str) -> None:
        try:
            async with self._http().post(self.guard_url + "/v1/credentials/introspect",
                                         data=json.dumps({"token": token}),
                                         headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise GuardUnavailable(f"introspection answered {resp.status}")
                info = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise GuardUnavailable(f"cannot introspect the credential: {e}") from e
        if not isinstance(info, dict) or info.get("active") is not True or info.get("jti") != jti:
            raise CredentialRejected("credential is not active (expired, unknown or already used)")


def problem(status: int, title: str, detail: str) -> tuple[dict[str, str], bytes]:
    """Headers and body of an RFC 9457 problem answer (401 with its challenge)."""
    headers = {"Content-Type": "application/problem+json"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    return headers, body


def refusal(e: Exception) -> tuple[int, dict[str, str], bytes]:
    """The answer for a refused request (the detail names the reason, never the token)."""
    if isinstance(e, GuardUnavailable):
        return 503, *problem(503, "guard unavailable", str(e))
    return 401, *problem(401, "invalid credential", str(e))
