"""The HTML of the sign-in, consent and "my delegations" pages: server-rendered, no script,
every value escaped (a client's name or a purpose is text, never markup)."""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import urlsplit

from guard.oauth.grants import PendingRequest
from guard.oauth.sessions import Person

__all__ = ["consent_page", "delegations_page", "dev_login_page", "message_page"]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _page(title: str, body: str, person: Person | None = None) -> str:
    who = ""
    if person is not None:
        who = (f'<span id="who">Signed in as <b class="person">{_e(person.name)}</b>'
               f'{" (development sign-in)" if person.via == "development" else ""}</span>'
               f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" '
               f'value="{_e(person.csrf)}"><button type="submit" id="logout">Sign out</button></form>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer"><title>guard · {_e(title)}</title>'
            f'<link rel="stylesheet" href="/ui/style.css"></head><body><header><h1>guard</h1>'
            f'<nav><a href="/delegations">My delegations</a><a href="/ui">Review</a></nav>{who}</header>'
            f'<main>{body}</main></body></html>')


def message_page(title: str, text: str, person: Person | None = None) -> str:
    return _page(title, f'<div class="card"><h2>{_e(title)}</h2><p id="message">{_e(text)}</p></div>', person)


def dev_login_page(state: str, next_path: str) -> str:
    roles = "".join(f'<label><input type="checkbox" name="roles" value="{r}"> {r}</label> '
                    for r in ("guard:approver", "guard:auditor", "guard:admin"))
    body = (f'<div class="card"><h2>Development sign-in</h2>'
            f'<p id="dev-warning" class="badge revoked">DEVELOPMENT ONLY: no identity provider is configured '
            f'(sso), so anyone can sign in here as anyone. Configure sso before real use.</p>'
            f'<form method="post" action="/login/dev"><input type="hidden" name="state" value="{_e(state)}">'
            f'<input type="hidden" name="next" value="{_e(next_path)}">'
            f'<p><label>Your name or e-mail <input name="user" id="user" required maxlength="320"></label></p>'
            f'<p>Roles for the review page: {roles}</p>'
            f'<button type="submit" id="sign-in">Sign in</button></form></div>')
    return _page("development sign-in", body)


def consent_page(pending: PendingRequest, person: Person, tools: list[str], max_ttl_s: int) -> str:
    host = urlsplit(pending.redirect_uri).netloc
    boxes = "".join(
        f'<label><input type="checkbox" name="tools" value="{_e(t)}"{" checked" if t == pending.tool else ""}> '
        f'<span class="mono">{_e(t)}</span></label><br>' for t in tools)
    body = (
        f'<div class="card"><h2>Delegate to an MCP client</h2>'
        f'<dl class="facts"><dt>Client</dt><dd id="client-name">{_e(pending.client_name)}</dd>'
        f'<dt>Client ID</dt><dd class="mono" id="client-id">{_e(pending.client_id)}</dd>'
        f'<dt>Sends you back to</dt><dd class="mono" id="redirect-host">{_e(host)}</dd>'
        f'<dt>Asks for</dt><dd class="mono" id="resource">{_e(pending.resource)}</dd></dl>'
        f'<p class="hint">Approving lets the client start a task: it acts for you, within these limits, until the '
        f'task ends. You can end it at any time under "My delegations".</p>'
        f'<form method="post" action="/oauth/consent" id="consent">'
        f'<input type="hidden" name="request" value="{_e(pending.request_id)}">'
        f'<input type="hidden" name="csrf" value="{_e(person.csrf)}">'
        f'<p><label>Purpose <input name="purpose" id="purpose" maxlength="1000" size="60"></label></p>'
        f'<p>Tools:<br>{boxes}</p>'
        f'<p><label>Lifetime (seconds, at most {max_ttl_s}) <input name="ttl_s" id="ttl_s" type="number" min="1" '
        f'max="{max_ttl_s}" value="{max_ttl_s}"></label></p>'
        f'<p><label>Most calls (empty: no limit) <input name="max_calls" id="max_calls" type="number" min="1">'
        f'</label></p>'
        f'<p><label>Labels (key=value, comma separated) <input name="labels" id="labels" maxlength="1000">'
        f'</label></p>'
        f'<button type="submit" name="decision" value="approve" id="approve">Approve</button> '
        f'<button type="submit" name="decision" value="refuse" id="refuse">Refuse</button></form></div>')
    return _page("consent", body, person)


def delegations_page(person: Person, rows: list[dict[str, Any]]) -> str:
    now = time.time()
    lines = []
    for r in rows:
        end = ""
        if r["status"] == "active":
            end = (f'<form method="post" action="/delegations/{_e(r["task_id"])}/end">'
                   f'<input type="hidden" name="csrf" value="{_e(person.csrf)}">'
                   f'<button type="submit" class="end">End</button></form>')
        left = f'{max(0, int(r["expires_at"] - now))} s left' if r["status"] == "active" else ""
        lines.append(
            f'<tr class="delegation" data-task-id="{_e(r["task_id"])}"><td class="mono">{_e(r["task_id"])}</td>'
            f'<td class="agent mono">{_e(r["agent"])}</td><td class="purpose">{_e(r["purpose"])}</td>'
            f'<td class="status"><span class="badge {_e(r["status"])}">{_e(r["status"])}</span> {left}</td>'
            f'<td class="calls">{_e(r["calls"])}{"/" + _e(r["max_calls"]) if r["max_calls"] else ""}</td>'
            f'<td>{end}</td></tr>')
    table = ('<table><thead><tr><th>Task</th><th>Client</th><th>Purpose</th><th>Status</th><th>Calls</th>'
             f'<th></th></tr></thead><tbody>{"".join(lines)}</tbody></table>' if lines
             else '<p class="hint" id="none">You have not delegated anything yet.</p>')
    return _page("my delegations", f'<h2>My delegations</h2>{table}', person)
