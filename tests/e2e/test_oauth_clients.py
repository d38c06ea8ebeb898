"""Client ID Metadata Documents: the SDK's client authorizes with an https URL as its client_id
(the document served by the test over TLS, its certificate trusted through SSL_CERT_FILE), and
guard's fetch keeps to its SSRF limits (https only, no private or loopback address outside
development, no redirects, a size bound, the document's own URL as client_id)."""

from __future__ import annotations

import datetime
import functools
import ipaddress
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from guard.oauth.clients import NOT_FETCHED
from tests.e2e.test_oauth_mcp import person, text_of
from tests.support.guard import Guard
from tests.support.oauth import PERSON, REDIRECT, FormPerson, Tokens, eventually, mcp_client, oauth_files_policy, pkce
from tests.support.oauth import provider as sdk_provider
from tests.support.process import free_port

__all__ = ["person"]  # a fixture shared with test_oauth_mcp
HOSTILE = '<img src=x onerror="document.title=1">Research desktop'


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "docs-cert.pem", tmp / "docs-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class DocServer:
    """An https server for client ID metadata documents (and a few bad ones)."""

    def __init__(self, tmp: Path) -> None:
        self.cert, self.key = _certificate(tmp)
        self.port = free_port()
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def doc(self, path: str, **fields: Any) -> dict[str, Any]:
        return {"client_id": f"{self.base}{path}", "client_name": HOSTILE,
                "redirect_uris": [REDIRECT.format(port=33418)], "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"], **fields}

    async def start(self) -> DocServer:
        async def handle(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            if request.path == "/clients/redirect.json":
                raise web.HTTPFound(f"{self.base}/clients/desktop.json")
            if request.path == "/clients/big.json":
                return web.json_response(self.doc(request.path, padding="x" * 20_000))
            if request.path == "/clients/other.json":
                return web.json_response(self.doc("/clients/desktop.json"))
            return web.json_response(self.doc(request.path))

        app = web.Application()
        app.router.add_get("/{tail:.*}", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        await web.TCPSite(self.runner, "127.0.0.1", self.port, ssl_context=ctx).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[DocServer]:
    server = await DocServer(tmp_path).start()
    yield server
    await server.stop()


async def test_client_id_metadata_document(
    guard_factory: Any, mcp_server: str, docs: DocServer, http: aiohttp.ClientSession, person: list[FormPerson]
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), env={"SSL_CERT_FILE": str(docs.cert)})
    alice = FormPerson(guard)
    person.append(alice)
    storage = Tokens()
    url = f"{docs.base}/clients/desktop.json"
    async with mcp_client(guard, sdk_provider(guard, storage, alice.authorize, metadata_url=url)) as client:
        result = await client.call_tool("read_file", {"path": "notes/sources.txt"})
        assert "arxiv" in text_of(result)
    assert storage.client is not None and storage.client.client_id == url  # no registration happened
    assert "/clients/desktop.json" in docs.hits
    # the consent page showed the document's hostile name as text
    assert "<img" not in alice.consent_html and "&lt;img src=x" in alice.consent_html
    admin = guard.token("root@acme.example", "guard:admin")
    async with http.get(f"{guard.url}/v1/tasks", headers={"Authorization": f"Bearer {admin}"}) as r:
        [task] = (await r.json())["tasks"]
    assert task["agent"] == f"client:{url}" and task["requested_by"] == PERSON


async def _authorize_status(http: aiohttp.ClientSession, guard: Guard, client_id: str) -> tuple[int, str]:
    query = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT.format(port=33418),
             "state": "s", "code_challenge": pkce()[1], "code_challenge_method": "S256",
             "resource": f"{guard.url}/mcp/files"}
    async with http.get(f"{guard.url}/oauth/authorize?{urlencode(query)}", allow_redirects=False) as r:
        return r.status, await r.text()


async def _logged(guard: Guard, text: str) -> bool:
    return text in guard.log()


async def test_metadata_document_fetch_limits(
    guard_factory: Any, mcp_server: str, docs: DocServer, http: aiohttp.ClientSession
) -> None:
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), env={"SSL_CERT_FILE": str(docs.cert)})
    for path, reason in (("/clients/redirect.json", "answered 302"),  # no redirects followed
                         ("/clients/big.json", "too large"),
                         ("/clients/other.json", "not its own URL")):
        status, text = await _authorize_status(http, guard, f"{docs.base}{path}")
        # development mode (it reaches loopback): the caller learns nothing of the port; the log says why
        assert status == 400 and NOT_FETCHED in text and reason not in text, (path, text)
        await eventually(functools.partial(_logged, guard, reason))
    assert "/clients/desktop.json" not in docs.hits  # the redirect was not followed
    for client_id in ("https://10.0.0.7/clients/a.json", "https://169.254.169.254/latest/meta-data",
                      "https://[::ffff:10.0.0.1]/c.json", "ftp://127.0.0.1/c.json", f"{docs.base}/",
                      "https://user:pw@127.0.0.1/c.json"):
        status, text = await _authorize_status(http, guard, client_id)
        assert status == 400, (client_id, text)


async def test_metadata_documents_outside_development(
    guard_factory: Any, mcp_server: str, docs: DocServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With a real issuer configured (not development), loopback documents are refused, also behind
    a host name, and plain http is refused everywhere."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "idp.jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1"}]}))
    config = {"issuers": [{"issuer": "https://idp.example", "jwks_file": str(tmp_path / "idp.jwks.json")}]}
    guard: Guard = guard_factory(oauth_files_policy(mcp_server), config, env={"SSL_CERT_FILE": str(docs.cert)})
    names = [f"{docs.base}/clients/desktop.json", f"http://127.0.0.1:{docs.port}/clients/desktop.json",
             f"https://localhost:{docs.port}/clients/desktop.json"]
    host = socket.gethostname()
    if all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None)):
        names.append(f"https://{host}:{docs.port}/clients/desktop.json")  # a name that resolves to loopback
    for client_id in names:
        status, text = await _authorize_status(http, guard, client_id)
        assert status == 400, (client_id, text)
    assert docs.hits == []
