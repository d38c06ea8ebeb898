"""The pieces of workload identity that need no process: SVID parsing and DPoP proof checks."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from guard.errors import InvalidDpopProof
from guard.identity.dpop import DpopVerifier, jwk_thumbprint
from guard.identity.mtls import parse_svid
from guard.spiffe import valid_spiffe_id
from tests.support.dpop import DpopKey
from tests.support.pki import self_signed_svid

URL = "https://guard.acme.example/tools/echo/items/1"


def der_of(path: Path) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(Encoding.DER)


def test_an_svid_names_its_spiffe_id_and_a_ca_certificate_is_not_one(tmp_path: Path) -> None:
    leaf, _ = self_signed_svid("spiffe://acme/agent/a", tmp_path, "leaf")
    ca, _ = self_signed_svid("spiffe://acme/agent/a", tmp_path, "ca", ca=True)
    svid = parse_svid(der_of(leaf))
    assert svid.spiffe_id == "spiffe://acme/agent/a" and svid.error is None
    assert svid.check(time.time()) == "spiffe://acme/agent/a"
    refused = parse_svid(der_of(ca))
    assert refused.spiffe_id is None and "CA certificate" in str(refused.error)
    assert parse_svid(b"garbage").error == "client certificate unreadable"


@pytest.mark.parametrize("value,ok", [
    ("spiffe://acme/agent/a", True), ("spiffe://acme", True), ("spiffe://ACME/agent", False),
    ("spiffe://acme/agent/../admin", False), ("spiffe://acme//a", False), ("spiffe://acme/a?x=1", False),
    ("https://acme/agent", False), ("spiffe://acme/agent/a#f", False),
])
def test_spiffe_ids_are_checked_for_shape(value: str, ok: bool) -> None:
    assert valid_spiffe_id(value) is ok


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_header(proof: str, **header: object) -> str:
    head, payload, sig = proof.split(".")
    h = json.loads(base64.urlsafe_b64decode(head + "=="))
    h.update(header)
    return f"{_b64(json.dumps(h).encode())}.{payload}.{sig}"


def test_dpop_proofs_that_must_not_pass() -> None:
    v = DpopVerifier(None)
    key = DpopKey()
    token = "a.b.c"
    good = key.proof("GET", URL, token)
    assert v.verify(good, "GET", URL, token).jkt == key.jkt == jwk_thumbprint(key.jwk)
    claims = {"htm": "GET", "htu": URL, "iat": int(time.time()), "jti": "x",
              "ath": _b64(hashlib.sha256(token.encode()).digest())}
    none_alg = f"{_b64(json.dumps({'typ': 'dpop+jwt', 'alg': 'none', 'jwk': key.jwk}).encode())}." \
               f"{_b64(json.dumps(claims).encode())}."
    hs = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": key.jwk})
    private = key.jwk | {"d": "AAAA"}
    bad = {
        "alg none": none_alg,
        "HMAC": hs,
        "wrong typ": _with_header(key.proof("GET", URL, token), typ="JWT"),
        "private jwk": _with_header(key.proof("GET", URL, token), jwk=private),
        "another key in the header": _with_header(key.proof("GET", URL, token), jwk=DpopKey().jwk),
        "no jti": jwt.encode({k: v for k, v in claims.items() if k != "jti"}, key.key, algorithm="ES256",
                             headers={"typ": "dpop+jwt", "jwk": key.jwk}),
        "future iat": key.proof("GET", URL, token, iat=time.time() + 120),
        "too big": good + "A" * 5000,
    }
    for name, proof in bad.items():
        with pytest.raises(InvalidDpopProof):
            v.verify(proof, "GET", URL, token)
            pytest.fail(name)


def test_an_eddsa_proof_and_the_public_url_as_htu() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization as s

    x = _b64(key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw))
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x}
    proof = jwt.encode({"htm": "POST", "htu": "https://Guard.Acme.Example/v1/tasks", "iat": int(time.time()),
                        "jti": "j1"}, key, algorithm="EdDSA", headers={"typ": "dpop+jwt", "jwk": jwk})
    assert DpopVerifier("https://guard.acme.example").verify(
        proof, "POST", "https://guard.acme.example/v1/tasks", None).jkt == jwk_thumbprint(jwk)


def test_a_txn_token_is_bound_to_the_checked_tool_of_a_bound_task_else_to_the_task_workload() -> None:
    from guard.domain import Caller
    from guard.policy.model import CredentialSpec, ToolSpec
    from guard.stages.mint import txn_holder

    checked = ToolSpec("notes", "http", "https://notes", CredentialSpec(), spiffe_id="spiffe://acme/tool/notes")
    plain = ToolSpec("echo", "http", "http://echo", CredentialSpec())
    mtls = Caller("spiffe://acme/agent/a", "task_1", (), None, "task_token", "mtls", "spiffe://acme/agent/a")
    dpop = Caller("dev-agent", "task_2", (), None, "task_token", "dpop", None)
    bearer = Caller("dev-agent", "task_3", (), None, "task_token")
    assert txn_holder(mtls, checked) == "spiffe://acme/tool/notes"
    assert txn_holder(mtls, plain) == "spiffe://acme/agent/a"
    assert txn_holder(dpop, checked) == "spiffe://acme/tool/notes"
    assert txn_holder(dpop, plain) is None
    assert txn_holder(bearer, checked) is None  # an unbound task's chains keep working as before
