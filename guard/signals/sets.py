"""A Security Event Token (RFC 8417) from a configured transmitter, checked before anything acts on it.

A SET is accepted only when all of these hold, else `SetError` (RFC 8935's error JSON, 400):
- its header's `typ` is `secevent+jwt` and its `alg` one of the transmitter's asymmetric algorithms
  (never `none`, never HS*), and it is signed by a key of the transmitter's JWKS (a file, or a URL
  cached and refetched on an unknown `kid`, at most once per `jwks_refetch_min_s`);
- `iss` is the transmitter, `aud` the audience configured for it;
- `iat` is fresh: not more than `max_iat_skew_s` (300 s) ahead, not older than `max_iat_age_s` (1 day);
- `jti` is new (checked in the store by the caller, so it holds across instances: `replay_key`);
- `events` is an object of event type URI -> object.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt

from guard.config import IssuerCfg, SignalsCfg, TransmitterCfg
from guard.errors import Unauthenticated
from guard.identity.issuers import _Issuer as KeySet

__all__ = ["SET_TYP", "ReceivedSet", "SetError", "SetVerifier"]

SET_TYP = "secevent+jwt"
_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}


class SetError(Exception):
    """A SET refused: `err` is one of RFC 8935's error codes (invalid_request, invalid_key,
    invalid_issuer, invalid_audience, authentication_failed, access_denied)."""

    def __init__(self, err: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.err, self.description, self.status = err, description, status
        self.transmitter: str | None = None  # the configured transmitter the SET claims to come from

    def body(self) -> dict[str, str]:
        return {"err": self.err, "description": self.description}


@dataclass(frozen=True, slots=True)
class ReceivedSet:
    transmitter: str  # the issuer
    jti: str
    iat: float
    events: dict[str, dict[str, Any]]  # event type URI -> its payload
    sub_id: Any  # the SET's top-level subject (SSF 1.0), or None (then each event names its `subject`)
    txn: str | None = None

    @property
    def replay_key(self) -> str:
        """The store key of this SET's jti, apart for each transmitter."""
        return hashlib.sha256(f"{self.transmitter}\0{self.jti}".encode()).hexdigest()


class SetVerifier:
    """Checks SETs against the configured transmitters (their keys cached here)."""

    def __init__(self, cfg: SignalsCfg, base_dir: Path) -> None:
        self.cfg = cfg
        self.transmitters: dict[str, tuple[TransmitterCfg, KeySet]] = {}
        for t in cfg.transmitters:
            keys = IssuerCfg(issuer=t.issuer, audience=t.audience, jwks_file=t.jwks_file, jwks_url=t.jwks_uri,
                             algorithms=t.algorithms, jwks_refetch_min_s=t.jwks_refetch_min_s,
                             jwks_max_age_s=3600.0)
            self.transmitters[t.issuer] = (t, KeySet(keys, base_dir))

    async def verify(self, token: str, http: aiohttp.ClientSession | None, expect: str | None = None,
                     now: float | None = None) -> ReceivedSet:
        """The SET, checked (all but its jti, which the caller consumes in the store). `expect`:
        the transmitter it must come from (poll delivery asks one transmitter)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise SetError("invalid_request", "not a signed JWT") from e
        if header.get("typ") != SET_TYP:
            raise SetError("invalid_request", f"a SET's typ must be {SET_TYP}")
        if "crit" in header:
            raise SetError("invalid_request", "unsupported critical header")
        iss = unverified.get("iss")
        entry = self.transmitters.get(iss) if isinstance(iss, str) else None
        if entry is None or (expect is not None and iss != expect):
            raise SetError("invalid_issuer", "the SET's iss is not a configured transmitter")
        try:
            return await self._verify(token, header, entry, http, time.time() if now is None else now)
        except SetError as e:
            e.transmitter = entry[0].issuer
            raise

    async def _verify(self, token: str, header: dict[str, Any], entry: tuple[TransmitterCfg, KeySet],
                      http: aiohttp.ClientSession | None, now: float) -> ReceivedSet:
        cfg, keys = entry
        alg = header.get("alg")
        if alg not in cfg.algorithms:  # none and HS* are never in the list (config refuses them)
            raise SetError("invalid_key", f"algorithm {alg!r} is not accepted from this transmitter")
        kid = header.get("kid")
        try:
            key = await keys.key_for(kid if isinstance(kid, str) else None, http)
        except Unauthenticated as e:
            raise SetError("invalid_key", "the SET's kid is not in the transmitter's JWKS") from e
        if not str(alg).startswith(_FAMILY.get(str(key.key_type), ())):
            raise SetError("invalid_key", "the algorithm does not fit the key")
        try:
            claims = jwt.decode(token, key=key.key, algorithms=[str(alg)], audience=cfg.audience, issuer=cfg.issuer,
                                options={"require": ["iss", "aud", "iat", "jti"], "verify_iat": False})
        except jwt.InvalidAudienceError as e:
            raise SetError("invalid_audience", "the SET's aud is not this receiver") from e
        except jwt.InvalidSignatureError as e:
            raise SetError("invalid_key", "bad signature") from e
        except jwt.PyJWTError as e:
            raise SetError("invalid_request", f"invalid SET: {e}") from e
        return self._parse(claims, now)

    def _parse(self, claims: dict[str, Any], now: float) -> ReceivedSet:
        iat, jti, events = claims.get("iat"), claims.get("jti"), claims.get("events")
        if not isinstance(iat, int | float) or isinstance(iat, bool):
            raise SetError("invalid_request", "iat must be a number")
        if iat > now + self.cfg.max_iat_skew_s or iat < now - self.cfg.max_iat_age_s:
            raise SetError("invalid_request", "stale SET: iat is too far in the future or the past")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise SetError("invalid_request", "jti must be a string of 1 to 256 characters")
        if not isinstance(events, dict) or not events or len(events) > 16 or \
                not all(isinstance(k, str) and isinstance(v, dict) for k, v in events.items()):
            raise SetError("invalid_request", "events must be an object of event type URI -> object")
        txn = claims.get("txn")
        return ReceivedSet(str(claims["iss"]), jti, float(iat), events, claims.get("sub_id"),
                           txn if isinstance(txn, str) else None)
