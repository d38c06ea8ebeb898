"""build_app(cfg) -> web.Application: the middleware, the routes, one cleanup_ctx per resource."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from guard.approvals.service import Approvals
from guard.audit.log import AuditLog
from guard.audit.writer import AuditFiles
from guard.checks import check_trust_bundles, load_checked_policies, server_tls
from guard.config import Config
from guard.content.service import ContentGuard
from guard.credentials import Credentials
from guard.deps import DEPS, Deps
from guard.domain import Retention
from guard.identity.binding import X509Issuers
from guard.identity.dpop import DpopVerifier
from guard.identity.issuers import Identity
from guard.identity.keyring import RetainWindow, load_keys, watch_keys
from guard.identity.mtls import SERVER_TLS, ToolContexts, watch
from guard.identity.tokens import GuardKeys
from guard.log import get_logger
from guard.metrics import Metrics
from guard.policy import PolicySet
from guard.policy.reload import PolicyHolder, PolicyReloader
from guard.routes import agents, approvals, audit, credentials, mcp, operate, pins, signin, system, tasks, tools, ui
from guard.routes import oauth as oauth_routes
from guard.routes import signals as signal_routes
from guard.routes.call import require_client_cert
from guard.routes.problems import problem_middleware
from guard.signals.baseline import Baselines
from guard.signals.receiver import Signals
from guard.signals.transmitter import Transmitter
from guard.stores import open_store
from guard.stores.base import Store
from guard.tasks.ends import TaskEnded, TaskEnds
from guard.tasks.retention import Sweeper
from guard.telemetry import Tracing, open_tracing

__all__ = ["build_app"]

log = get_logger("guard.app")


# what each cleanup context opens, for the ones after it (and the last, which builds Deps)
STORE = web.AppKey("store", Store)
AUDIT = web.AppKey("audit", AuditLog)
HTTP = web.AppKey("http", aiohttp.ClientSession)
TASK_ENDS = web.AppKey("task_ends", TaskEnds)
APPROVALS = web.AppKey("approvals", Approvals)
CREDENTIALS = web.AppKey("credentials", Credentials)


def _forgetter(deps: Deps) -> Callable[[TaskEnded], Awaitable[None]]:
    """What this process remembers of a task (its cached state and tokens) goes when it ends."""

    async def forget(ended: TaskEnded) -> None:
        deps.tasks.drop(ended.task_id)
        deps.keys.forget_task(ended.task_id)

    return forget


def _releaser(credentials: Credentials) -> Callable[[TaskEnded], Awaitable[None]]:
    """The leases and tokens a task held are given back when it ends, on whichever instance claims
    them first (the claim is atomic in the store); the service's sweep catches an end that was
    announced while no instance listened."""

    async def release(ended: TaskEnded) -> None:
        credentials.release_soon(ended.task_id)

    return release


def _signals_context(cfg: Config, config_dir: Path | None, holder: PolicyHolder,
                     metrics: Metrics, keys: GuardKeys) -> Callable[[web.Application], AsyncIterator[None]]:
    """Shared Signals: the receiver (push at POST /ssf/events, a poller per poll transmitter) and
    the transmitter (session-revoked to each receiver)."""
    assert cfg.signals is not None
    signals_cfg = cfg.signals

    async def context(app: web.Application) -> AsyncIterator[None]:
        ttl = cfg.sso.session_ttl_s if cfg.sso is not None else 86400
        ends = app[TASK_ENDS]
        signals = Signals(signals_cfg, config_dir or Path.cwd(), app[STORE], app[AUDIT], ends,
                          lambda: holder.current, metrics, ttl, cfg.environ)
        app[signal_routes.SIGNALS] = signals
        signals.start(app[HTTP])
        transmitter = None
        if signals_cfg.receivers:
            transmitter = Transmitter(cfg, signals_cfg.receivers, keys, app[AUDIT], app[HTTP])
            ends.on_ended_here(transmitter.task_ended)
            ends.on_suspended_here(transmitter.agent_suspended)
            transmitter.start()
        yield
        if transmitter is not None:
            await transmitter.close()
        await signals.close()

    return context


def _flusher(tracing: Tracing) -> Callable[[TaskEnded], Awaitable[None]]:
    """A task's spans are exported when it ends, not when the batch next fills or times out."""

    async def flush(ended: TaskEnded) -> None:
        tracing.flush_soon()

    return flush


