"""guard as the OAuth authorization server of `/mcp/{tool}`: discovery documents, the
authorization request and its consent page, the token, registration and revocation endpoints.
The logic lives in guard.oauth; this module speaks HTTP."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web
from multidict import MultiDictProxy

from guard.deps import Deps
from guard.errors import NotFound, PayloadTooLarge
from guard.oauth.errors import OAuthError
from guard.oauth.grants import AuthorizationServer, Consent, RedirectError
from guard.oauth.metadata import resource_metadata, server_metadata
from guard.oauth.pages import consent_page, message_page
from guard.oauth.sessions import SESSIONS, Person, Sessions
from guard.oauth.sso import Sso
from guard.routes.common import DEPS, json_response, read_body
from guard.routes.problems import oauth_error
from guard.routes.tasks import end_task

__all__ = ["OAUTH", "OAuthDeps", "context", "html_response", "routes"]

routes = web.RouteTableDef()


@dataclass
class OAuthDeps:
    server: AuthorizationServer
    sessions: Sessions
    sso: Sso | None


OAUTH = web.AppKey("oauth", OAuthDeps)


async def context(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx after the one that opens the store: the authorization server and sign-in."""
    deps: Deps = app[DEPS]

    async def end(task_id: str, status: str, actor: str, reason: str | None) -> object:
        return await end_task(deps, task_id, status, actor, reason)

    server = AuthorizationServer(deps.cfg, deps.store, deps.keys, deps.audit, deps.policies, end)
    sso = Sso(deps.cfg, deps.store, deps.http) if deps.cfg.sso is not None else None
    sessions = Sessions(deps.cfg, deps.store)
    app[OAUTH] = OAuthDeps(server, sessions, sso)
    app[SESSIONS] = sessions  # the API's principal() accepts a signed-in person (guard.auth)
    yield


def page_headers(form_targets: str = "") -> dict[str, str]:
    return {
        "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action 'self'{form_targets}; frame-ancestors 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def html_response(body: str, status: int = 200, form_targets: str = "") -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", headers=page_headers(form_targets))


def _oauth_json(data: object, status: int = 200) -> web.Response:
    return json_response(data, status, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def _form(request: web.Request) -> dict[str, str]:
    body = await read_body(request, request.app[DEPS].cfg.limits.max_body_bytes)
    if not request.content_type.startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "the body is application/x-www-form-urlencoded")
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    out: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise OAuthError("invalid_request", f"parameter {k} is repeated")
        out[k] = v
    return out


