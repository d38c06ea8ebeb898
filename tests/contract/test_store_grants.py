"""The Store contract for OAuth grants and sign-in sessions (guard.oauth), on every backend:
single-use codes, expiry, refresh-token rotation with replay detection, also between two
instances racing on the same token, and the limits of client registration."""

from __future__ import annotations

import asyncio
import time

from guard.stores import RegistrationLimits, Store


async def test_put_get_take(store: Store, peer: Store) -> None:
    await store.put_grant("code", "c1", {"task_id": "task_1", "n": 2}, 60)
    assert await peer.get_grant("code", "c1") == {"task_id": "task_1", "n": 2}
    assert await store.get_grant("code", "other") is None
    assert await store.get_grant("session", "c1") is None  # kinds are separate
    assert await peer.take_grant("code", "c1") == {"task_id": "task_1", "n": 2}
    assert await store.take_grant("code", "c1") is None
    assert await store.get_grant("code", "c1") is None


async def test_grants_expire(store: Store) -> None:
    await store.put_grant("login", "s1", {"nonce": "x"}, 0.2)
    await asyncio.sleep(0.35)
    assert await store.get_grant("login", "s1") is None
    assert await store.take_grant("login", "s1") is None


async def test_take_is_single_use_under_a_race(store: Store, peer: Store) -> None:
    await store.put_grant("code", "race", {"task_id": "t"}, 60)
    got = await asyncio.gather(*(s.take_grant("code", "race") for s in (store, peer) * 5))
    assert [g for g in got if g is not None] == [{"task_id": "t"}]


async def test_refresh_rotates_and_detects_reuse(store: Store, peer: Store) -> None:
    assert await store.rotate_refresh("r0", "r1", 60) == ("unknown", None)
    await store.put_grant("refresh", "r0", {"task_id": "task_9"}, 60)
    assert await store.rotate_refresh("r0", "r1", 60) == ("rotated", {"task_id": "task_9"})
    assert await peer.rotate_refresh("r1", "r2", 60) == ("rotated", {"task_id": "task_9"})
    # the old tokens are spent: presenting one again is a replay, and nothing new is issued
    assert await store.rotate_refresh("r0", "r3", 60) == ("reused", {"task_id": "task_9"})
    assert await peer.rotate_refresh("r1", "r4", 60) == ("reused", {"task_id": "task_9"})
    assert await store.rotate_refresh("r3", "r5", 60) == ("unknown", None)
    assert await store.rotate_refresh("r2", "r6", 60) == ("rotated", {"task_id": "task_9"})


async def test_refresh_race_has_one_winner(store: Store, peer: Store) -> None:
    await store.put_grant("refresh", "f0", {"task_id": "t"}, 60)
    outcomes = await asyncio.gather(*(s.rotate_refresh("f0", f"f{i + 1}", 60)
                                      for i, s in enumerate((store, peer) * 4)))
    assert sorted(o for o, _ in outcomes) == ["reused"] * 7 + ["rotated"]


async def test_client_registration_limits(store: Store, peer: Store) -> None:
    limits = RegistrationLimits(max_clients=3, per_source=4, window_s=0.5)
    now = time.time()
    assert await store.register_client("c1", {"client_name": "one"}, 60, "10.0.0.1", limits, now) == ("registered", 0)
    assert await peer.get_grant("client", "c1") == {"client_name": "one"}
    assert (await peer.register_client("c2", {}, 60, "10.0.0.2", limits, now))[0] == "registered"
    assert (await store.register_client("c3", {}, 0.3, "10.0.0.2", limits, now))[0] == "registered"
    # three kept, across instances: the fourth is refused and not stored
    assert await peer.register_client("c4", {}, 60, "10.0.0.3", limits, now) == ("full", 0)
    assert await store.get_grant("client", "c4") is None
    # a source's attempts in its window are counted, refused or not: the fifth waits for the window's end
    assert (await store.register_client("c5", {}, 60, "10.0.0.1", limits, now))[0] == "full"
    assert (await peer.register_client("c6", {}, 60, "10.0.0.1", limits, now))[0] == "full"
    assert (await store.register_client("c7", {}, 60, "10.0.0.1", limits, now))[0] == "full"
    outcome, retry_after = await peer.register_client("c8", {}, 60, "10.0.0.1", limits, now)
    assert outcome == "rate_limited" and 0 < retry_after <= 0.5
    # c3 expires: its place is free again; the window ends: the source may try again
    await asyncio.sleep(0.6)
    later = time.time()
    assert (await store.register_client("c9", {}, 60, "10.0.0.1", limits, later))[0] == "registered"
    assert await peer.get_grant("client", "c3") is None
    assert (await peer.register_client("c10", {}, 60, "10.0.0.9", limits, later))[0] == "full"
