"""`mode: oauth2` (client credentials, RFC 6749 §4.4) and `mode: token_exchange` (RFC 8693): an
access token from the tool's own authorization server, with the narrowest scopes of the action.

- `per_task: true` (default): one token per task and scope set, reused by that task's calls until
  shortly before it expires, kept with the task in the store (so another instance reuses and
  revokes it), revoked (RFC 7009) when the task ends.
- `per_task: false`: one token per scope set shared by every task until it expires; never revoked.
- Client authentication: `private_key_jwt` (RFC 7523, signed with the guard's key),
  `client_secret_basic` or `client_secret_post` (the secret from any secret source).
- token_exchange: the subject token is a JWT the guard signs naming the agent (`sub`), the task
  (`txn`), the call's `scope` and `requested_by`.
Concurrent calls needing the same token share one token request. Token requests are retried
once (a network error or a 5xx); a tool call never is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote_plus

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.credentials.base import CredentialRequest, Holding, Issued
from guard.credentials.flight import shared
from guard.credentials.holdings import Holdings
from guard.credentials.sources import SecretSource
from guard.errors import CredentialUnavailable
from guard.identity.tokens import GuardKeys, jti
from guard.log import get_logger
from guard.policy.model import OAuthSpec

__all__ = ["OAuthProvider", "token_id"]

log = get_logger("guard.credentials.oauth2")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 (a type name)
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a type name)
ASSERTION_TTL_S = 60
REUSE_MARGIN_S = 30.0  # a token is not used in its last REUSE_MARGIN_S (or tenth of its life)


class _Retryable(Exception):
    """A token or revocation request that may be tried again (network error, 5xx)."""


def token_id(token: str) -> str:
    """What the audit says of a token: 12 hex digits of its SHA-256 (the token stays secret)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


