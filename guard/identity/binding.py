"""Tokens bound to their holder (`cnf`): a SPIFFE ID (mTLS) or a DPoP key thumbprint.

- A task created over mTLS carries `cnf: {"spiffe_id": …}`: every call with its token, or with
  its Txn-Tokens, must come over a connection whose verified client certificate has that ID.
- A task created with a DPoP proof carries `cnf: {"jkt": …}`: every call with its token says
  `Authorization: DPoP <token>` and brings a fresh proof signed by that key.
- An agent entry with `binding: required` gets no unbound (bearer) task token, and an unbound
  one it still holds is refused.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from guard.config import X509IssuerCfg
from guard.domain import Presented
from guard.errors import InvalidDpopProof, Unauthenticated
from guard.filewatch import FileWatch
from guard.log import get_logger
from guard.spiffe import spiffe_matches

__all__ = ["Binding", "X509Issuers", "binding_of", "bound_to"]

log = get_logger("guard.identity")

Binding = Literal["bearer", "mtls", "dpop"]
ANOTHER_WORKLOAD = "token bound to another workload"


def bound_to(claims: dict[str, Any], seen: Presented) -> tuple[Binding, str | None]:
    """How the token's `cnf` binds it, checked against what the request presented."""
    cnf = claims.get("cnf")
    if cnf is None:
        if seen.scheme == "dpop":
            raise InvalidDpopProof("the token is not DPoP-bound: send it as 'Authorization: Bearer <token>'")
        return "bearer", None
    if not isinstance(cnf, dict):
        raise Unauthenticated("malformed cnf claim")
    binding: Binding = "bearer"
    spiffe_id = cnf.get("spiffe_id")
    if spiffe_id is not None:
        if seen.spiffe_id != spiffe_id:
            raise Unauthenticated(ANOTHER_WORKLOAD)
        binding = "mtls"
    jkt = cnf.get("jkt")
    if jkt is not None:
        if seen.scheme != "dpop":
            raise InvalidDpopProof("a DPoP-bound token must come as 'Authorization: DPoP <token>' with a DPoP proof")
        if seen.dpop_jkt is None:
            raise InvalidDpopProof("missing DPoP proof")
        if seen.dpop_jkt != jkt:
            raise InvalidDpopProof("DPoP proof signed with another key than the token is bound to")
        binding = "dpop"
    return binding, spiffe_id if isinstance(spiffe_id, str) else None


class X509Issuers:
    """Issuer entries `{x509: {trust_bundle_file, spiffe_id}}`: which SVIDs may create tasks
    without a bearer token. The bundle is re-read when it changes."""

    def __init__(self, cfgs: list[X509IssuerCfg]) -> None:
        self.entries = [(c.spiffe_id, c.trust_bundle_file) for c in cfgs]
        self._roots: dict[str, frozenset[bytes]] = {}
        self._watches = {path: FileWatch([path]) for _, path in self.entries}

    def _bundle(self, path: str) -> frozenset[bytes]:
        if path not in self._roots or self._watches[path].changed():
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            try:
                with open(path, "rb") as f:
                    certs = x509.load_pem_x509_certificates(f.read())
                self._roots[path] = frozenset(hashlib.sha256(c.public_bytes(Encoding.DER)).digest() for c in certs)
            except (OSError, ValueError) as e:
                log.error("trust_bundle_unreadable", file=path, reason=getattr(e, "strerror", None) or str(e),
                          detail="the bundle last read stays in force; none: no SVID of it is admitted")
                self._roots.setdefault(path, frozenset())
        return self._roots[path]

    def admit(self, spiffe_id: str, chain_root: bytes | None) -> bool:
        return any(
            spiffe_matches(pattern, spiffe_id) and chain_root is not None and chain_root in self._bundle(path)
            for pattern, path in self.entries
        )


def binding_of(cnf: dict[str, str]) -> Binding:
    return "dpop" if "jkt" in cnf else "mtls" if "spiffe_id" in cnf else "bearer"
