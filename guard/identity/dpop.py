"""DPoP (RFC 9449): proofs of possession of a key, and tokens bound to that key (`cnf.jkt`).

A proof is a JWT of type `dpop+jwt` signed with the private key whose public half travels in
its header (`jwk`). It names the request (`htm`, `htu`), its time (`iat`, accepted within
`MAX_AGE_S` either way), a unique `jti` (replay-checked in the store, so across instances) and,
when it comes with a token, the token's hash (`ath`).

Server nonces (`DPoP-Nonce`) are not used: freshness rests on `iat` within 60 s and the
store-wide `jti` check, which together refuse every replay without the extra round trip a
nonce costs each client.

The parsed public key is cached per header (so per key): one signature check per call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt

from guard.canonical import b64url
from guard.errors import DPOP_ALGS, InvalidDpopProof

__all__ = ["MAX_AGE_S", "DpopProof", "DpopVerifier", "jwk_thumbprint"]

MAX_AGE_S = 60
MAX_PROOF_BYTES = 4096
ALGS = DPOP_ALGS
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
_NO_CLAIM_CHECKS = {"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False,
                    "verify_iss": False}


@dataclass(frozen=True, slots=True)
class DpopProof:
    jkt: str  # RFC 7638 thumbprint of the proof's key
    replay_key: str  # digest of (jkt, jti): what the store remembers
    exp: float  # until when the jti must be remembered


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK."""
    members = _MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise InvalidDpopProof("DPoP proof: jwk is not an EC, OKP or RSA public key")
    canon = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


def _b64json(segment: str) -> Any:
    import base64

    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class DpopVerifier:
    """Checks DPoP proofs; `public_url` (when set) is the origin every `htu` must name."""

    CACHE_MAX = 10_000

    def __init__(self, public_url: str | None) -> None:
        self.origin = public_url.rstrip("/") if public_url else None
        self._keys: dict[str, tuple[str, Any, str]] = {}  # header segment → (jkt, key, alg)

    def htu(self, scheme: str, host: str, raw_path: str) -> str:
        """The URL the proof must name: scheme, host and path of the request, no query."""
        origin = self.origin or f"{scheme}://{host}"
        return origin + raw_path.split("?", 1)[0]

    def _key(self, segment: str) -> tuple[str, Any, str]:
        hit = self._keys.get(segment)
        if hit is not None:
            return hit
        try:
            header = _b64json(segment)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidDpopProof("DPoP proof: malformed header") from e
        if not isinstance(header, dict) or header.get("typ") != "dpop+jwt":
            raise InvalidDpopProof("DPoP proof: typ must be dpop+jwt")
        alg, jwk = header.get("alg"), header.get("jwk")
        if alg not in ALGS:
            raise InvalidDpopProof(f"DPoP proof: alg must be one of {', '.join(ALGS)}")
        if not isinstance(jwk, dict) or _PRIVATE & jwk.keys():
            raise InvalidDpopProof("DPoP proof: jwk must be a public key")
        jkt = jwk_thumbprint(jwk)
        try:
            key = jwt.PyJWK(jwk, str(alg)).key
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise InvalidDpopProof("DPoP proof: unusable jwk") from e
        if len(self._keys) >= self.CACHE_MAX:
            self._keys.clear()
        entry = self._keys[segment] = (jkt, key, str(alg))
        return entry

    def verify(self, proof: str, method: str, htu: str, token: str | None, now: float | None = None) -> DpopProof:
        """The verified proof (replay not yet checked: the caller asks the store), or InvalidDpopProof."""
        if len(proof) > MAX_PROOF_BYTES or proof.count(".") != 2:
            raise InvalidDpopProof("DPoP proof: malformed")
        jkt, key, alg = self._key(proof.split(".", 1)[0])
        try:
            claims = jwt.decode(proof, key=key, algorithms=[alg], options=_NO_CLAIM_CHECKS)  # type: ignore[arg-type]
        except jwt.InvalidSignatureError as e:
            raise InvalidDpopProof("DPoP proof: bad signature") from e
        except jwt.PyJWTError as e:
            raise InvalidDpopProof("DPoP proof: malformed") from e
        now = time.time() if now is None else now
        if claims.get("htm") != method:
            raise InvalidDpopProof("DPoP proof: htm is not this request's method")
        if not isinstance(claims.get("htu"), str) or not _same_url(claims["htu"], htu):
            raise InvalidDpopProof("DPoP proof: htu is not this request's URL")
        iat = claims.get("iat")
        if not isinstance(iat, int | float) or abs(now - iat) > MAX_AGE_S:
            raise InvalidDpopProof(f"DPoP proof: iat is not within {MAX_AGE_S} s of now")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 256:
            raise InvalidDpopProof("DPoP proof: jti missing")
        if token is not None:
            ath = claims.get("ath")
            expected = b64url(hashlib.sha256(token.encode()).digest())
            if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), expected.encode()):
                raise InvalidDpopProof("DPoP proof: ath does not match the token")
        replay = hashlib.sha256(f"{jkt}\x00{jti}".encode()).hexdigest()
        return DpopProof(jkt, replay, float(iat) + MAX_AGE_S + 5)


def _same_url(a: str, b: str) -> bool:
    """RFC 9449 §4.3: compared without query and fragment; scheme and host case-insensitively."""
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme.lower(), pa.netloc.lower(), pa.path or "/") == (pb.scheme.lower(), pb.netloc.lower(),
                                                                      pb.path or "/")
