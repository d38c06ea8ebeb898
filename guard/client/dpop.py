"""DPoP proofs (RFC 9449) for the client: an ES256 key whose proofs bind the agent's task token."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from guard.canonical import b64url

__all__ = ["DpopKey"]


class DpopKey:
    """An ES256 key pair. `DpopKey()` makes a new one; `DpopKey.from_pem(path)` loads the agent's."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": b64url(nums.x.to_bytes(32, "big")),
                    "y": b64url(nums.y.to_bytes(32, "big"))}

    @classmethod
    def from_pem(cls, path: str | Path, password: bytes | None = None) -> DpopKey:
        loaded = serialization.load_pem_private_key(Path(path).read_bytes(), password)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: a DPoP key must be an EC P-256 private key")
        return cls(loaded)

    @property
    def jkt(self) -> str:
        """The key's RFC 7638 thumbprint (what a bound token's `cnf.jkt` holds)."""
        canon = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
        return b64url(hashlib.sha256(canon.encode()).digest())

    def proof(self, method: str, url: str, token: str | None = None) -> str:
        """A fresh proof for one request (`ath` binds it to `token` when one is sent)."""
        claims: dict[str, Any] = {"htm": method.upper(), "htu": url.split("?", 1)[0].split("#", 1)[0],
                                  "iat": int(time.time()), "jti": secrets.token_urlsafe(16)}
        if token is not None:
            claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})
