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
from typing import TYPE_CHECKING, Any, Literal

import structlog
from aiohttp import web

from guard.config import X509IssuerCfg
from guard.domain import PLAIN, Caller, Presented, ToolCall
from guard.errors import Unauthenticated
from guard.filewatch import FileWatch
from guard.identity.auth import principal
from guard.identity.dpop import InvalidDpopProof, authorization
from guard.identity.mtls import peer_svid
from guard.identity.tokens import TASK_TYP, Principal
from guard.oauth.sessions import session_principal
from guard.policy import PolicySet
from guard.spiffe import spiffe_matches
from guard.stores.base import Store

if TYPE_CHECKING:
    from guard.pipeline import Deps

__all__ = [
    "Binding", "X509Issuers", "binding_of", "bound_to", "consume_proof", "presented", "refuse_unbound",
    "task_creator", "task_principal",
]

log = structlog.get_logger("guard.identity")

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


def presented(request: web.Request, deps: Deps, token: str | None, scheme: str) -> Presented:
    """What the request proves besides its token: its connection's SPIFFE ID, its DPoP proof."""
    spiffe_id = deps.tls.spiffe_id(request) if deps.tls is not None else None
    if scheme != "dpop":
        return PLAIN if spiffe_id is None else Presented("bearer", spiffe_id)
    proofs = request.headers.getall("DPoP", [])
    if len(proofs) != 1:
        return Presented("dpop", spiffe_id)  # refused by bound_to, or unbound token: refused there too
    proof = deps.dpop.verify(proofs[0], request.method, deps.dpop.htu(request), token)
    return Presented("dpop", spiffe_id, proof.jkt, proof.replay_key, proof.exp)


def refuse_unbound(caller: Caller, call: ToolCall, policies: PolicySet) -> None:
    """An agent that must bind its tokens does not call with a bearer task token."""
    if caller.binding == "bearer" and caller.via == "task_token":
        entry = policies.agent_entry(caller.agent)
        if entry is not None and entry.binding == "required":
            raise Unauthenticated(f"agent {caller.agent!r} must bind its task token (mTLS or DPoP): "
                                  "bearer task tokens are refused", task_id=caller.task_id, call_id=call.call_id)


async def consume_proof(caller: Caller, call: ToolCall, store: Store) -> None:
    """A DPoP proof is used once, across every instance sharing the store."""
    seen = call.presented
    assert seen.dpop_replay_key is not None
    if not await store.consume_dpop_jti(seen.dpop_replay_key, seen.dpop_exp):
        raise InvalidDpopProof("DPoP proof replayed: its jti was used before",
                               task_id=caller.task_id, call_id=call.call_id)


async def task_principal(request: web.Request, deps: Deps) -> Principal:
    """`principal(allow_task_token=True)` for the task endpoints, where a bound task token must
    come from its holder too (its connection's SPIFFE ID, a fresh DPoP proof)."""
    token, scheme = authorization(request)
    if token is None or deps.keys.typ_of(token) != TASK_TYP:
        if scheme == "dpop":
            raise InvalidDpopProof("only a DPoP-bound task token goes with the DPoP scheme")
        return await principal(request.headers, deps.identity, deps.keys, allow_task_token=True,
                               signed_in=lambda: session_principal(request))
    claims = deps.keys.verify(token, TASK_TYP, audience="guard", cache=True)
    seen = presented(request, deps, token, scheme)
    binding, _ = bound_to(claims, seen)
    if binding == "dpop":
        assert seen.dpop_replay_key is not None
        if not await deps.store.consume_dpop_jti(seen.dpop_replay_key, seen.dpop_exp):
            raise InvalidDpopProof("DPoP proof replayed: its jti was used before")
    return Principal(str(claims["sub"]), frozenset(), deps.keys.issuer, claims)


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


async def task_creator(request: web.Request, deps: Deps) -> tuple[Principal, dict[str, str]]:
    """Who creates a task (an agent: an IdP token, or an SVID admitted by an x509 issuer; never a
    person's browser session, which answers 401) and the `cnf`
    its task token gets: the connection's SPIFFE ID, the DPoP proof's key, both or none."""
    spiffe_id = deps.tls.spiffe_id(request) if deps.tls is not None else None
    cnf: dict[str, str] = {}
    if spiffe_id is not None:
        cnf["spiffe_id"] = spiffe_id
    if request.headers.get("Authorization") is None and spiffe_id is not None:
        svid = peer_svid(request)
        if not deps.x509.admit(spiffe_id, svid.chain_root if svid is not None else None):
            raise Unauthenticated(f"no bearer token, and no x509 issuer admits {spiffe_id}")
        who = Principal(spiffe_id, frozenset(), "x509", {})
    else:
        who = await principal(request.headers, deps.identity, deps.keys)  # an agent's token: never a browser session
    proofs = request.headers.getall("DPoP", [])
    if len(proofs) > 1:
        raise InvalidDpopProof("one DPoP proof per request")
    if proofs:
        proof = deps.dpop.verify(proofs[0], request.method, deps.dpop.htu(request), None)
        if not await deps.store.consume_dpop_jti(proof.replay_key, proof.exp):
            raise InvalidDpopProof("DPoP proof replayed: its jti was used before")
        cnf["jkt"] = proof.jkt
    entry = deps.policies.current.agent_entry(who.sub)
    if not cnf and entry is not None and entry.binding == "required":
        raise Unauthenticated(f"agent {who.sub!r} must bind its task (mTLS or DPoP): no bearer task token")
    return who, cnf


def binding_of(cnf: dict[str, str]) -> Binding:
    return "dpop" if "jkt" in cnf else "mtls" if "spiffe_id" in cnf else "bearer"
