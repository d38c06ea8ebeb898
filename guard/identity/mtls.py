"""Workload identity over mutual TLS: the guard's door (`listen.tls`), X.509-SVIDs, and the
guard's own certificate towards the tools that ask for one.

- `ServerTLS` is the `ssl.SSLContext` the server listens with. Its files (certificate, key,
  client bundle) are re-read when they change: a new context is built and an SNI callback hands
  it to every new handshake, so connections already open keep theirs and nothing restarts. A
  bad new file keeps the old context in force and logs `tls_reload_failed` once, naming it.
- The TLS layer only checks that a client certificate chains to the bundle (times are checked
  here, to answer with a reason). `peer_svid(transport)` then reads the X.509-SVID of the
  connection: exactly one URI SAN, scheme `spiffe`, not a CA, valid now. Parsed once per
  connection.
- `ClientTLS` is what the guard presents to a tool (`tls: {ca_file, cert_file, key_file}`),
  re-read on change too; with `spiffe_id`, the tool's certificate must carry that URI SAN
  instead of a host name, checked inside the handshake, before any request is sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from guard.errors import Unauthenticated
from guard.filewatch import FileWatch
from guard.log import get_logger
from guard.spiffe import valid_spiffe_id

__all__ = [
    "SERVER_TLS", "ClientTLS", "ServerTLS", "Svid", "ToolContexts", "parse_svid", "peer_svid",
    "watch",
]

log = get_logger("guard.mtls")

_NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: validity is checked in peer_svid, with a reason
WATCH_S = 1.0  # how often the files are looked at
_ENCODING_DER = 2  # _ssl.ENCODING_DER: the verified chain's certificates as DER


@dataclass(frozen=True, slots=True)
class Svid:
    """What a client certificate says about its holder: a SPIFFE ID, or why it is not an SVID."""

    spiffe_id: str | None
    not_before: float
    not_after: float
    error: str | None = None
    chain_root: bytes | None = None  # SHA-256 of the DER of the verified chain's root (an x509 issuer's bundle)

    def check(self, now: float) -> str:
        """The SPIFFE ID, or Unauthenticated with the reason."""
        if self.error is not None:
            raise Unauthenticated(self.error)
        if now < self.not_before:
            raise Unauthenticated("client certificate not yet valid")
        if now >= self.not_after:
            raise Unauthenticated("client certificate expired")
        assert self.spiffe_id is not None
        return self.spiffe_id


def _ts(value: datetime) -> float:
    return value.timestamp()


def parse_svid(der: bytes) -> Svid:
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return Svid(None, 0, 0, "client certificate unreadable")
    nb, na = _ts(cert.not_valid_before_utc), _ts(cert.not_valid_after_utc)
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
        if isinstance(bc, x509.BasicConstraints) and bc.ca:
            return Svid(None, nb, na, "client certificate is a CA certificate, not an X.509-SVID")
    except x509.ExtensionNotFound:
        pass
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier) if isinstance(
            san, x509.SubjectAlternativeName) else []
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        return Svid(None, nb, na, f"an X.509-SVID has exactly one URI SAN; this certificate has {len(uris)}")
    if not uris[0].startswith("spiffe://"):
        return Svid(None, nb, na, "the certificate's URI SAN is not a spiffe:// ID")
    if not valid_spiffe_id(uris[0]):
        return Svid(None, nb, na, "the certificate's URI SAN is not a valid SPIFFE ID")
    return Svid(uris[0], nb, na)


def _chain_svids(sslobj: ssl.SSLObject) -> list[bytes]:
    """DER of the verified chain (leaf first) where the ssl module can tell, else the leaf."""
    inner = getattr(sslobj, "_sslobj", None)
    getter = getattr(inner, "get_verified_chain", None)
    if getter is not None:
        try:
            chain = getter()
            return [c.public_bytes(_ENCODING_DER) for c in chain] if chain else []
        except (ssl.SSLError, ValueError, AttributeError):
            pass
    der = sslobj.getpeercert(binary_form=True)
    return [der] if der else []


_PEERS: weakref.WeakKeyDictionary[ssl.SSLObject, Svid | None] = weakref.WeakKeyDictionary()


def _svid_of(sslobj: ssl.SSLObject) -> Svid | None:
    """The leaf's SVID view, every CA of the chain held to its validity too (TLS did not check times)."""
    chain = _chain_svids(sslobj)
    if not chain:
        return None
    svid = parse_svid(chain[0])
    for der in chain[1:]:
        ca = x509.load_der_x509_certificate(der)
        nb, na = _ts(ca.not_valid_before_utc), _ts(ca.not_valid_after_utc)
        svid = Svid(svid.spiffe_id, max(svid.not_before, nb), min(svid.not_after, na), svid.error)
    root = hashlib.sha256(chain[-1]).digest() if len(chain) > 1 else None
    return Svid(svid.spiffe_id, svid.not_before, svid.not_after, svid.error, root)


def peer_svid(transport: asyncio.BaseTransport | None) -> Svid | None:
    """The connection's client certificate as an SVID (None: no certificate, or plain HTTP)."""
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(sslobj, ssl.SSLObject):
        return None
    try:
        return _PEERS[sslobj]
    except KeyError:
        svid = _PEERS[sslobj] = _svid_of(sslobj)
        return svid