class OAuthProvider:
    def __init__(self, tool: str, mode: str, spec: OAuthSpec, header: str, fmt: str, keys: GuardKeys,
                 http: aiohttp.ClientSession, holdings: Holdings, secret: SecretSource | None,
                 still_active: Callable[[str], Awaitable[bool]]) -> None:
        self.tool = tool
        self.mode = mode
        self.spec = spec
        self.header = header
        self.format = fmt
        self.keys = keys
        self.http = http
        self.holdings = holdings
        self.secret = secret
        self.still_active = still_active
        # task_id ("*" when shared) -> scopes -> (reuse until, the headers)
        self._local: dict[str, dict[str, tuple[float, Issued]]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[Issued]] = {}
        self._timeout = aiohttp.ClientTimeout(total=10)

    # -- issue ------------------------------------------------------------------------------
    async def issue(self, req: CredentialRequest) -> Issued:
        scopes = " ".join(sorted(set(self.spec.scopes_for(req.action.name))))
        key = (req.state.task.task_id if self.spec.per_task else "*", scopes)
        hit = self._local.get(key[0], {}).get(scopes)
        if hit is not None and hit[0] > time.time():
            return hit[1]
        return await shared(self._inflight, key, lambda: self._take(req, scopes, key))

    async def _take(self, req: CredentialRequest, scopes: str, key: tuple[str, str]) -> Issued:
        now = time.time()
        if not self.spec.per_task:
            token, expires_at = await self._request(req, scopes)
            return self._remember(key, token, now, expires_at)
        task = req.state.task
        slot = f"token:{self.tool}:{scopes}"
        found = await self.holdings.held(task.task_id, slot)
        if found is not None and _reuse_until(now, found[0].expires_at, found[0].data) > now:
            return self._remember(key, str(found[0].data["token"]), float(found[0].data["issued_at"]),
                                  found[0].expires_at)
        token, expires_at = await self._request(req, scopes)
        holding = Holding(task.task_id, task.agent, self.tool, "token", expires_at,
                          {"token": token, "issued_at": now, "id_hint": token_id(token), "scope": scopes})
        held, ours = await self.holdings.hold(holding, slot, found[1] if found is not None else None)
        if not ours:  # another instance got one for this task meanwhile: use it, give ours back
            await self._revoke_quietly(token, task.task_id)
            return self._remember(key, str(held.data["token"]), float(held.data["issued_at"]), held.expires_at)
        if found is not None:  # the one it replaces is near its end: give it back now
            await self._revoke_quietly(str(found[0].data["token"]), task.task_id)
        log.info("token_obtained", task_id=task.task_id, call_id=req.call.call_id, tool=self.tool, mode=self.mode,
                 token_id=holding.describe(), scope=scopes, expires_in=round(expires_at - now))
        if not await self.still_active(task.task_id):  # ended meanwhile: it has been revoked
            raise CredentialUnavailable("the task ended", task_id=task.task_id)
        return self._remember(key, token, now, expires_at)

    def _remember(self, key: tuple[str, str], token: str, issued_at: float, expires_at: float) -> Issued:
        issued = Issued({self.header: self.format.replace("{secret}", token)},
                        {"mode": self.mode, "source": self.spec.token_url, "token_id": token_id(token)})
        self._local.setdefault(key[0], {})[key[1]] = (_reuse_until(issued_at, expires_at, {}), issued)
        return issued

    # -- the token request --------------------------------------------------------------------
    async def _request(self, req: CredentialRequest, scopes: str) -> tuple[str, float]:
        form: dict[str, str] = {}
        if self.mode == "token_exchange":
            form.update(grant_type=EXCHANGE_GRANT, subject_token=self._subject_token(req),
                        subject_token_type=JWT_TOKEN_TYPE, requested_token_type=ACCESS_TOKEN_TYPE)
            if self.spec.audience:
                form["audience"] = self.spec.audience
        else:
            form["grant_type"] = "client_credentials"
        if scopes:
            form["scope"] = scopes
        if self.spec.resource:
            form["resource"] = self.spec.resource
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(2), wait=wait_exponential(0.1, max=0.5),
                                               retry=retry_if_exception_type(_Retryable), reraise=True):
                with attempt:
                    answer = await self._post(self.spec.token_url, dict(form))
        except _Retryable as e:
            raise CredentialUnavailable("the tool's authorization server did not answer") from e
        token = answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise CredentialUnavailable("the tool's authorization server issued no access token")
        expires_in = answer.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        return token, time.time() + lifetime

    async def _post(self, url: str, form: dict[str, str]) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        basic = await self._client_auth(form)
        if basic is not None:
            headers["Authorization"] = basic
        try:
            async with self.http.post(url, data=form, timeout=self._timeout, headers=headers) as resp:
                if resp.status >= 500:
                    raise _Retryable(f"{resp.status}")
                if resp.status >= 400:  # the body may echo what we sent: only its error code is logged
                    body = await resp.json(content_type=None) if resp.content_type.endswith("json") else {}
                    log.warning("token_request_refused", tool=self.tool, status=resp.status,
                                error=str(body.get("error", ""))[:64] if isinstance(body, dict) else "")
                    raise CredentialUnavailable("the tool's authorization server refused the request")
                if resp.status == 200 and resp.content_length == 0:
                    return {}
                data = await resp.json(content_type=None)
                return data if isinstance(data, dict) else {}
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _Retryable(type(e).__name__) from e
        except ValueError as e:
            raise CredentialUnavailable("the tool's authorization server answered something else than JSON") from e

    async def _client_auth(self, form: dict[str, str]) -> str | None:
        """Adds the client's authentication to `form`, or returns its Basic Authorization header."""
        method = self.spec.client_auth
        if method == "private_key_jwt":
            now = int(time.time())
            form["client_id"] = self.spec.client_id
            form["client_assertion_type"] = ASSERTION_TYPE
            form["client_assertion"] = self.keys.sign("JWT", {
                "iss": self.spec.client_id, "sub": self.spec.client_id, "aud": self.spec.token_url,
                "iat": now, "exp": now + ASSERTION_TTL_S, "jti": jti()})
            return None
        assert self.secret is not None
        secret = (await self.secret.get()).value
        if method == "client_secret_post":
            form["client_id"] = self.spec.client_id
            form["client_secret"] = secret
            return None
        pair = f"{_form_encode(self.spec.client_id)}:{_form_encode(secret)}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _subject_token(self, req: CredentialRequest) -> str:
        now = int(time.time())
        task = req.state.task
        claims: dict[str, Any] = {"iss": self.keys.issuer, "aud": self.spec.token_url, "sub": req.caller.agent,
                                  "txn": task.task_id, "scope": f"{req.tool.name}.{req.action.name}",
                                  "iat": now, "exp": now + ASSERTION_TTL_S, "jti": jti()}
        if task.requested_by:
            claims["requested_by"] = task.requested_by
        return self.keys.sign("JWT", claims)

    # -- revocation ---------------------------------------------------------------------------
    async def revoke(self, holding: Holding) -> None:
        self.forget(holding.task_id)
        if self.spec.revocation_url is None:
            return
        try:
            await self._post(self.spec.revocation_url,
                             {"token": str(holding.data["token"]), "token_type_hint": "access_token"})
        except _Retryable as e:
            raise CredentialUnavailable("the tool's authorization server did not answer the revocation") from e

    async def _revoke_quietly(self, token: str, task_id: str) -> None:
        if self.spec.revocation_url is None:
            return
        with contextlib.suppress(CredentialUnavailable, _Retryable):
            await self._post(self.spec.revocation_url, {"token": token, "token_type_hint": "access_token"})
            return
        log.warning("token_revoke_failed", task_id=task_id, tool=self.tool, token_id=token_id(token))

    def forget(self, task_id: str) -> None:
        self._local.pop(task_id, None)

    def prune(self, now: float) -> None:
        for owner, tokens in list(self._local.items()):
            for scopes in [s for s, (until, _) in tokens.items() if until <= now]:
                del tokens[scopes]
            if not tokens:
                del self._local[owner]

    async def close(self) -> None:
        return None


def _reuse_until(issued_at: float, expires_at: float, data: dict[str, Any]) -> float:
    issued_at = float(data.get("issued_at", issued_at))
    return expires_at - min(REUSE_MARGIN_S, (expires_at - issued_at) / 10)


def _form_encode(value: str) -> str:
    """RFC 6749 §2.3.1: client_id and secret are form-encoded before Basic authentication."""
    return quote_plus(value)
