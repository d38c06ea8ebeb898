"""People's sign-in sessions: an opaque cookie (`HttpOnly`, `SameSite=Lax`, `Secure` unless guard
is served on a loopback address, short-lived), the session itself in the store under the cookie's
digest, and a CSRF token per session that every form post must carry."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from guard.config import Config
from guard.errors import Forbidden
from guard.identity.tokens import Principal
from guard.signals.subjects import sessions_ended_key
from guard.stores import Store

__all__ = ["CSRF_HEADER", "LOGIN_COOKIE", "SESSIONS", "Person", "Sessions", "safe_next", "session_principal"]

LOGIN_COOKIE = "guard_login"  # binds a sign-in in progress to the browser that started it
CSRF_HEADER = "X-CSRF-Token"  # what the review page sends with a signed-in API request that changes state


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Person:
    """Someone signed in: `sub` names them in tasks, approvals and audit (through `sso`, the
    IdP's `iss` and `sub`: guard.oauth.sso.person_key); `name` is what pages show."""

    sub: str
    roles: frozenset[str]
    via: str  # "sso" | "development"
    csrf: str
    expires_at: float
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"sub": self.sub, "roles": sorted(self.roles), "via": self.via, "csrf": self.csrf,
                "expires_at": self.expires_at, "name": self.name}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Person:
        return cls(str(d["sub"]), frozenset(d.get("roles") or ()), str(d["via"]), str(d["csrf"]),
                   float(d["expires_at"]), str(d.get("name") or d["sub"]))


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_next(value: str | None, default: str = "/delegations") -> str:
    """Where to go after sign-in: a path on guard itself, never another site (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")) or any(c in value for c in "\r\n\\"):
        return default
    return value


class Sessions:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.secure = not _loopback(cfg.base_url)
        self.cookie = "__Host-guard_session" if self.secure else "guard_session"
        self.ttl_s = cfg.sso.session_ttl_s if cfg.sso is not None else 1800
        self.origin = "{0.scheme}://{0.netloc}".format(urlsplit(cfg.base_url))

    def set_cookie(self, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, secure=self.secure,
                            samesite="Lax")

    async def start(self, response: web.StreamResponse, sub: str, roles: frozenset[str], via: str,
                    name: str | None = None) -> Person:
        value = secrets.token_urlsafe(32)
        person = Person(sub, roles, via, secrets.token_urlsafe(24), time.time() + self.ttl_s, name or sub)
        await self.store.put_grant("session", digest(value), person.to_json(), self.ttl_s)
        self.set_cookie(response, self.cookie, value, self.ttl_s)
        return person

    async def current(self, request: web.Request) -> Person | None:
        value = request.cookies.get(self.cookie)
        if not value or len(value) > 200:
            return None
        data = await self.store.get_grant("session", digest(value))
        if data is None:
            return None
        person = Person.from_json(data)
        if person.via == "development" and not self.cfg.dev_sign_in:  # a session of an earlier configuration
            return None
        if person.expires_at <= time.time():
            return None
        if self.cfg.signals is not None and await self._ended_by_signal(person):
            return None
        return person

    async def _ended_by_signal(self, person: Person) -> bool:
        """A Shared Signal about this person (guard.signals) ended the sessions they had then."""
        ended = await self.store.get_grant("sessions_ended", sessions_ended_key(person.sub))
        return ended is not None and float(ended.get("at", 0)) >= person.expires_at - self.ttl_s

    async def end(self, request: web.Request, response: web.StreamResponse) -> None:
        value = request.cookies.get(self.cookie)
        if value:
            await self.store.take_grant("session", digest(value))
        response.del_cookie(self.cookie, path="/")

    def check_post(self, request: web.Request, expected: str | None, given: str | None) -> None:
        """A form post: same origin (when the browser says), and the CSRF token of the session."""
        origin = request.headers.get("Origin")  # "null" under Referrer-Policy: no-referrer: the token decides
        if origin is not None and origin not in (self.origin, "null"):
            raise Forbidden("cross-site form post refused")
        if not expected or not given or not hmac.compare_digest(expected.encode(), given.encode()):
            raise Forbidden("missing or wrong CSRF token")


SESSIONS = web.AppKey("sessions", Sessions)


async def session_principal(request: web.Request) -> Principal | None:
    """The signed-in person behind an API request without a bearer token (the review page), or
    None. A request that changes state must carry the session's CSRF token in X-CSRF-Token."""
    sessions = request.app.get(SESSIONS)
    if sessions is None:
        return None
    person = await sessions.current(request)
    if person is None:
        return None
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sessions.check_post(request, person.csrf, request.headers.get(CSRF_HEADER))
    return Principal(person.sub, person.roles, f"session:{person.via}", {"sub": person.sub, "via": person.via})
