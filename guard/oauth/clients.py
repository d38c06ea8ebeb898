"""Who an OAuth client is.

- A Client ID Metadata Document: the `client_id` is an https URL, and guard fetches the JSON
  document there, with SSRF limits: https only (http only to loopback, and only in development),
  no private, loopback or link-local address (checked on the addresses the connection really
  uses, so DNS rebinding cannot slip past), no redirects, a size and a time bound.
- A client registered by RFC 7591 Dynamic Client Registration (`oauth.registration.mode: open`),
  whose redirect URIs must match the configured patterns (`*` stands for a port). Kept in the
  store, within `oauth.registration`'s limits: clients kept at once, redirect URIs per client,
  request size (400 `invalid_client_metadata`) and registrations per source address and minute
  (429 with Retry-After).

Every client is public (`token_endpoint_auth_method: none`): PKCE is its proof.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from guard.config import Config
from guard.identity.tokens import new_id
from guard.log import get_logger
from guard.oauth.errors import OAuthError
from guard.stores import RegistrationLimits, Store

__all__ = ["Client", "ClientRegistry", "is_metadata_url", "redirect_pattern"]

log = get_logger("guard.oauth")
CACHE_S = 300.0
_MAX_URIS = 10  # of a Client ID Metadata Document
NOT_FETCHED = "the client ID metadata document could not be fetched or is not valid"


class RegistrationLimited(OAuthError):
    """Too many registrations from one source: 429 with Retry-After (seconds)."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("invalid_client_metadata", "too many client registrations from this address: "
                         "try again later", 429)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    client_name: str
    redirect_uris: tuple[str, ...]
    kind: str  # "metadata_document" | "registered"

    @property
    def agent(self) -> str:
        return f"client:{self.client_id}"


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_metadata_url(client_id: str) -> bool:
    return client_id.startswith(("https://", "http://"))


def redirect_pattern(pattern: str) -> re.Pattern[str]:
    """A redirect URI pattern: `*` stands for a port, 1 to 5 digits, and nothing else (not a
    host name, not a path, not a user-info part)."""
    star = r"[0-9]{1,5}"
    return re.compile("".join(star if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)))


def _check_redirect_uri(uri: str) -> None:
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri:
        raise OAuthError("invalid_redirect_uri", "a redirect URI has no fragment")
    if parts.username is not None or parts.password is not None or "\\" in uri:
        raise OAuthError("invalid_redirect_uri", "a redirect URI has no user-info part")
    if parts.scheme == "https" or (parts.scheme == "http" and _loopback_host(parts.hostname or "")):
        return
    if parts.scheme in ("http", "https", "javascript", "data", "file", ""):
        raise OAuthError("invalid_redirect_uri", "a redirect URI is https, or http on a loopback address")


