"""DPoP proofs (RFC 9449) made by hand with `cryptography` and PyJWT, as an agent would:

    key = DpopKey()
    headers = {"Authorization": f"DPoP {token}", "DPoP": key.proof("POST", url, token)}
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["DpopKey"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DpopKey:
    """An ES256 key pair; `proof()` signs a proof with its public JWK in the header."""

    def __init__(self, pem: bytes | None = None) -> None:
        if pem is None:
            self.key = ec.generate_private_key(ec.SECP256R1())
        else:
            loaded = serialization.load_pem_private_key(pem, None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self.key = loaded
        nums = self.key.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "x": _b64(nums.x.to_bytes(32, "big")),
                    "y": _b64(nums.y.to_bytes(32, "big"))}

    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def jkt(self) -> str:
        canon = json.dumps({k: self.jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
        return _b64(hashlib.sha256(canon.encode()).digest())

    def proof(self, method: str, url: str, token: str | None = None, *, jti: str | None = None,
              iat: float | None = None, **extra: Any) -> str:
        claims: dict[str, Any] = {"htm": method, "htu": url.split("?", 1)[0], "iat": int(time.time() if iat is None
                                                                                      else iat),
                                  "jti": jti or secrets.token_urlsafe(16), **extra}
        if token is not None:
            claims["ath"] = _b64(hashlib.sha256(token.encode()).digest())
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})
