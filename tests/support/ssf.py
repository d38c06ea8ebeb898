"""A Shared Signals transmitter and receiver on loopback: real HTTP servers (tests.support.upstream)
with keys of their own, signing SETs (RFC 8417) through PyJWT.

    t = SsfTransmitter().start()      # serves /jwks and RFC 8936 polling at /poll (acks honoured)
    token = t.sign({CAEP_SESSION_REVOKED: {}}, sub_id=uri("spiffe://acme/agent/x"), aud="https://guard")
    t.enqueue(token)                  # offered to the next poll until acknowledged
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.support.upstream import Seen, Upstream

__all__ = ["CAEP", "RISC", "SSF", "SsfTransmitter", "email", "iss_sub", "uri"]

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"


def uri(value: str) -> dict[str, str]:
    return {"format": "uri", "uri": value}


def email(value: str) -> dict[str, str]:
    return {"format": "email", "email": value}


def iss_sub(iss: str, sub: str) -> dict[str, str]:
    return {"format": "iss_sub", "iss": iss, "sub": sub}


class SsfTransmitter:
    """An IdP's Shared Signals transmitter: its JWKS at /jwks, polling at /poll."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex[:12]
        self.server = Upstream(handler=self._handle)
        self.pending: dict[str, str] = {}  # jti -> SET, offered until acknowledged
        self.acked: list[str] = []
        self.errors: dict[str, Any] = {}  # jti -> {err, description} reported by the receiver
        self.polls = 0
        self.jwks_fetches = 0
        self.status = 200
        self.stream_status = "enabled"
        self.verify_requests: list[dict[str, Any]] = []
        self.aud = "https://guard.example"  # the audience of the verification events it sends
        self._lock = threading.Lock()

    def start(self) -> SsfTransmitter:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def issuer(self) -> str:
        return self.server.url

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def sign(self, events: dict[str, dict[str, Any]], sub_id: dict[str, Any] | None, aud: str,
             iat: float | None = None, jti: str | None = None, key: Any = None, alg: str = "ES256",
             typ: str = "secevent+jwt", iss: str | None = None) -> str:
        issued = int(time.time() if iat is None else iat)
        claims: dict[str, Any] = {"iss": iss or self.issuer, "aud": aud, "iat": issued,
                                  "jti": jti or uuid.uuid4().hex, "events": events}
        if sub_id is not None:
            claims["sub_id"] = sub_id
        signer = self.key if key is None else key
        return jwt.encode(claims, signer, algorithm=alg, headers={"kid": self.kid, "typ": typ})

    def enqueue(self, token: str) -> str:
        jti = str(jwt.decode(token, options={"verify_signature": False})["jti"])
        with self._lock:
            self.pending[jti] = token
        return jti

    def _handle(self, request: web.Request, seen: Seen) -> web.StreamResponse:
        if request.path == "/jwks":
            self.jwks_fetches += 1
            return web.json_response(self.jwks())
        if request.path == "/.well-known/ssf-configuration":
            return web.json_response({"spec_version": "1_0", "issuer": self.issuer, "jwks_uri": f"{self.url}/jwks",
                                      "delivery_methods_supported": ["urn:ietf:rfc:8936"],
                                      "status_endpoint": f"{self.url}/status",
                                      "verification_endpoint": f"{self.url}/verify"})
        if request.path == "/status":
            return web.json_response({"status": self.stream_status})
        if request.path == "/verify" and request.method == "POST":
            body = json.loads(seen.body or b"{}")
            self.verify_requests.append(body)
            self.enqueue(self.sign({SSF + "verification": {"state": body.get("state")}}, None, self.aud))
            return web.Response(status=204)
        if request.path == "/poll" and request.method == "POST":
            self.polls += 1
            if self.status != 200:
                return web.json_response({"err": "unavailable"}, status=self.status)
            body = json.loads(seen.body or b"{}")
            with self._lock:
                for jti in body.get("ack", []):
                    self.acked.append(jti)
                    self.pending.pop(jti, None)
                for jti, err in (body.get("setErrs") or {}).items():
                    self.errors[jti] = err
                    self.pending.pop(jti, None)
                sets = dict(list(self.pending.items())[: int(body.get("maxEvents", 100))])
            return web.json_response({"sets": sets, "moreAvailable": len(self.pending) > len(sets)})
        return web.json_response({"err": "not found"}, status=404)
