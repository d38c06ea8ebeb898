"""People's sign-in (`/login`, `/login/callback`, `POST /logout`) through the organisation's IdP
(`sso`), or, in development mode with no `sso` and no issuer configured (Config.dev_sign_in),
a clearly marked development sign-in (404 otherwise); and
"my delegations": the tasks a person delegated, each of which they can end."""

from __future__ import annotations

import hmac
import secrets
import time
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from guard.errors import Forbidden, GuardError, NotFound, Unauthenticated
from guard.oauth.pages import delegations_page, dev_login_page, message_page
from guard.oauth.sessions import LOGIN_COOKIE, safe_next
from guard.routes.common import DEPS, json_response
from guard.routes.oauth import OAUTH, html_response
from guard.routes.tasks import end_task, task_view

__all__ = ["routes"]

routes = web.RouteTableDef()
LOGIN_TTL_S = 600
_ROLES = frozenset({"guard:approver", "guard:auditor", "guard:admin"})


def _bound(request: web.Request, state: str) -> bool:
    """The sign-in was started by this browser (its login cookie carries the state)."""
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    return bool(state) and bool(cookie) and hmac.compare_digest(cookie.encode(), state.encode())


@routes.get("/login")
async def login(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    next_path = safe_next(request.query.get("next"))
    if oauth.sso is not None:
        try:
            url, state = await oauth.sso.begin(next_path)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            return html_response(message_page("Sign-in unavailable", "The identity provider does not answer; "
                                              "try again later."), 502)
        resp = web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})
    elif deps.cfg.dev_sign_in:
        state = secrets.token_urlsafe(32)
        await deps.store.put_grant("login", state, {"next": next_path, "development": True}, LOGIN_TTL_S)
        resp = html_response(dev_login_page(state, next_path))
    else:
        raise NotFound("no sign-in is configured (sso)")
    oauth.sessions.set_cookie(resp, LOGIN_COOKIE, state, LOGIN_TTL_S)
    return resp


@routes.get("/login/callback")
async def callback(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    if oauth.sso is None:
        raise NotFound("no sign-in is configured (sso)")
    state = request.query.get("state", "")
    if "error" in request.query:
        return html_response(message_page("Not signed in", f"The identity provider answered: "
                                          f"{request.query.get('error', '')}"), 401)
    if request.query.get("iss", oauth.sso.sso.issuer) != oauth.sso.sso.issuer:  # RFC 9207: not our IdP's answer
        return html_response(message_page("Not signed in", "The answer came from another identity provider."), 400)
    if not _bound(request, state):
        return html_response(message_page("Not signed in", "This sign-in was not started in this browser."), 400)
    try:
        (person, name), roles, next_path = await oauth.sso.finish(state, request.query.get("code", ""))
    except GuardError as e:
        return html_response(message_page("Not signed in", e.detail), 401)
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return html_response(message_page("Sign-in unavailable", "The identity provider does not answer; "
                                          "try again later."), 502)
    resp = web.Response(status=303, headers={"Location": safe_next(next_path), "Cache-Control": "no-store"})
    await oauth.sessions.start(resp, person, roles, "sso", name)
    resp.del_cookie(LOGIN_COOKIE, path="/")
    return resp


@routes.post("/login/dev")
async def dev_login(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    if not deps.cfg.dev_sign_in:
        raise NotFound("the development sign-in is off")
    form = await request.post()
    state, user = form.get("state"), form.get("user")
    if not isinstance(state, str) or not _bound(request, state):
        raise Forbidden("this sign-in was not started in this browser")
    login = await deps.store.take_grant("login", state)
    if login is None or not login.get("development"):
        raise Forbidden("this sign-in is unknown, used or expired")
    if not isinstance(user, str) or not user.strip() or len(user) > 320:
        return html_response(message_page("Not signed in", "A name is required."), 400)
    roles = frozenset(r for r in form.getall("roles", []) if isinstance(r, str) and r in _ROLES)
    resp = web.Response(status=303, headers={"Location": safe_next(str(login["next"])),
                                             "Cache-Control": "no-store"})
    await oauth.sessions.start(resp, user.strip(), roles, "development")
    resp.del_cookie(LOGIN_COOKIE, path="/")
    return resp


@routes.get("/login/session")
async def session(request: web.Request) -> web.Response:
    """Who is signed in, for the review page: the person, their roles and the CSRF token its
    API requests carry. Same-origin only (no CORS), never cached."""
    person = await request.app[OAUTH].sessions.current(request)
    if person is None:
        raise Unauthenticated("not signed in")
    return json_response({"sub": person.sub, "name": person.name, "roles": sorted(person.roles), "via": person.via,
                          "csrf": person.csrf}, headers={"Cache-Control": "no-store"})


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    person = await oauth.sessions.current(request)
    form = await request.post()
    if person is not None:
        csrf = form.get("csrf")
        oauth.sessions.check_post(request, person.csrf, csrf if isinstance(csrf, str) else None)
    resp = html_response(message_page("Signed out", "You are signed out."))
    await oauth.sessions.end(request, resp)
    return resp


@routes.get("/delegations")
async def delegations(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    person = await oauth.sessions.current(request)
    if person is None:
        return web.Response(status=303, headers={"Location": f"/login?{urlencode({'next': '/delegations'})}"})
    now = time.time()
    rows = [task_view(s, [], now) for s in await deps.store.list_tasks() if s.task.requested_by == person.sub]
    rows.sort(key=lambda r: r["created_at"], reverse=True)
    return html_response(delegations_page(person, rows))


@routes.post("/delegations/{task_id}/end")
async def end_delegation(request: web.Request) -> web.Response:
    oauth = request.app[OAUTH]
    deps = request.app[DEPS]
    person = await oauth.sessions.current(request)
    if person is None:
        raise Forbidden("sign in first")
    form = await request.post()
    csrf = form.get("csrf")
    oauth.sessions.check_post(request, person.csrf, csrf if isinstance(csrf, str) else None)
    state = await deps.store.get_task(request.match_info["task_id"])
    if state is None or state.task.requested_by != person.sub:
        raise NotFound("no such delegation of yours")
    await end_task(deps, state.task.task_id, "revoked", person.sub, "ended by the person who delegated it")
    return web.Response(status=303, headers={"Location": "/delegations", "Cache-Control": "no-store"})
