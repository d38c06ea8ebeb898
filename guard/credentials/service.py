"""The credentials service: one provider per tool, the credential of each forwarded call, and the
return of everything a task held when it ends.

    credentials = Credentials(cfg, keys, store, audit, http, metrics)
    issued = await credentials.issue(request)      # CredentialUnavailable: fail closed
    await credentials.release_task(task_id)        # at task end, on whichever instance ends it

Task end: `build_app` subscribes `release_soon` to `deps.task_ends` (guard.tasks.ends: every end,
announced on every instance; the claim in the store lets one instance revoke). `sweep` is the
fallback: it finds tasks holding credentials that expired (idle included: it ends them through
`TaskEnds.expired`, so their streams close too) or whose end was announced while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidTag
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from guard.audit.log import AuditLog
from guard.config import Config
from guard.credentials.base import CredentialRequest, Holding, Issued, Provider
from guard.credentials.holdings import Holdings
from guard.credentials.hygiene import secret_view
from guard.credentials.jwt import JwtProvider
from guard.credentials.lease import LeaseProvider
from guard.credentials.none import NoneProvider
from guard.credentials.oauth2 import OAuthProvider
from guard.credentials.sources import secret_source
from guard.credentials.static import StaticProvider
from guard.credentials.vault import Vault
from guard.domain import TaskState
from guard.errors import CredentialUnavailable, StoreUnavailable
from guard.identity.tokens import GuardKeys
from guard.log import get_logger
from guard.metrics import Metrics
from guard.policy.model import ToolSpec
from guard.stores.base import Store

__all__ = ["SWEEP_S", "Credentials"]

log = get_logger("guard.credentials")
SWEEP_S = 0.5  # how often tasks holding credentials are checked for expiry
SWEEP_BATCH = 64  # tasks read from the store at once by a sweep
Expire = Callable[[TaskState, float], Awaitable[TaskState]]
Tools = Callable[[], Mapping[str, ToolSpec]]  # the tools of the policy set in force


class Credentials:
    def __init__(self, cfg: Config, keys: GuardKeys, store: Store, audit: AuditLog, http: aiohttp.ClientSession,
                 metrics: Metrics, expire: Expire, tools: Tools, base: Path | None = None) -> None:
        self.cfg = cfg
        self.keys = keys
        self.store = store
        self.audit = audit
        self.http = http
        self.metrics = metrics
        self.expire = expire
        self.tools = tools
        self.vault = Vault(cfg.secrets.vault, http, keys, base) if cfg.secrets.vault is not None else None
        self.holdings = Holdings(store, keys)
        self._providers: dict[str, tuple[ToolSpec, Provider]] = {}
        self._releases: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    # -- providers --------------------------------------------------------------------------
    def provider(self, tool: ToolSpec) -> Provider:
        """The tool's provider, built once per tool spec (a policy reload builds new ones)."""
        held = self._providers.get(tool.name)
        if held is not None and held[0] is tool:
            return held[1]
        provider = self._build(tool)
        if held is not None and held[0].credential != tool.credential:
            log.info("credential_provider_rebuilt", tool=tool.name, mode=tool.credential.mode)
        self._providers[tool.name] = (tool, provider)
        return provider

    def _build(self, tool: ToolSpec) -> Provider:
        spec = tool.credential
        if spec.mode == "jwt":
            return JwtProvider(self.keys, spec.header)
        if spec.mode == "static":
            assert spec.secret is not None
            return StaticProvider(secret_source(spec.secret, self.cfg.environ, self.vault), spec.header, spec.format,
                                  spec, self.cfg.credentials_hygiene)
        if spec.mode == "vault_lease":
            assert spec.lease is not None
            return LeaseProvider(tool.name, spec.lease, self.vault, self.holdings, self._still_active)
        if spec.mode in ("oauth2", "token_exchange"):
            assert spec.oauth is not None
            secret = spec.oauth.client_secret
            source = secret_source(secret, self.cfg.environ, self.vault) if secret is not None else None
            return OAuthProvider(tool.name, spec.mode, spec.oauth, spec.header, spec.format, self.keys, self.http,
                                 self.holdings, source, self._still_active)
        return NoneProvider()

    async def issue(self, req: CredentialRequest) -> Issued:
        """The call's credential; a provider that cannot answer is counted and fails closed."""
        provider = self.provider(req.tool)
        try:
            issued = await provider.issue(req)
        except CredentialUnavailable as err:
            self.metrics.credential_errors.labels(req.tool.name, req.tool.credential.mode).inc()
            ids = {"task_id": req.state.task.task_id, "call_id": req.call.call_id}
            cause = err.__cause__
            log.warning("credential_unavailable", **ids, tool=req.tool.name, mode=req.tool.credential.mode,
                        reason=str(err), cause=str(cause)[:300] if cause is not None else None)
            if type(err) is not CredentialUnavailable:  # credential_stale, _exception_expired: the agent's to know
                err.extra.update(ids)
                raise
            # the provider's detail (a secret's fields, the secrets manager's address) stays in the log
            raise CredentialUnavailable(f"no credential could be issued for tool {req.tool.name}; "
                                        "the guard's log says why", **{**err.extra, **ids}) from None
        if issued.audit is not None and "stale" in issued.audit:  # credentials_hygiene, on_stale: warn
            await self._stale(req, issued.audit)
        return issued

    async def _stale(self, req: CredentialRequest, audit: dict[str, Any]) -> None:
        task = req.state.task
        log.warning("credential_stale", tool=req.tool.name, age_s=audit.get("age_s"))
        await self.audit.append(task.task_id, "credential_stale", task.agent, call_id=req.call.call_id,
                                tool=req.tool.name, detail={"source": audit.get("source"), "age_s": audit.get("age_s")})

    async def secret_report(self, tools: Mapping[str, ToolSpec]) -> dict[str, dict[str, Any]]:
        """Each static secret's source, age and exception (the inventory's view; never a value)."""
        out: dict[str, dict[str, Any]] = {}
        for name, tool in sorted(tools.items()):
            if tool.credential.mode != "static" or tool.credential.secret is None:
                continue
            provider = self.provider(tool)
            assert isinstance(provider, StaticProvider)
            try:
                secret, error = await provider.source.get(), None
            except CredentialUnavailable as e:
                secret, error = None, str(e)
            out[name] = secret_view(secret, tool.credential, self.cfg.credentials_hygiene, error=error)
        return out

    # -- task end ---------------------------------------------------------------------------
    async def _still_active(self, task_id: str) -> bool:
        """After taking a holding: is its task still active? If not, give back what it holds."""
        state = await self.store.get_task(task_id)
        if state is not None and state.effective_status(time.time()) == "active":
            return True
        await self.release_task(task_id)
        return False

    def release_soon(self, task_id: str) -> None:
        """release_task in the background (a task-end answer does not wait for revocations)."""
        job = asyncio.ensure_future(self.release_task(task_id))
        self._releases.add(job)
        job.add_done_callback(self._releases.discard)

    async def release_task(self, task_id: str) -> None:
        """Claim (atomically, from the store: one instance only) and revoke everything held for
        the task. Each revocation is retried with backoff; one that never succeeds is audited as
        `credential_revoke_failed`."""
        for provider in [p for _, p in self._providers.values()]:
            provider.forget(task_id)
        try:
            sealed = await self.store.claim_credentials(task_id)
        except StoreUnavailable:
            log.warning("credential_release_deferred", task_id=task_id, reason="store_unavailable")
            return  # still in the store: the sweep tries again
        holdings = []
        for slot, value in sealed.items():
            try:
                holdings.append(self.holdings.unseal(task_id, value))
            except (InvalidTag, ValueError, KeyError):
                log.error("credential_unreadable", task_id=task_id, slot=slot.split(":", 1)[0],
                          detail="sealed with another key: it cannot be revoked from here")
        await asyncio.gather(*(self._revoke(h) for h in holdings))

    async def _revoke(self, holding: Holding) -> None:
        """Revoke through the tool's provider (built here if this instance never served the tool)."""
        tool = self.tools().get(holding.tool)
        what = {"kind": holding.kind, "tool": holding.tool,
                ("lease" if holding.kind == "lease" else "token_id"): holding.describe()}
        try:
            if tool is None:
                raise CredentialUnavailable(f"no tool {holding.tool} in the policies any more")
            provider = self.provider(tool)
            async for attempt in AsyncRetrying(stop=stop_after_attempt(5), wait=wait_exponential(0.2, max=2),
                                               reraise=True):
                with attempt:
                    await provider.revoke(holding)
        except Exception as e:  # every failure is audited, never dropped
            log.error("credential_revoke_failed", task_id=holding.task_id, error=type(e).__name__, **what)
            with contextlib.suppress(Exception):
                await self.audit.append(holding.task_id, "credential_revoke_failed", holding.agent,
                                        tool=holding.tool, detail=type(e).__name__, credential=what)
            return
        log.info("credential_revoked", task_id=holding.task_id, **what)
        with contextlib.suppress(Exception):
            await self.audit.append(holding.task_id, "credential_revoked", holding.agent, tool=holding.tool,
                                    credential=what)

    async def sweep(self) -> None:
        """One pass: release the holdings of tasks that ended or expired (idle included)."""
        now = time.time()
        for provider in [p for _, p in self._providers.values()]:
            provider.prune(now)
        task_ids = await self.store.credential_tasks()
        for i in range(0, len(task_ids), SWEEP_BATCH):
            await asyncio.gather(*(self._sweep_one(t, now) for t in task_ids[i:i + SWEEP_BATCH]))

    async def _sweep_one(self, task_id: str, now: float) -> None:
        state = await self.store.get_task(task_id)
        if state is not None and state.task.status == "active":
            state = await self.expire(state, now)
        if state is None or state.task.status != "active":
            await self.release_task(task_id)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self.sweep()
            except StoreUnavailable:
                pass
            except Exception:
                log.exception("credential_sweep_failed")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._releases:
            await asyncio.wait(set(self._releases), timeout=10)
        for _, provider in self._providers.values():
            await provider.close()
        if self.vault is not None:
            await self.vault.close()
