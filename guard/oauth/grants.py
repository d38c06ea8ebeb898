"""The grant: authorization code with PKCE (S256 only) and `resource` (RFC 8707), the consent that
creates the task, and the token endpoint's answers.

- `/oauth/authorize` checks the client and its exact redirect URI first (a bad one is shown to the
  person, never redirected to), then everything else (errors go back to the client with `state`
  and `iss`, RFC 9207). The request waits in the store for sign-in and consent.
- Consent gives a code: single use, `oauth.code_ttl_s`, bound to the client, the redirect URI,
  the PKCE challenge and the resource, carrying what the person decided. Redeeming it creates the
  task (agent `client:<client_id>`, requested_by the person), so a code never redeemed leaves
  nothing active. A code presented twice revokes its task (RFC 6749 §4.1.2).
- The access token is a task token whose `aud` is the resource alone (RFC 8707): it works at that
  MCP endpoint and nowhere else. The refresh token is bound to the task, rotates on every use,
  and a reused one revokes the task.
- Revoking either token (RFC 7009) completes the task; only the client it was issued to may.
Codes and refresh tokens are kept as SHA-256 digests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from guard.audit.log import AuditLog
from guard.config import Config
from guard.domain import Task
from guard.errors import Unauthenticated
from guard.identity.tokens import TASK_TYP, GuardKeys, jti, new_id
from guard.log import get_logger
from guard.oauth.clients import ClientRegistry
from guard.oauth.errors import OAuthError
from guard.oauth.metadata import as_issuer, tool_of_resource
from guard.policy.reload import PolicyHolder
from guard.stores import Store

__all__ = ["AuthorizationServer", "Consent", "EndTask", "PendingRequest", "RedirectError", "digest"]

log = get_logger("guard.oauth")
EndTask = Callable[[str, str, str, str | None], Awaitable[object]]  # (task_id, status, actor, reason)
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class RedirectError(Exception):
    """An authorization error that goes back to the client's (checked) redirect URI."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """An authorization request waiting for the person's consent."""

    request_id: str
    client_id: str
    client_name: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str
    tool: str

    @property
    def agent(self) -> str:
        return f"client:{self.client_id}"

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingRequest:
        return cls(**{k: d[k] for k in cls.__slots__})


@dataclass(frozen=True, slots=True)
class Consent:
    """What the person decided on the consent page."""

    approve: bool
    purpose: str = ""
    tools: tuple[str, ...] = ()
    ttl_s: int = 3600
    max_calls: int | None = None
    labels: dict[str, str] = field(default_factory=dict)


class AuthorizationServer:
    def __init__(self, cfg: Config, store: Store, keys: GuardKeys, audit: AuditLog, policies: PolicyHolder,
                 end_task: EndTask) -> None:
        self.cfg = cfg
        self.store = store
        self.keys = keys
        self.audit = audit
        self.policies = policies
        self.end_task = end_task
        self.clients = ClientRegistry(cfg, store)
        self.issuer = as_issuer(cfg)

    # -- the authorization request ---------------------------------------------
    def redirect(self, redirect_uri: str, state: str | None, **params: str) -> str:
        query = {**params, **({"state": state} if state is not None else {}), "iss": self.issuer}
        return f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(query)}"

    async def authorize(self, query: dict[str, str]) -> PendingRequest:
        """Check an authorization request; OAuthError when the client or its redirect URI is
        wrong (shown to the person), RedirectError for everything else."""
        client = await self.clients.resolve(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri")
        if redirect_uri is None and len(client.redirect_uris) == 1:
            redirect_uri = client.redirect_uris[0]
        if redirect_uri is None or redirect_uri not in client.redirect_uris:  # exact match, no patterns
            raise OAuthError("invalid_request", "the redirect_uri is not one this client registered")
        state = query.get("state")

        def back(error: str, description: str) -> RedirectError:
            return RedirectError(self.redirect(redirect_uri, state, error=error, error_description=description))

        if query.get("response_type") != "code":
            raise back("unsupported_response_type", "only response_type=code (no implicit grant)")
        if query.get("code_challenge_method") != "S256" or not _CHALLENGE.match(query.get("code_challenge", "")):
            raise back("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")
        resource = query.get("resource", "")
        tool = tool_of_resource(self.cfg, resource)
        spec = self.policies.current.tools.get(tool) if tool is not None else None
        if tool is None or spec is None or spec.kind != "mcp":  # an http tool is no MCP endpoint
            raise back("invalid_target", "resource must be the URL of one of guard's MCP endpoints")
        pending = PendingRequest(new_id("authz"), client.client_id, client.client_name, redirect_uri, state,
                                 query["code_challenge"], resource, tool)
        await self.store.put_grant("authz", pending.request_id, pending.to_json(), self.cfg.oauth.consent_ttl_s)
        return pending

    async def pending(self, request_id: str) -> PendingRequest | None:
        data = await self.store.get_grant("authz", request_id) if request_id else None
        return PendingRequest.from_json(data) if data is not None else None

    def tools_offered(self, agent: str) -> list[str]:
        """What a person may grant a client: the policy's MCP tools (the resources an access token
        can name), capped by the client's inventory entry."""
        policies = self.policies.current
        entry = policies.agent_entry(agent)
        tools = sorted(name for name, spec in policies.tools.items() if spec.kind == "mcp")
        return [t for t in tools if entry is None or entry.tools is None or t in entry.tools]

    async def refusal_for_agent(self, pending: PendingRequest) -> str | None:
        """Where to send the person when this client may not get a task at all (inventory)."""
        policies = self.policies.current
        if policies.has_inventory and policies.agent_entry(pending.agent) is None:
            await self.store.record_agent_event(pending.agent, "unregistered_attempt", time.time())
            log.info("consent_refused", agent=pending.agent, reason="unregistered_agent")
            return self.redirect(pending.redirect_uri, pending.state, error="access_denied",
                                 error_description=f"unregistered_agent: {pending.agent} is not in the inventory")
        if await self.store.is_suspended(pending.agent):
            return self.redirect(pending.redirect_uri, pending.state, error="access_denied",
                                 error_description=f"agent_suspended: {pending.agent} is suspended")
        return None

    # -- consent -----------------------------------------------------------------
    async def decide(self, request_id: str, person: str, consent: Consent) -> str:
        """The person's answer: the redirect back to the client (a code, or access_denied)."""
        data = await self.store.take_grant("authz", request_id)
        if data is None:
            raise OAuthError("invalid_request", "this authorization request is unknown, used or expired")
        pending = PendingRequest.from_json(data)
        refused = await self.refusal_for_agent(pending)
        if refused is not None:
            return refused
        if not consent.approve:
            log.info("consent_refused", agent=pending.agent, person=person, reason="access_denied")
            return self.redirect(pending.redirect_uri, pending.state, error="access_denied",
                                 error_description="the person refused the delegation")
        offered = set(self.tools_offered(pending.agent))
        tools = [t for t in consent.tools if t in offered]
        code = secrets.token_urlsafe(32)
        await self.store.put_grant("code", digest(code), {  # the task is created when the code is redeemed
            "client_id": pending.client_id, "redirect_uri": pending.redirect_uri,
            "code_challenge": pending.code_challenge, "resource": pending.resource, "person": person,
            "purpose": consent.purpose, "tools": tools, "ttl_s": consent.ttl_s, "max_calls": consent.max_calls,
            "labels": consent.labels,
        }, self.cfg.oauth.code_ttl_s)
        log.info("consent_approved", agent=pending.agent, person=person)
        return self.redirect(pending.redirect_uri, pending.state, code=code)

    async def _create_task(self, code: dict[str, Any]) -> Task:
        """The task a redeemed code stands for: the client is its agent, the person who consented
        requested it, with the purpose, tools, lifetime, budget and labels they chose."""
        client_id, person = str(code["client_id"]), str(code["person"])
        agent = f"client:{client_id}"
        if await self.store.is_suspended(agent):
            raise OAuthError("invalid_grant", f"agent_suspended: {agent} is suspended")
        now = time.time()
        ttl = max(1, min(int(code["ttl_s"]), self.cfg.limits.task_ttl_s))
        max_calls = code.get("max_calls")
        task = Task(task_id=new_id("task"), agent=agent, purpose=str(code["purpose"]), requested_by=person,
                    status="active", created_at=now, expires_at=now + ttl,
                    max_calls=int(max_calls) if max_calls is not None else None,
                    tools=tuple(str(t) for t in code["tools"]),
                    labels={**{str(k): str(v) for k, v in dict(code["labels"]).items()}, "oauth_client": client_id},
                    idle_s=float(self.cfg.limits.task_idle_s))
        await self.store.create_task(task)
        await self.audit.append(task.task_id, "task_created", task.agent, actor=person,
                                detail=f"delegated by {person} to client {client_id} "
                                       f"through OAuth consent; ttl_s={ttl}")
        await self.store.record_agent_event(task.agent, "task_created", now)
        log.info("delegation_redeemed", task_id=task.task_id, agent=task.agent, person=person)
        return task

    # -- the token endpoint ------------------------------------------------------
    async def token(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return await self._code_grant(form)
        if grant == "refresh_token":
            return await self._refresh_grant(form)
        raise OAuthError("unsupported_grant_type", "only authorization_code and refresh_token")

    async def _code_grant(self, form: dict[str, str]) -> dict[str, Any]:
        code = form.get("code", "")
        key = digest(code)
        data = await self.store.get_grant("code", key) if code else None
        if data is None:
            used = await self.store.get_grant("code_used", key) if code else None
            if used is not None:  # a code presented twice: whoever holds its tokens loses them
                await self.end_task(str(used["task_id"]), "revoked", "guard", "authorization code used twice")
                log.warning("code_replayed", task_id=used["task_id"])
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if form.get("client_id") != data["client_id"]:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if form.get("redirect_uri") != data["redirect_uri"]:
            raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request's")
        if "resource" in form and form["resource"] != data["resource"]:
            raise OAuthError("invalid_target", "resource differs from the authorization request's")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.match(verifier) or not hmac.compare_digest(_s256(verifier), str(data["code_challenge"])):
            log.warning("pkce_failed", client_id=data["client_id"])  # the code stays for its rightful client
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
        if await self.store.take_grant("code", key) is None:  # someone else won the race with it
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        task = await self._create_task(data)
        await self.store.put_grant("code_used", key, {"task_id": task.task_id}, self.cfg.oauth.consent_ttl_s)
        return await self._issue(task.task_id, str(data["client_id"]), str(data["resource"]), None)

    async def _refresh_grant(self, form: dict[str, str]) -> dict[str, Any]:
        old = form.get("refresh_token", "")
        current = await self.store.get_grant("refresh", digest(old)) if old else None
        if current is None:
            raise OAuthError("invalid_grant", "the refresh token is unknown or expired")
        if form.get("client_id") != current["client_id"]:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if "resource" in form and form["resource"] != current["resource"]:
            raise OAuthError("invalid_target", "resource differs from the one this grant is for")
        new = secrets.token_urlsafe(32)
        outcome, data = await self.store.rotate_refresh(digest(old), digest(new), self.cfg.oauth.refresh_ttl_s)
        if outcome == "reused" and data is not None:
            await self.end_task(str(data["task_id"]), "revoked", "guard", "refresh token reused")
            log.warning("refresh_replayed", task_id=data["task_id"])
            raise OAuthError("invalid_grant", "the refresh token was already used: the delegation is revoked")
        if outcome != "rotated" or data is None:
            raise OAuthError("invalid_grant", "the refresh token is unknown or expired")
        return await self._issue(str(data["task_id"]), str(data["client_id"]), str(data["resource"]), new)

    async def _issue(self, task_id: str, client_id: str, resource: str, refresh: str | None) -> dict[str, Any]:
        state = await self.store.get_task(task_id)
        now = time.time()
        if state is None or state.effective_status(now) != "active":
            raise OAuthError("invalid_grant", "the delegation has ended")
        task = state.task
        exp = int(min(task.expires_at, now + self.cfg.oauth.access_ttl_s))
        token = self.keys.sign(TASK_TYP, {  # aud: the resource alone (refused at /tools/*, /v1/*, other MCP endpoints)
            "iss": self.keys.issuer, "aud": resource, "sub": task.agent, "txn": task.task_id,
            "client_id": client_id, "iat": int(now), "exp": exp, "jti": jti()})
        if refresh is None:
            refresh = secrets.token_urlsafe(32)
            ttl = min(self.cfg.oauth.refresh_ttl_s, task.expires_at - now)
            await self.store.put_grant("refresh", digest(refresh), {
                "task_id": task.task_id, "client_id": client_id, "resource": resource}, max(1.0, ttl))
        log.info("token_issued", task_id=task.task_id, agent=task.agent)
        return {"access_token": token, "token_type": "Bearer", "expires_in": max(0, exp - int(now)),
                "refresh_token": refresh}

    # -- revocation (RFC 7009) ------------------------------------------------------
    async def revoke(self, form: dict[str, str]) -> None:
        """Revoking the access or the refresh token completes the task, when the requesting client
        (public: its `client_id`) is the one the token was issued to (RFC 7009 §2.1). Unknown
        tokens: nothing."""
        token = form.get("token", "")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        client_id = form.get("client_id", "")
        if not client_id:
            raise OAuthError("invalid_client", "client_id is required: a client revokes only its own tokens", 401)
        data = await self.store.get_grant("refresh", digest(token))
        owner = str(data["client_id"]) if data is not None else None
        task_id = str(data["task_id"]) if data is not None else None
        if data is None:
            try:
                claims = self.keys.verify(token, TASK_TYP, audience=None)
            except Unauthenticated:
                return
            if claims.get("aud") == "guard" or not isinstance(claims.get("client_id"), str):
                return  # an agent's own task token: not this authorization server's to revoke
            owner, task_id = str(claims["client_id"]), str(claims["txn"])
        if owner is None or not hmac.compare_digest(owner.encode(), client_id.encode()):
            log.warning("revoke_refused", task_id=task_id, client_id=client_id, reason="issued to another client")
            raise OAuthError("unauthorized_client", "this token was issued to another client", 400)
        if task_id is not None:
            await self.end_task(task_id, "completed", f"client:{owner}", "token revoked by the client")
