"""The three token types the guard signs and verifies, its keys and JWKS, and IdP tokens.

Guard-signed tokens (task, credential, Txn-Token) are verified strictly: the header segment
must be byte-for-byte one the guard itself produces (so `alg`, `kid`, `typ`, `crit`, `jku`,
`x5u` and friends cannot be chosen by a caller), then the signature, then `exp`, `iss`, `aud`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from guard.canonical import b64url, compact_json
from guard.errors import Unauthenticated

__all__ = [
    "CRED_TYP",
    "DEV_ISSUER",
    "TASK_TYP",
    "TXN_TYP",
    "GuardKeys",
    "KeyFileError",
    "Principal",
    "load_or_create_key",
    "new_id",
]

TASK_TYP = "task+jwt"
CRED_TYP = "cred+jwt"
TXN_TYP = "txntoken+jwt"
GUARD_TYPS = frozenset({TASK_TYP, CRED_TYP, TXN_TYP})
DEV_ISSUER = "urn:guard:dev"
MAX_TOKEN_BYTES = 8192
LEEWAY_S = 30


def new_id(prefix: str) -> str:
    """`<prefix>_` and 128 random bits as 32 hex digits (cheaper than a uuid4, as unguessable)."""
    return f"{prefix}_{secrets.token_hex(16)}"


def _b64d(seg: str) -> bytes:
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4))


def _int_b64(n: int, length: int) -> str:
    return b64url(n.to_bytes(length, "big"))


PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _jwk_of(key: PrivateKey, private: bool) -> dict[str, str]:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        s = serialization
        pub = key.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(pub), "alg": "EdDSA"}
        if private:
            jwk["d"] = b64url(key.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption()))
        return jwk
    nums = key.private_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": _int_b64(nums.public_numbers.x, 32),
        "y": _int_b64(nums.public_numbers.y, 32),
        "alg": "ES256",
    }
    if private:
        jwk["d"] = _int_b64(nums.private_value, 32)
    return jwk


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint."""
    members = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canon = json.dumps({k: jwk[k] for k in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canon.encode()).digest())


def _key_from_jwk(jwk: dict[str, str]) -> PrivateKey:
    if jwk["kty"] == "OKP":
        return ed25519.Ed25519PrivateKey.from_private_bytes(_b64d(jwk["d"]))
    d = int.from_bytes(_b64d(jwk["d"]), "big")
    return ec.derive_private_key(d, ec.SECP256R1())


class KeyFileError(ValueError):
    """A key file that cannot be used: missing folder, unreadable, or not a key (the reason says which)."""


DEFAULT_KEY_DIR = Path("var")  # the guard's working folder, which it creates itself (relative to the cwd)


def read_key_json(path: Path) -> Any:
    """The JSON of a key file; a KeyFileError naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"{path}: not a JSON key file (corrupt?)") from None


def key_from_json(path: Path, data: Any) -> PrivateKey:
    try:
        return _key_from_jwk(data)
    except (KeyError, TypeError, ValueError):
        raise KeyFileError(f"{path}: not a private JWK of an Ed25519 or P-256 key") from None


def may_create_in(path: Path) -> None:
    """A key is created only in a folder that exists (a mistyped path must not make a new key, which
    would break every token the other instances sign), except the guard's own `./var`."""
    folder = path.parent
    if folder.is_dir() or folder.resolve() == DEFAULT_KEY_DIR.resolve():
        return
    raise KeyFileError(f"{path}: no such file, and its folder {folder} does not exist "
                       "(a key is created only in an existing folder)")


def load_or_create_key(path: str | Path, algorithm: str = "EdDSA", create: bool = True) -> PrivateKey:
    """Load the private JWK at `path`, or create one (0600) on first start. With `create=False`,
    a missing file is only checked to be creatable, and a key that is not saved is returned."""
    p = Path(path)
    if p.exists():
        return key_from_json(p, read_key_json(p))
    may_create_in(p)
    key: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate() if algorithm == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    )
    if not create:
        return key
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(_jwk_of(key, private=True), f)
    os.replace(tmp, p)
    return key


