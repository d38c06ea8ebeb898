"""build_app(cfg) -> web.Application: the middleware, the routes, one cleanup_ctx per resource."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from guard.approvals.service import Approvals
from guard.audit.log import AuditLog
from guard.audit.writer import AuditFiles
from guard.canonical import compact_json
from guard.config import Config
from guard.credentials import Credentials
from guard.domain import Retention
from guard.errors import ConfigError, GuardError, MethodNotAllowed, NotFound, StoreUnavailable
from guard.identity.issuers import Identity
from guard.identity.tokens import GuardKeys, load_or_create_key
from guard.metrics import Metrics, request_started
from guard.pipeline import Deps
from guard.policy import PolicySet, load_policies
from guard.policy.reload import PolicyHolder, PolicyReloader
from guard.routes import agents, approvals, audit, credentials, mcp, operate, system, tasks, tools, ui
from guard.routes.common import DEPS
from guard.stores import open_store
from guard.stores.base import Store
from guard.tasks.ends import TaskEnded, TaskEnds
from guard.tasks.retention import Sweeper

__all__ = ["build_app", "load_checked_policies", "problem_response"]

log = structlog.get_logger("guard.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HTTPProblem(GuardError):
    """An aiohttp HTTP error (e.g. a malformed request line) rendered as problem details."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = status

    def problem(self) -> dict[str, object]:
        body = super().problem()
        body.update(status=self.http_status, code="bad_request" if self.http_status < 500 else "internal")
        return body


def problem_response(err: GuardError) -> web.Response:
    return web.Response(
        body=compact_json(err.problem()).encode(),
        status=getattr(err, "http_status", err.status),
        content_type="application/problem+json",
        headers=err.headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware: every error leaves as RFC 9457 problem details (counted by code),
    and the request's start is marked for the overhead histogram (guard.metrics)."""
    token = request_started.set(time.perf_counter())
    try:
        return await handler(request)
    except GuardError as err:
        deps = request.app.get(DEPS)
        if deps is not None:
            deps.metrics.count_error(err.code)
            if isinstance(err, StoreUnavailable):
                deps.metrics.store_errors.labels("request").inc()
        return problem_response(err)
    except web.HTTPNotFound:
        return problem_response(NotFound("no such endpoint"))
    except web.HTTPMethodNotAllowed:
        return problem_response(MethodNotAllowed("method not allowed here"))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(HTTPProblem(exc.status, exc.reason))
    except Exception:
        log.exception("request_failed", path=request.path)
        return problem_response(GuardError("internal error"))
    finally:
        request_started.reset(token)


def load_checked_policies(cfg: Config) -> PolicySet:
    """Load and compile the policies; static credential secrets must be in the environment."""
    policies = load_policies(cfg.policies)
    for name, tool in policies.tools.items():
        if tool.credential.mode == "static" and not cfg.environ.get(tool.credential.secret_env or ""):
            raise ConfigError(
                str(cfg.policies), f"tools.{name}.credential.secret_env",
                f"{tool.credential.secret_env} is not set in the environment",
            )
    configured = {hook.name for hook in cfg.approvals.webhooks}
    for rule in policies.rules:
        missing = sorted(set(rule.approvers) - configured)
        if missing:
            log.warning("approvers_unconfigured", rule_id=rule.id, webhooks=missing,
                        detail="step-ups of this rule reach no approver until the webhook is configured")
    return policies


class _Opened:
    """The resources the app's cleanup contexts have opened so far."""

    store: Store
    audit: AuditLog
    http: aiohttp.ClientSession
    task_ends: TaskEnds


def _forgetter(deps: Deps) -> Callable[[TaskEnded], Awaitable[None]]:
    """What this process remembers of a task (its cached state and tokens) goes when it ends."""

    async def forget(ended: TaskEnded) -> None:
        deps.tasks.drop(ended.task_id)
        deps.keys.forget_task(ended.task_id)

    return forget


def build_app(cfg: Config, policies: PolicySet | None = None) -> web.Application:
    """The guard as an aiohttp application: the middleware, every route module, and one
    cleanup_ctx per resource (store, audit writer, client session, task ends, retention sweeper,
    approvals, policy reloader)."""
    policies = policies or load_checked_policies(cfg)
    keys = GuardKeys(load_or_create_key(cfg.signing.key_file, cfg.signing.algorithm), cfg.issuer)
    identity = Identity(cfg, Path(cfg.source).parent if cfg.source.endswith((".yaml", ".yml")) else None)
    if cfg.dev_mode:
        log.warning("development_mode", detail="trusting the local development issuer; configure issuers")
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=cfg.limits.max_body_bytes)
    holder = PolicyHolder(policies)
    metrics = Metrics()

    opened = _Opened()

    async def store(app: web.Application) -> AsyncIterator[None]:
        opened.store = await open_store(cfg.store.url, durable_audit=cfg.audit.dir is not None,
                                        retention=Retention(cfg.retention.ended_task_s, cfg.retention.audit_s))
        yield
        await opened.store.close()

    async def audit_writer(app: web.Application) -> AsyncIterator[None]:
        files = AuditFiles(cfg.audit.dir, cfg.audit.fsync) if cfg.audit.dir else None
        if files is not None:
            files.start()
        opened.audit = AuditLog(opened.store, files, metrics.observe_record)
        yield
        if files is not None:
            await files.close()

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        opened.http = identity.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        yield
        await opened.http.close()

    async def task_ends(app: web.Application) -> AsyncIterator[None]:
        opened.task_ends = TaskEnds(opened.store, opened.audit, cfg.store.url)
        await opened.task_ends.start()
        yield
        await opened.task_ends.close()

    async def retention_sweeper(app: web.Application) -> AsyncIterator[None]:
        sweeper = Sweeper(opened.store, opened.task_ends, cfg.audit.dir)
        sweeper.start()
        yield
        await sweeper.close()

    async def approvals_service(app: web.Application) -> AsyncIterator[None]:
        approvals_ = Approvals(cfg, opened.store, opened.audit, opened.task_ends)
        await approvals_.start()  # resumes pending webhook deliveries
        app[DEPS] = deps = Deps(cfg, opened.store, keys, holder, opened.audit, approvals_, opened.http, identity,
                                opened.task_ends, metrics=metrics, credentials=Credentials(keys, cfg.environ))
        opened.task_ends.subscribe(_forgetter(deps))
        log.info("guard_started", listen=f"{cfg.listen.host}:{cfg.listen.port}", store=cfg.store.url.split("@")[-1],
                 policies=str(cfg.policies), tools=sorted(policies.tools))
        yield
        await approvals_.close()

    # one cleanup_ctx per resource, in the order they open (they close in reverse): a failed start
    # closes what it had opened
    app.cleanup_ctx.extend([store, audit_writer, client_session, task_ends, retention_sweeper, approvals_service])
    reloader = PolicyReloader(cfg.policies, lambda: load_checked_policies(cfg), holder, metrics)
    app.cleanup_ctx.append(reloader.context)
    for module in (system, tasks, tools, mcp, credentials, agents, ui, operate, approvals, audit):
        app.router.add_routes(module.routes)
    return app
