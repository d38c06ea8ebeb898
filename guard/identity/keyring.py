"""Rotating the guard's own signing key, with no restart (`guard keys rotate`, `signing.rotate_s`).

The key file (`signing.key_file`) holds one private JWK until the first rotation; from then on
a key ring:

    {"keys": [{<private JWK>, "created_at": t},                  # signs
              {<private JWK>, "created_at": t0, "rotated_at": t}, ...]}   # verify only

After a rotation the new key signs; the previous one still verifies, and stays in JWKS, until
every token it can have signed has expired plus the verification leeway (`retain_s`: the
longest lifetime of a task token, credential or Txn-Token under this config and policies,
recomputed when a policy reload raises one: `RetainWindow`).

Every instance reading the same file looks at it every `WATCH_S` and switches on its own, so
instances sharing a key folder all sign with the new key within a few seconds; until then,
tokens of either key verify everywhere (the new key is published as soon as it is read, the
old one stays). With `signing.rotate_s`, the first instance to see the key older than that
rotates it, under an exclusive lock on `<key_file>.lock`, so one rotation happens, not one
per instance.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.config import Config
from guard.filewatch import FileWatch
from guard.identity.tokens import (
    LEEWAY_S,
    GuardKeys,
    KeyFileError,
    PrivateKey,
    _jwk_of,
    _KeyPair,
    key_from_json,
    load_or_create_key,
    may_create_in,
    read_key_json,
)
from guard.log import get_logger

__all__ = ["KeyRing", "RetainWindow", "Rotated", "load_keys", "read_ring", "retain_s", "rotate",
           "watch_keys"]

log = get_logger("guard.keyring")
WATCH_S = 1.0


@dataclass(frozen=True)
class KeyRing:
    current: PrivateKey
    created_at: float
    previous: tuple[tuple[PrivateKey, float], ...]  # (key, rotated_at), newest first


@dataclass(frozen=True)
class Rotated:
    kid: str
    previous_kid: str
    previous_until: float  # when the previous key stops verifying and leaves JWKS


class RetainWindow:
    """retain_s under the policies in force, never less than it has been since start: a reload
    that raises a TTL or a tool's timeout extends how long a previous key verifies; one that
    lowers them does not cut short tokens signed before. `lifetimes()`: the longest tool timeout
    and credential lifetime in force (PolicySet.lifetimes)."""

    def __init__(self, cfg: Config, lifetimes: Callable[[], tuple[float, int]]) -> None:
        self.cfg = cfg
        self.lifetimes = lifetimes
        self._longest = 0.0

    def __call__(self) -> float:
        self._longest = max(self._longest, retain_s(self.cfg, *self.lifetimes()))
        return self._longest


def retain_s(cfg: Config, longest_tool_timeout_s: float = 30.0, longest_credential_ttl_s: int = 0) -> float:
    """How long a key verifies after it stopped signing: the longest token it may have signed
    (task tokens live at most task_ttl_s; credentials their ttl; Txn-Tokens a tool's timeout + 30 s)
    plus the verification leeway."""
    limits = cfg.limits
    longest = max(limits.task_ttl_s, limits.credential_ttl_s, longest_credential_ttl_s, longest_tool_timeout_s + 30)
    return float(longest + LEEWAY_S)


def read_ring(path: str | Path, algorithm: str, create: bool = True) -> KeyRing:
    """The ring at `path` (a lone private JWK counts as a ring of one), created on first use (in an
    existing folder). A KeyFileError (a ValueError) says why a file cannot be used. With
    `create=False`, a missing file gives a ring of a new key that is not saved (a dry run)."""
    p = Path(path)
    if not p.exists():
        key = load_or_create_key(p, algorithm, create)
        if not create:
            return KeyRing(key, time.time(), ())
    data = read_key_json(p)
    if not isinstance(data, dict) or "keys" not in data:  # one key, never rotated
        return KeyRing(key_from_json(p, data), p.stat().st_mtime, ())
    entries = data["keys"]
    try:
        previous = tuple((key_from_json(p, e), float(e["rotated_at"])) for e in entries[1:])
        return KeyRing(key_from_json(p, entries[0]), float(entries[0].get("created_at", 0)), previous)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        if isinstance(e, KeyFileError):
            raise
        raise KeyFileError(f"{p}: not a key ring of private JWKs") from None


def _write_ring(path: Path, ring: KeyRing) -> None:
    entries: list[dict[str, Any]] = [{**_jwk_of(ring.current, private=True), "created_at": ring.created_at}]
    entries += [{**_jwk_of(k, private=True), "rotated_at": at} for k, at in ring.previous]
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"keys": entries}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    may_create_in(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _new_key(algorithm: str) -> PrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else ec.generate_private_key(ec.SECP256R1())


def rotate(path: str | Path, algorithm: str, keep_s: float, older_than_s: float | None = None) -> Rotated | None:
    """A new signing key; the current one verifies for `keep_s` more. With `older_than_s`, only
    when the current key is at least that old (automatic rotation: None when not due)."""
    p = Path(path)
    with _locked(p):
        ring = read_ring(p, algorithm)
        now = time.time()
        if older_than_s is not None and now - ring.created_at < older_than_s:
            return None
        kept = tuple((k, at) for k, at in ring.previous if at + keep_s > now)
        new = KeyRing(_new_key(algorithm), now, ((ring.current, now), *kept))
        _write_ring(p, new)
    return Rotated(_KeyPair(new.current).kid, _KeyPair(ring.current).kid, now + keep_s)


def _verifying(ring: KeyRing, keep_s: float, now: float) -> list[PrivateKey]:
    return [k for k, at in ring.previous if at + keep_s > now]


def load_keys(cfg: Config, keep_s: float, create: bool = True) -> GuardKeys:
    """The guard's keys from `signing.key_file`, created there on first start (`signing_key_created`);
    a file that cannot be used stops the start with a config error naming it."""
    path = Path(cfg.signing.key_file)
    existed = path.exists()
    try:
        ring = read_ring(path, cfg.signing.algorithm, create)
    except KeyFileError as e:
        raise cfg.error(("signing", "key_file"), str(e)) from None
    keys = GuardKeys(ring.current, cfg.issuer, _verifying(ring, keep_s, time.time()))
    if create and not existed:
        log.info("signing_key_created", file=str(path), kid=keys.current.kid)
    return keys


async def watch_keys(cfg: Config, keys: GuardKeys, keep: Callable[[], float]) -> AsyncIterator[None]:
    """A cleanup context body: follow the key file (rotations by any instance or by hand),
    drop previous keys whose time is over (`keep()`: how long they verify, recomputed on each
    look), and rotate when `signing.rotate_s` says so."""
    path = cfg.signing.key_file
    watch = FileWatch([path])
    ring = read_ring(path, cfg.signing.algorithm)
    state = {"kids": _kids(keys), "created_at": ring.created_at, "keep_s": keep()}

    def step(keep_s: float) -> KeyRing | None:
        """In a thread (file reads, the rotation lock): the ring to use, None when nothing changed."""
        rotate_s = cfg.signing.rotate_s
        if rotate_s is not None and time.time() - float(state["created_at"]) >= rotate_s:  # type: ignore[arg-type]
            done = rotate(path, cfg.signing.algorithm, keep_s, older_than_s=rotate_s)
            if done is not None:
                log.info("signing_key_rotated", kid=done.kid, previous_kid=done.previous_kid,
                         previous_until=round(done.previous_until), by="rotate_s")
        if not watch.changed() and len(keys.jwks()["keys"]) == 1 and keep_s <= float(state["keep_s"]):  # type: ignore[arg-type]
            return None
        return read_ring(path, cfg.signing.algorithm)

    async def loop() -> None:
        while True:
            await asyncio.sleep(WATCH_S)
            keep_s = keep()  # on the loop: reads the policies in force
            try:
                ring = await asyncio.to_thread(step, keep_s)
            except (OSError, ValueError, KeyError) as e:
                log.error("signing_keys_reload_failed", file=path, reason=str(e),
                          detail="the keys in use stay in force")
                continue
            if ring is None:
                continue
            state["created_at"], state["keep_s"] = ring.created_at, keep_s
            keys.use(ring.current, _verifying(ring, keep_s, time.time()))  # on the loop: one swap
            kids = _kids(keys)
            if kids != state["kids"]:
                state["kids"] = kids
                log.info("signing_keys_loaded", kid=keys.current.kid, verifying=kids[1:])

    task = asyncio.create_task(loop())
    yield
    task.cancel()


def _kids(keys: GuardKeys) -> list[str]:
    return [str(k["kid"]) for k in keys.jwks()["keys"]]