class _KeyPair:
    """One signing key with its pre-encoded headers, one per token type.

    Ed25519 signs and verifies with libsodium (PyNaCl): the same deterministic signatures as
    OpenSSL's, in about half the CPU (every allowed call signs two tokens; see docs/performance.md)."""

    def __init__(self, key: PrivateKey) -> None:
        self.key = key
        self.public = key.public_key()
        self.jwk = _jwk_of(key, private=False)
        self.kid = _thumbprint(self.jwk)
        self.jwk["kid"] = self.jwk_kid = self.kid
        self.jwk["use"] = "sig"
        self.alg = self.jwk["alg"]
        self.headers = {
            typ: b64url(json.dumps({"alg": self.alg, "kid": self.kid, "typ": typ}, separators=(",", ":")).encode())
            for typ in GUARD_TYPS | {"JWT"}
        }
        self._sodium: tuple[bytes, bytes] | None = None  # (public, secret) of an Ed25519 key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
            self._sodium = crypto_sign_seed_keypair(seed)

    def sign(self, signing_input: bytes) -> bytes:
        if self._sodium is not None:
            return crypto_sign(signing_input, self._sodium[1])[:64]  # signature, then the message
        assert isinstance(self.key, ec.EllipticCurvePrivateKey)
        der = self.key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, sig: bytes, signing_input: bytes) -> bool:
        if len(sig) != 64:
            return False
        if self._sodium is not None:
            try:
                crypto_sign_open(sig + signing_input, self._sodium[0])
            except BadSignatureError:
                return False
            return True
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        assert isinstance(self.public, ec.EllipticCurvePublicKey)
        try:
            self.public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


class _Verified:
    """A token that verified: its claims, for the type it was verified as, under the header (hence
    the key) that signed it, until it expires. Its audience is checked against the claims on
    every use (one comparison), so one entry serves every audience a caller asks about."""

    __slots__ = ("claims", "header", "txn", "typ", "until")

    def __init__(self, claims: dict[str, Any], typ: str, header: str, until: float) -> None:
        self.claims, self.typ, self.header, self.until = claims, typ, header, until
        txn = claims.get("txn")
        self.txn = txn if isinstance(txn, str) else None


def _token_digest(token: str) -> bytes:
    """What the cache of verified tokens is keyed by: never the token itself (BLAKE2b: the
    cheapest collision-resistant digest here, half the instructions of SHA-256)."""
    return hashlib.blake2b(token.encode(), digest_size=32).digest()