def build_app(cfg: Config, policies: PolicySet | None = None, *, dry_run: bool = False) -> web.Application:
    """The guard as an aiohttp application: the middleware, every route module, and one
    cleanup_ctx per resource (store, audit writer, client session, task ends, retention sweeper,
    approvals, credentials, TLS and key watchers, policy reloader, OAuth).

    Every check `guard serve` makes before it listens runs here, each failure a ConfigError naming
    the file and key (`guard config check` runs this with `dry_run`: missing keys are not created)."""
    policies = policies or load_checked_policies(cfg)
    holder = PolicyHolder(policies)
    keep = RetainWindow(cfg, lambda: holder.current.lifetimes())  # how long a key verifies after a rotation
    keys = load_keys(cfg, keep(), create=not dry_run)
    config_dir = Path(cfg.source).parent if cfg.source.endswith((".yaml", ".yml")) else None
    identity = Identity(cfg, config_dir, create_keys=not dry_run)
    tls = server_tls(cfg)
    check_trust_bundles(cfg)
    if cfg.dev_mode and not dry_run:
        log.warning("development_mode", detail="trusting the local development issuer; configure issuers")
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=cfg.limits.max_body_bytes)
    metrics = Metrics()
    tool_tls = ToolContexts()
    if tls is not None:
        app[SERVER_TLS] = tls
        if tls.required:
            app.middlewares.append(require_client_cert(tls))

    tracing = open_tracing(cfg)  # None when telemetry is off; stops start-up when it is on without the SDK

    async def store(app: web.Application) -> AsyncIterator[None]:
        app[STORE] = opened = await open_store(
            cfg.store.url, durable_audit=cfg.audit.dir is not None, wait_replicas=cfg.store.wait_replicas,
            retention=Retention(cfg.retention.ended_task_s, cfg.retention.audit_s))
        yield
        await opened.close()

    async def audit_writer(app: web.Application) -> AsyncIterator[None]:
        files = AuditFiles(cfg.audit.dir, cfg.audit.fsync) if cfg.audit.dir else None
        if files is not None:
            files.start()
        app[AUDIT] = AuditLog(app[STORE], files, metrics.observe_record)
        yield
        if files is not None:
            await files.close()

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        app[HTTP] = http = identity.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await http.close()

    async def task_ends(app: web.Application) -> AsyncIterator[None]:
        app[TASK_ENDS] = ends = TaskEnds(app[STORE], app[AUDIT], cfg.store.url)
        await ends.start()
        yield
        await ends.close()

    async def retention_sweeper(app: web.Application) -> AsyncIterator[None]:
        sweeper = Sweeper(app[STORE], app[TASK_ENDS], cfg.audit.dir)
        sweeper.start()
        yield
        await sweeper.close()

    async def approvals_service(app: web.Application) -> AsyncIterator[None]:
        app[APPROVALS] = approvals_ = Approvals(cfg, app[STORE], app[AUDIT], app[TASK_ENDS])
        await approvals_.start()  # resumes pending webhook deliveries
        yield
        await approvals_.close()

    async def credentials_service(app: web.Application) -> AsyncIterator[None]:
        app[CREDENTIALS] = credentials_ = Credentials(cfg, keys, app[STORE], app[AUDIT], app[HTTP], metrics,
                                                      app[TASK_ENDS].expired, lambda: holder.current.tools, config_dir)
        credentials_.start()
        yield
        await credentials_.close()

    async def dependencies(app: web.Application) -> AsyncIterator[None]:
        store_, audit_log, ends, credentials_ = app[STORE], app[AUDIT], app[TASK_ENDS], app[CREDENTIALS]
        app[DEPS] = deps = Deps(cfg, store_, keys, holder, audit_log, app[APPROVALS], app[HTTP], identity, ends,
                                credentials_, ContentGuard(cfg, store_, audit_log), DpopVerifier(cfg.public_url),
                                X509Issuers(cfg.x509_issuers), metrics=metrics, tls=tls, tool_tls=tool_tls,
                                tracing=tracing)
        if cfg.baseline is not None:
            deps.baselines = Baselines(cfg.baseline.learn_s, store_, audit_log, metrics)
        ends.subscribe(_forgetter(deps))
        ends.subscribe(_releaser(credentials_))
        if tracing is not None:
            ends.subscribe(_flusher(tracing))
        log.info("guard_started", listen=f"{cfg.listen.host}:{cfg.listen.port}", store=cfg.store.url.split("@")[-1],
                 policies=str(cfg.policies), tools=sorted(policies.tools))
        yield
        await deps.upstreams.close()

    async def telemetry(app: web.Application) -> AsyncIterator[None]:
        yield
        if tracing is not None:
            await tracing.close()  # the spans still batched are exported before the process ends

    # one cleanup_ctx per resource, in the order they open (they close in reverse): a failed start
    # closes what it had opened
    app.cleanup_ctx.extend([telemetry, store, audit_writer, client_session, task_ends, retention_sweeper,
                            approvals_service, credentials_service, dependencies])
    app.cleanup_ctx.append(lambda _: watch(lambda: ([tls] if tls is not None else []) + tool_tls.all()))
    app.cleanup_ctx.append(lambda _: watch_keys(cfg, keys, keep))
    reloader = PolicyReloader(cfg.policies, lambda: load_checked_policies(cfg), holder, metrics)
    app.cleanup_ctx.append(reloader.context)
    app.cleanup_ctx.append(oauth_routes.context)  # MCP authorization and sign-in (guard.oauth)
    if cfg.signals is not None:  # Shared Signals received (guard.signals); off: nothing runs
        app.cleanup_ctx.append(_signals_context(cfg, config_dir, holder, metrics, keys))
    for module in (system, tasks, tools, mcp, credentials, agents, ui, operate, approvals, audit, oauth_routes, signin,
                   signal_routes, pins):
        app.router.add_routes(module.routes)
    return app
