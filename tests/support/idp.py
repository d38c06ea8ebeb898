"""A test identity provider: an EC key, its JWKS file, and tokens signed with it (PyJWT)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://idp.test"


class Idp:
    def __init__(self, folder: Path, kid: str = "k1") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=kid, alg="ES256", use="sig")
        self.jwks = {"keys": [jwk]}
        self.jwks_path = folder / "idp.jwks.json"
        self.jwks_path.write_text(json.dumps(self.jwks))

    def issuer_config(self) -> dict[str, Any]:
        return {"issuer": ISSUER, "audience": "guard", "jwks_file": str(self.jwks_path),
                "algorithms": ["ES256"], "roles_claim": "roles"}

    def token(self, sub: str, *roles: str, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"iss": ISSUER, "aud": "guard", "sub": sub, "iat": now, "exp": now + 600}
        if roles:
            body["roles"] = list(roles)
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid, **(headers or {})})