def pem_file_problem(files: list[tuple[str, str]]) -> tuple[str, str, str] | None:
    """The first of `files` (key, path) that cannot be read or is not PEM: (key, path, why)."""
    for key, path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return key, path, f"cannot read: {e.strerror or e}"
        if b"-----BEGIN" not in data:
            return key, path, "not a PEM file"
    return None


def _first_bad_file(build: Callable[[], Any], files: list[tuple[str, str]]) -> tuple[str, str]:
    """Which file (key, path) a failed build stumbled on, and why."""
    problem = pem_file_problem(files)
    if problem is not None:
        key, path, why = problem
        return path, f"{key}: {why}"
    try:
        build()
    except (ssl.SSLError, OSError, ValueError) as e:
        return files[0][1], f"{files[0][0]}: {e}"
    return files[0][1], "unknown"


class _Reloading:
    """A context built from files, rebuilt when they change; a failed rebuild keeps the old one."""

    def __init__(self, files: list[tuple[str, str]]) -> None:
        self.files = files
        self.watch = FileWatch([p for _, p in files])
        self.current = self.build()
        self.failed_state: object = None
        self.settling = False

    def build(self) -> ssl.SSLContext:
        raise NotImplementedError

    def refresh(self) -> bool:
        """Rebuild once the files changed and then stayed put for one look (a certificate and its
        key are written one after the other); True when a new context is in force."""
        if self.watch.changed():
            self.settling = True
            return False
        if not self.settling:
            return False
        self.settling = False
        try:
            ctx = self.build()
        except (ssl.SSLError, OSError, ValueError):
            if self.failed_state != self.watch.seen:  # one error per bad version of the files
                self.failed_state = self.watch.seen
                path, reason = _first_bad_file(self.build, self.files)
                log.error("tls_reload_failed", file=path, reason=reason,
                          detail="the previous certificate and key stay in force")
            return False
        self.current = ctx
        log.info("tls_reloaded", files=[p for _, p in self.files])
        return True


class ServerTLS(_Reloading):
    """The listening socket's TLS: TLS 1.2+, client certificates asked for and chained to the bundle."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None, client_auth: str) -> None:
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self.required = client_auth == "required"
        files = [("cert_file", cert_file), ("key_file", key_file)]
        if client_ca_file:
            files.append(("client_ca_file", client_ca_file))
        super().__init__(files)
        self.base = self.current  # the server's context: its SNI callback hands out the current one
        self.base.sni_callback = self._pick

    def _pick(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        if self.current is not ctx:
            sslobj.context = self.current

    def build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file:
            ctx.load_verify_locations(self.client_ca_file)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # "required" is enforced per request, with a reason
            ctx.verify_flags |= _NO_CHECK_TIME
        return ctx

    def spiffe_id(self, transport: asyncio.BaseTransport | None) -> str | None:
        """The verified SPIFFE ID of the connection; None without a client certificate.
        A certificate that is not a valid SVID now is refused (401 with the reason)."""
        svid = peer_svid(transport)
        if svid is None:
            if self.required:
                raise Unauthenticated("a client certificate (X.509-SVID) is required")
            return None
        return svid.check(time.time())


SERVER_TLS = web.AppKey("server_tls", ServerTLS)


class ClientTLS(_Reloading):
    """What the guard presents to one tool, and how it checks the tool's certificate."""

    def __init__(self, ca_file: str | None, cert_file: str | None, key_file: str | None,
                 spiffe_id: str | None) -> None:
        self.ca_file, self.cert_file, self.key_file, self.expected = ca_file, cert_file, key_file, spiffe_id
        files = [(k, p) for k, p in (("cert_file", cert_file), ("key_file", key_file), ("ca_file", ca_file)) if p]
        super().__init__(files)

    def build(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.expected is not None:
            ctx.check_hostname = False  # the URI SAN stands for the host name
            ctx.sslobject_class = _expecting(self.expected)
        return ctx


def _expecting(expected: str) -> type[ssl.SSLObject]:
    class SpiffeChecked(ssl.SSLObject):
        """Fails the handshake unless the peer's certificate is an SVID of `expected`."""

        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            svid = parse_svid(der) if der else None
            got = svid.spiffe_id if svid is not None else None
            if got != expected:
                raise ssl.SSLCertVerificationError(
                    f"the tool presented {got or 'no SPIFFE ID'} where {expected} was expected")

    return SpiffeChecked


class ToolContexts:
    """One ClientTLS per distinct tool TLS setting, kept across policy reloads."""

    def __init__(self) -> None:
        self._by_setting: dict[tuple[tuple[str | None, ...], str | None], ClientTLS] = {}

    def context(self, tls: tuple[str | None, str | None, str | None] | None,
                spiffe_id: str | None) -> ssl.SSLContext | None:
        """The context to reach a tool with (None: the shared client's default); OSError or
        ssl.SSLError when its files cannot be read the first time."""
        if tls is None and spiffe_id is None:
            return None
        key = (tls or (None, None, None), spiffe_id)
        found = self._by_setting.get(key)
        if found is None:
            found = self._by_setting[key] = ClientTLS(*key[0], spiffe_id)
        return found.current

    def all(self) -> list[_Reloading]:
        return list(self._by_setting.values())


async def watch(contexts: Callable[[], list[_Reloading]], every_s: float = WATCH_S) -> AsyncIterator[None]:
    """A cleanup context body: look at the files every `every_s` while the app runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every_s)
            for r in contexts():
                r.refresh()

    task = asyncio.create_task(loop())
    yield
    task.cancel()