class GuardKeys:
    """Signs and verifies the guard's own tokens.

    Verified task and Txn-Tokens (`cache=True`) are remembered until they expire, keyed by a
    digest of the whole token, so an agent's token is verified once per process, not on every
    call. A remembered token counts only for the type it was verified as and for the audience its
    claims name (a caller that asks for no audience, as the MCP route's `_delegated` does, gets
    it whatever its audience, as from a verification), and only while the key that signed it
    still verifies (a rotation that retires a key retires its tokens at once). Revocation is not
    cached: the task's state is read at admission on every call; the holder's proof (mTLS, DPoP)
    is checked on every call too."""

    CACHE_MAX = 50_000

    def __init__(self, key: PrivateKey, issuer: str, previous: list[PrivateKey] | None = None) -> None:
        self.issuer = issuer
        self._cache: dict[bytes, _Verified] = {}
        self._by_txn: dict[str, list[bytes]] = {}  # task id -> the digests of its cached tokens (forget_task)
        self.use(key, previous or [])

    def use(self, key: PrivateKey, previous: list[PrivateKey]) -> None:
        """Sign with `key` from now on; verify with it and `previous` (a rotation, no restart)."""
        current = _KeyPair(key)
        pairs = [current] + [_KeyPair(k) for k in previous]
        by_header = {(typ, pair.headers[typ]): pair for pair in pairs for typ in pair.headers}
        self.current, self._by_header, self._jwks = current, by_header, {"keys": [p.jwk for p in pairs]}
        self._typ_of = {header: typ for typ, header in by_header}  # header segment -> its typ
        self.pairs = pairs  # the current key first, then those that still verify

    def jwks(self) -> dict[str, Any]:
        return self._jwks

    def sign(self, typ: str, claims: dict[str, Any]) -> str:
        header = self.current.headers[typ]
        payload = b64url(compact_json(claims))
        signing_input = f"{header}.{payload}".encode("ascii")
        return f"{header}.{payload}.{b64url(self.current.sign(signing_input))}"

    def verify(self, token: str, typ: str, audience: str | None, cache: bool = False) -> dict[str, Any]:
        """Claims of a guard-signed token of type `typ`, or Unauthenticated."""
        now = time.time()
        digest = None
        if cache and len(token) <= MAX_TOKEN_BYTES:
            digest = _token_digest(token)
            hit = self._cache.get(digest)
            if hit is not None:
                if hit.until <= now or (hit.typ, hit.header) not in self._by_header:  # expired, or its key retired
                    self._drop(digest)
                elif hit.typ == typ and (audience is None or hit.claims.get("aud") == audience):
                    return hit.claims  # (another audience: verified afresh, and refused)
        claims, header = self._verify(token, typ, audience, now)
        if digest is not None:
            self._remember(digest, _Verified(claims, typ, header, float(claims["exp"]) + LEEWAY_S), now)
        return claims

    def _remember(self, digest: bytes, entry: _Verified, now: float) -> None:
        if digest in self._cache:  # verified again for another type: that one now
            self._cache[digest] = entry
            return
        if len(self._cache) >= self.CACHE_MAX:
            self._prune(now)
        self._cache[digest] = entry
        if entry.txn is not None:
            self._by_txn.setdefault(entry.txn, []).append(digest)

    def _verify(self, token: str, typ: str, audience: str | None, now: float) -> tuple[dict[str, Any], str]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("malformed token")
        pair = self._by_header.get((typ, parts[0]))
        if pair is None:
            raise Unauthenticated(f"not a {typ} issued by this guard")
        try:
            sig = _b64d(parts[2])
            claims = json.loads(_b64d(parts[1]))
        except (ValueError, UnicodeDecodeError) as e:
            raise Unauthenticated("malformed token") from e
        if not pair.verify(sig, f"{parts[0]}.{parts[1]}".encode("ascii")):
            raise Unauthenticated("bad signature")
        if not isinstance(claims, dict):
            raise Unauthenticated("malformed claims")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp + LEEWAY_S <= now:
            raise Unauthenticated("token expired")
        for not_before in (claims.get("iat"), claims.get("nbf")):
            if isinstance(not_before, int | float) and not_before - LEEWAY_S > now:
                raise Unauthenticated("token not yet valid")
        if claims.get("iss") != self.issuer:
            raise Unauthenticated("wrong issuer")
        if audience is not None and claims.get("aud") != audience:  # exactly: one token, one audience
            raise Unauthenticated("wrong audience")
        return claims, parts[0]

    def forget_task(self, task_id: str) -> None:
        """The task ended: its tokens leave the cache (they would be refused at admission
        anyway; this keeps the cache to live tasks)."""
        for digest in self._by_txn.pop(task_id, ()):
            self._cache.pop(digest, None)

    def _drop(self, digest: bytes) -> None:
        entry = self._cache.pop(digest, None)
        if entry is not None and entry.txn is not None:
            digests = self._by_txn.get(entry.txn)
            if digests is not None and digest in digests:
                digests.remove(digest)
                if not digests:
                    del self._by_txn[entry.txn]

    def _prune(self, now: float) -> None:
        self._cache = {d: e for d, e in self._cache.items() if e.until > now and (e.typ, e.header) in self._by_header}
        if len(self._cache) >= self.CACHE_MAX:
            self._cache.clear()
        self._by_txn = {}
        for digest, entry in self._cache.items():
            if entry.txn is not None:
                self._by_txn.setdefault(entry.txn, []).append(digest)

    def typ_of(self, token: str) -> str | None:
        """The `typ` of a token's unverified header: only for routing (which verifier to use),
        never for decisions. A header this guard signs with is known without decoding it."""
        typ = self._typ_of.get(token.partition(".")[0])
        if typ is not None:
            return typ
        header = self.peek_header(token)
        found = header.get("typ") if header is not None else None
        return found if isinstance(found, str) else None

    def peek_header(self, token: str) -> dict[str, Any] | None:
        """Unverified header: only for routing (which verifier to use), never for decisions."""
        try:
            header = json.loads(_b64d(token.split(".", 1)[0]))
        except (ValueError, UnicodeDecodeError):
            return None
        return header if isinstance(header, dict) else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Someone authenticated by an IdP (or the development issuer)."""

    sub: str
    roles: frozenset[str]
    issuer: str
    claims: dict[str, Any]


def unverified_header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        raise Unauthenticated("malformed token") from e
    return header


def jti() -> str:
    return secrets.token_urlsafe(16)
