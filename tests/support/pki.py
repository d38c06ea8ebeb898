"""A real CA for the workload-identity tests: OpenBao's PKI secrets engine issuing X.509-SVIDs
(URI SAN `spiffe://acme/...`, a TTL of a couple of minutes), the way an operator would set it up:

    ca = Pki(bao, "pki").start()
    svid = ca.issue("spiffe://acme/agent/payments")          # cert, key and the CA's bundle, as PEM
    cert, key = svid.write(tmp_path, "payments")
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.openbao import OpenBao

__all__ = ["Issued", "Pki", "client_context", "self_signed_svid"]


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str
    ca_pem: str

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        _write(key, self.key_pem, 0o600)
        _write(cert, self.cert_pem)
        return cert, key

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem.encode()).serial_number


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write whole, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


@dataclass
class Pki:
    """One PKI mount of a running OpenBao: a root CA and a role `svid` for spiffe://acme/* URI SANs."""

    bao: OpenBao
    mount: str = "pki"
    ca_pem: str = ""

    def start(self) -> Pki:
        self.bao.api("POST", f"sys/mounts/{self.mount}", {"type": "pki", "config": {"max_lease_ttl": "87600h"}})
        root = self.bao.api("POST", f"{self.mount}/root/generate/internal",
                            {"common_name": f"acme {self.mount} root", "ttl": "87600h", "key_type": "ec",
                             "key_bits": 256})
        self.ca_pem = root["data"]["certificate"].strip() + "\n"
        self.bao.api("POST", f"{self.mount}/roles/svid", {
            "allowed_uri_sans": ["spiffe://acme/*", "https://acme.example/*"],
            "allowed_domains": ["localhost"], "allow_bare_domains": True, "allow_ip_sans": True,
            "require_cn": False, "enforce_hostnames": False, "key_type": "ec", "key_bits": 256,
            "server_flag": True, "client_flag": True, "max_ttl": "24h", "not_before_duration": "5s",
        })
        return self

    def issue(self, *uri_sans: str, ttl: str = "120s", ip_sans: str = "", common_name: str = "") -> Issued:
        body: dict[str, Any] = {"uri_sans": ",".join(uri_sans), "ttl": ttl, "exclude_cn_from_sans": True}
        if ip_sans:
            body["ip_sans"] = ip_sans
        if common_name:
            body["common_name"] = common_name
        data = self.bao.api("POST", f"{self.mount}/issue/svid", body)["data"]
        return Issued(data["certificate"].strip() + "\n", data["private_key"].strip() + "\n", self.ca_pem)

    def write_bundle(self, path: Path) -> Path:
        _write(path, self.ca_pem)
        return path


def client_context(bundle: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """What an agent uses to reach the guard: the guard's CA, and its own SVID when it has one."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def self_signed_svid(spiffe_id: str, folder: Path, name: str, ca: bool = False) -> tuple[Path, Path]:
    """A forged SVID: the right URI SAN, signed by nobody the guard trusts (itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(minutes=10))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Issued(cert_pem, key_pem, "").write(folder, name)