# -- discovery ---------------------------------------------------------------------
@routes.get("/.well-known/oauth-protected-resource/mcp/{tool}")
async def protected_resource(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    tool = request.match_info["tool"]
    spec = deps.policies.current.tools.get(tool)
    if spec is None or spec.kind != "mcp":
        raise NotFound("no such MCP endpoint")
    return json_response(resource_metadata(deps.cfg, tool))


@routes.get("/.well-known/oauth-authorization-server")
async def authorization_server(request: web.Request) -> web.Response:
    return json_response(server_metadata(request.app[DEPS].cfg))


# -- the authorization request and the consent ----------------------------------------
@routes.get("/oauth/authorize")
async def authorize(request: web.Request) -> web.Response:
    server = request.app[OAUTH].server
    query = {k: request.query[k] for k in request.query}
    if len(query) != len(request.query):
        return html_response(message_page("Bad request", "a parameter is repeated"), 400)
    try:
        pending = await server.authorize(query)
    except RedirectError as e:
        return _see_other(e.location)
    except OAuthError as e:
        return html_response(message_page("This client cannot be authorized", e.description), 400)
    return _see_other(f"/oauth/consent?{urlencode({'request': pending.request_id})}")


_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")


def _redirect_origin(redirect_uri: str) -> str:
    """The redirect URI's origin as a CSP source, rebuilt from its parsed scheme, host and port
    (never its raw netloc, which could carry `;` and more directives); nothing when it does not
    parse as one: the browser then refuses to follow the form there."""
    parts = urlsplit(redirect_uri)
    try:
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return ""
    if parts.scheme not in ("http", "https"):
        return ""
    if not _HOST.fullmatch(host):
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return ""
    return f" {parts.scheme}://{host}{f':{port}' if port is not None else ''}"


@routes.get("/oauth/consent")
async def consent(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    request_id = request.query.get("request", "")
    pending = await oauth.server.pending(request_id)
    if pending is None:
        return html_response(message_page("Request expired", "This authorization request is unknown, used or "
                                          "expired. Start again from your MCP client."), 400)
    person = await oauth.sessions.current(request)
    if person is None:
        return _see_other(f"/login?{urlencode({'next': f'/oauth/consent?request={request_id}'})}")
    refused = await oauth.server.refusal_for_agent(pending)
    if refused is not None:
        await deps.store.take_grant("authz", pending.request_id)
        return _see_other(refused)
    tools = oauth.server.tools_offered(pending.agent)
    return html_response(consent_page(pending, person, tools, deps.cfg.limits.task_ttl_s),
                         form_targets=_redirect_origin(pending.redirect_uri))


def _consent_of(form: MultiDictProxy[str | bytes | bytearray | web.FileField], max_ttl: int,
                client_name: str) -> Consent:
    def text(name: str, limit: int) -> str:
        value = form.get(name, "")
        return value.strip()[:limit] if isinstance(value, str) else ""

    if text("decision", 10) != "approve":
        return Consent(approve=False)
    labels: dict[str, str] = {}
    for item in text("labels", 1000).split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            labels[key.strip()[:64]] = value.strip()[:256]
    try:
        ttl = int(text("ttl_s", 12) or max_ttl)
        max_calls = int(text("max_calls", 12)) if text("max_calls", 12) else None
    except ValueError as e:
        raise OAuthError("invalid_request", "lifetime and most calls are whole numbers") from e
    if max_calls is not None and max_calls < 1:
        raise OAuthError("invalid_request", "most calls is at least 1")
    tools = tuple(str(t) for t in form.getall("tools", []) if isinstance(t, str))
    return Consent(True, text("purpose", 1000) or f"delegated to {client_name}", tools,
                   max(1, min(ttl, max_ttl)), max_calls, dict(list(labels.items())[:32]))


@routes.post("/oauth/consent")
async def decide(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    person: Person | None = await oauth.sessions.current(request)
    if person is None:
        return html_response(message_page("Signed out", "Sign in again, then start again from your client."), 401)
    form = await request.post()
    csrf = form.get("csrf")
    oauth.sessions.check_post(request, person.csrf, csrf if isinstance(csrf, str) else None)
    request_id = form.get("request")
    pending = await oauth.server.pending(request_id if isinstance(request_id, str) else "")
    if pending is None:
        return html_response(message_page("Request expired", "This authorization request is unknown, used or "
                                          "expired."), 400, )
    try:
        choice = _consent_of(form, deps.cfg.limits.task_ttl_s, pending.client_name)
        location = await oauth.server.decide(pending.request_id, person.sub, choice)
    except OAuthError as e:
        return html_response(message_page("Not delegated", e.description, person), 400)
    return _see_other(location)


# -- the token, registration and revocation endpoints -----------------------------------
@routes.post("/oauth/token")
async def token(request: web.Request) -> web.Response:
    server = request.app[OAUTH].server
    try:
        form = await _form(request)
        if "client_secret" in form or "Authorization" in request.headers:
            raise OAuthError("invalid_client", "clients here are public: no client secret", 401)
        return _oauth_json(await server.token(form))
    except OAuthError as e:
        return oauth_error(e)


@routes.post("/oauth/register")
async def register(request: web.Request) -> web.Response:
    server = request.app[OAUTH].server
    limit = request.app[DEPS].cfg.oauth.registration.max_metadata_bytes
    try:
        try:
            body = await read_body(request, limit)
        except PayloadTooLarge as e:
            raise OAuthError("invalid_client_metadata", f"the client metadata is over {limit} bytes") from e
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise OAuthError("invalid_client_metadata", "the body is a JSON object") from e
        return _oauth_json(await server.clients.register(data, request.remote or "unknown"), 201)
    except OAuthError as e:
        return oauth_error(e)


@routes.post("/oauth/revoke")
async def revoke(request: web.Request) -> web.Response:
    server = request.app[OAUTH].server
    try:
        await server.revoke(await _form(request))
    except OAuthError as e:
        return oauth_error(e)
    return web.Response(status=200, headers={"Cache-Control": "no-store"})
