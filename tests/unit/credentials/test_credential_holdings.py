"""Holdings sealed before a signing-key rotation stay readable while the old key is in the ring."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from guard.credentials.base import Holding
from guard.credentials.holdings import Holdings
from guard.errors import CredentialUnavailable
from guard.identity.tokens import GuardKeys
from guard.stores.memory import MemoryStore

PASSWORD = "pw-9f3c2e71d8a4"  # long enough that a sealed blob cannot hold it by chance (two letters could)


async def test_a_holding_survives_a_key_rotation_until_its_key_leaves_the_ring() -> None:
    old, new = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    keys = GuardKeys(old, "urn:guard")
    holdings = Holdings(MemoryStore(), keys)
    lease = Holding("task_1", "agent", "db", "lease", 2e9, {"lease_id": "database/creds/ro/abc", "password": PASSWORD})
    held, ours = await holdings.hold(lease, "db", None)
    assert ours and held == lease

    keys.use(new, [old])  # rotated: the new key seals, the old one still verifies
    again = await holdings.held("task_1", "db")
    assert again is not None and again[0] == lease
    assert PASSWORD not in again[1]  # the store holds it sealed

    keys.use(new, [])  # the old key left the ring
    with pytest.raises(CredentialUnavailable):
        await holdings.held("task_1", "db")