class _PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp, then refuses any address a metadata fetch must not reach."""

    def __init__(self, allow_loopback: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_loopback = allow_loopback

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for r in results:
            ip = ipaddress.ip_address(r["host"])
            if ip.is_loopback and self._allow_loopback:
                continue
            if not ip.is_global or ip.is_multicast:
                raise OSError(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


class ClientRegistry:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.dev = cfg.dev_mode
        self._cache: dict[str, tuple[float, Client]] = {}
        self._patterns = [redirect_pattern(p) for p in cfg.oauth.registration.redirect_uris]

    # -- lookup ----------------------------------------------------------------
    async def resolve(self, client_id: str) -> Client:
        if not client_id or len(client_id) > 2048:
            raise OAuthError("invalid_client", "missing or oversized client_id", 401)
        if is_metadata_url(client_id):
            if not self.cfg.oauth.metadata_documents:
                raise OAuthError("invalid_client", "client ID metadata documents are not accepted here", 401)
            return await self._document(client_id)
        data = await self.store.get_grant("client", client_id)
        if data is None:
            raise OAuthError("invalid_client", "unknown client", 401)
        return Client(client_id, str(data["client_name"]), tuple(data["redirect_uris"]), "registered")

    async def _document(self, url: str) -> Client:
        hit = self._cache.get(url)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        self._check_url(url)
        try:
            client = self._parse_document(url, await self._fetch(url))
        except OAuthError as e:
            if not self.dev:  # outside development no loopback address is ever reached
                raise
            # development reaches loopback addresses (also behind a name that resolves to one): one
            # answer whatever went wrong, so that the caller cannot tell which ports answer, and how
            log.info("client_metadata_failed", client_id=url, reason=e.description)
            raise OAuthError("invalid_client", NOT_FETCHED, 401) from e
        if len(self._cache) > 1000:
            self._cache.clear()
        self._cache[url] = (time.monotonic() + CACHE_S, client)
        return client

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        loopback = _loopback_host(parts.hostname or "")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback and self.dev):
            raise OAuthError("invalid_client", "a client ID metadata document is served over https", 401)
        if parts.path in ("", "/") or parts.fragment or parts.username or parts.password or not parts.hostname:
            raise OAuthError("invalid_client", "a client ID metadata document URL has a path, no fragment, "
                             "no credentials", 401)
        try:  # an address literal never reaches the resolver: check it here
            literal: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(
                (parts.hostname or "").strip("[]"))
        except ValueError:
            literal = None
        if (loopback and not self.dev) or (literal is not None and not literal.is_loopback
                                           and (not literal.is_global or literal.is_multicast)):
            raise OAuthError("invalid_client", "a client ID metadata document is on a public address", 401)

    async def _fetch(self, url: str) -> bytes:
        limit = self.cfg.oauth.metadata_max_bytes
        connector = aiohttp.TCPConnector(resolver=_PublicOnlyResolver(self.dev), limit=1, force_close=True)
        timeout = aiohttp.ClientTimeout(total=self.cfg.oauth.metadata_timeout_s)
        try:
            async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=timeout) as s, \
                    s.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as r:
                if r.status != 200:
                    raise OAuthError("invalid_client", f"the client ID metadata document answered {r.status}", 401)
                if r.content_length is not None and r.content_length > limit:
                    raise OAuthError("invalid_client", "the client ID metadata document is too large", 401)
                body = await r.content.read(limit + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.info("client_metadata_failed", client_id=url, error=type(e).__name__)
            raise OAuthError("invalid_client", "the client ID metadata document could not be fetched", 401) from e
        if len(body) > limit:
            raise OAuthError("invalid_client", "the client ID metadata document is too large", 401)
        return body

    def _parse_document(self, url: str, body: bytes) -> Client:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise OAuthError("invalid_client", "the client ID metadata document is not JSON", 401) from e
        if not isinstance(doc, dict) or doc.get("client_id") != url:
            raise OAuthError("invalid_client", "the document's client_id is not its own URL", 401)
        if doc.get("token_endpoint_auth_method", "none") != "none" or "client_secret" in doc:
            raise OAuthError("invalid_client", "only public clients (token_endpoint_auth_method none)", 401)
        uris = self._redirect_uris(doc.get("redirect_uris"), patterns=False)
        name = doc.get("client_name")
        return Client(url, str(name)[:200] if isinstance(name, str) and name else url, uris, "metadata_document")

    # -- RFC 7591 ------------------------------------------------------------
    def _redirect_uris(self, uris: Any, patterns: bool) -> tuple[str, ...]:
        most = self.cfg.oauth.registration.max_redirect_uris if patterns else _MAX_URIS
        if isinstance(uris, list) and len(uris) > most:
            raise OAuthError("invalid_client_metadata", f"redirect_uris: at most {most} URIs")
        if not isinstance(uris, list) or not uris or \
                not all(isinstance(u, str) and 0 < len(u) <= 2000 for u in uris):
            raise OAuthError("invalid_redirect_uri", f"redirect_uris: a list of one to {most} URIs")
        for uri in uris:
            _check_redirect_uri(uri)
            if patterns and not any(p.fullmatch(uri) for p in self._patterns):
                raise OAuthError("invalid_redirect_uri", "a redirect URI is not allowed by oauth.registration")
        return tuple(uris)

    async def register(self, body: Any, source: str) -> dict[str, Any]:
        """Register a client for `body` (RFC 7591), asked from the address `source`."""
        limits = self.cfg.oauth.registration
        if limits.mode != "open":
            raise OAuthError("access_denied", "dynamic client registration is off", 403)
        if not isinstance(body, dict):
            raise OAuthError("invalid_client_metadata", "the body is a JSON object")
        uris = self._redirect_uris(body.get("redirect_uris"), patterns=True)
        method = body.get("token_endpoint_auth_method", "none")
        if method != "none":
            raise OAuthError("invalid_client_metadata", "token_endpoint_auth_method: only none (PKCE) is supported")
        for key, allowed in (("grant_types", {"authorization_code", "refresh_token"}), ("response_types", {"code"})):
            value = body.get(key)
            if value is not None and (not isinstance(value, list) or not set(value) <= allowed):
                raise OAuthError("invalid_client_metadata", f"{key}: only {sorted(allowed)}")
        name = body.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise OAuthError("invalid_client_metadata", "client_name: a string of at most 200 characters")
        client_id = new_id("client")
        record = {"client_name": name or client_id, "redirect_uris": list(uris)}
        outcome, retry_after = await self.store.register_client(
            client_id, record, self.cfg.oauth.client_ttl_s, source,
            RegistrationLimits(limits.max_clients, limits.per_source_per_min, 60.0), time.time())
        if outcome == "rate_limited":
            log.warning("client_registration_refused", source=source, reason="rate_limited")
            raise RegistrationLimited(retry_after)
        if outcome == "full":
            log.warning("client_registration_refused", source=source, reason="max_clients")
            raise OAuthError("invalid_client_metadata", f"this server keeps at most {limits.max_clients} "
                             "registered clients: try again later")
        log.info("client_registered", client_id=client_id)
        return {
            "client_id": client_id,
            "client_id_issued_at": int(time.time()),
            "client_name": record["client_name"],
            "redirect_uris": list(uris),
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }
