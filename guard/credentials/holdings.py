"""Per-task holdings (leases, tokens) kept with the task in the store, sealed.

A holding may carry the secret itself (a lease's password, an access token): another instance
must be able to reuse it for the same task and to revoke it when it ends the task. So it is
sealed with AES-GCM under a key derived (HKDF) from the guard's signing key, which every instance
of one deployment shares; the store never holds it in the clear. A sealed holding names the `kid`
of the key it was sealed under, so holdings sealed before a key rotation stay readable while the
old key is still in the ring (as long as the tokens it signed, which outlive no task).
"""

from __future__ import annotations

import base64
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from guard.credentials.base import Holding
from guard.errors import CredentialUnavailable
from guard.identity.tokens import GuardKeys, PrivateKey
from guard.stores.base import Store

__all__ = ["Holdings"]


def _seal_key(key: PrivateKey) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        material = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    else:
        material = key.private_numbers().private_value.to_bytes(32, "big")
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"guard credential holdings v1").derive(material)


class Holdings:
    def __init__(self, store: Store, keys: GuardKeys) -> None:
        self.store = store
        self.keys = keys
        self._aeads: dict[str, AESGCM] = {}  # by kid, derived once

    def _aead(self, kid: str) -> AESGCM:
        pair = next((p for p in self.keys.pairs if p.kid == kid), None)
        if pair is None:  # never sealed here, or its key has left the ring
            self._aeads.pop(kid, None)
            raise ValueError("no key in the ring has this kid")
        aead = self._aeads.get(kid)
        if aead is None:
            aead = self._aeads[kid] = AESGCM(_seal_key(pair.key))
        return aead

    def seal(self, h: Holding) -> str:
        nonce = os.urandom(12)
        plain = json.dumps({"task_id": h.task_id, "agent": h.agent, "tool": h.tool, "kind": h.kind,
                            "expires_at": h.expires_at, "data": h.data}, separators=(",", ":")).encode()
        kid = self.keys.current.kid
        sealed = self._aead(kid).encrypt(nonce, plain, h.task_id.encode())
        return f"{kid}.{base64.b64encode(nonce + sealed).decode()}"

    def unseal(self, task_id: str, sealed: str) -> Holding:
        kid, _, b64 = sealed.partition(".")
        raw = base64.b64decode(b64)
        d = json.loads(self._aead(kid).decrypt(raw[:12], raw[12:], task_id.encode()))
        return Holding(d["task_id"], d["agent"], d["tool"], d["kind"], float(d["expires_at"]), d["data"])

    def _readable(self, task_id: str, sealed: str) -> Holding:
        try:
            return self.unseal(task_id, sealed)
        except (InvalidTag, ValueError, KeyError):
            raise CredentialUnavailable("a credential held for this task cannot be read here "
                                        "(sealed with another signing key?)", task_id=task_id) from None

    async def held(self, task_id: str, slot: str) -> tuple[Holding, str] | None:
        sealed = await self.store.held_credential(task_id, slot)
        return None if sealed is None else (self._readable(task_id, sealed), sealed)

    async def hold(self, h: Holding, slot: str, previous: str | None) -> tuple[Holding, bool]:
        """Keep `h` in `slot` unless another instance got there first: (the holding in force, ours)."""
        mine = self.seal(h)
        held = await self.store.hold_credential(h.task_id, slot, mine, previous)
        return (h, True) if held == mine else (self._readable(h.task_id, held), False)

