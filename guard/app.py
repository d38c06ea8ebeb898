"""build_app(cfg) -> web.Application: the middlewares, the routes, one cleanup_ctx that opens
the store, the audit writer and the shared upstream client."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from guard.approvals import Approvals
from guard.audit import AuditFiles, AuditLog
from guard.canonical import compact_json
from guard.config import Config
from guard.domain import Retention
from guard.errors import ConfigError, GuardError, MethodNotAllowed, NotFound, StoreUnavailable
from guard.identity import Identity
from guard.lifecycle import TaskEnded, TaskEnds
from guard.metrics import Metrics, request_started
from guard.pipeline import Deps, PolicyHolder
from guard.policy import PolicySet, load_policies
from guard.reload import PolicyReloader
from guard.retention import Sweeper
from guard.routes import agents, approvals, credentials, mcp, operate, review, system, tasks, tools
from guard.routes.common import DEPS
from guard.stores import open_store
from guard.tokens import GuardKeys, load_or_create_key

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


def _forgetter(deps: Deps) -> Callable[[TaskEnded], Awaitable[None]]:
    """What this process remembers of a task (its cached state and tokens) goes when it ends."""

    async def forget(ended: TaskEnded) -> None:
        deps.tasks.drop(ended.task_id)
        deps.keys.forget_task(ended.task_id)

    return forget


def build_app(cfg: Config, policies: PolicySet | None = None) -> web.Application:
    policies = policies or load_checked_policies(cfg)
    keys = GuardKeys(load_or_create_key(cfg.signing.key_file, cfg.signing.algorithm), cfg.issuer)
    identity = Identity(cfg, Path(cfg.source).parent if cfg.source.endswith((".yaml", ".yml")) else None)
    if cfg.dev_mode:
        log.warning("development_mode", detail="trusting the local development issuer; configure issuers")
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=cfg.limits.max_body_bytes)
    holder = PolicyHolder(policies)
    metrics = Metrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = await open_store(cfg.store.url, cfg.audit.dir,
                                 Retention(cfg.retention.ended_task_s, cfg.retention.audit_s))
        files = AuditFiles(cfg.audit.dir, cfg.audit.fsync) if cfg.audit.dir else None
        if files is not None:
            files.start()
        audit = AuditLog(store, files, metrics.observe_record)
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        identity.http = http
        task_ends = TaskEnds(store, audit, cfg.store.url)
        await task_ends.start()
        sweeper = Sweeper(store, task_ends, cfg.audit.dir)
        sweeper.start()
        approvals_ = Approvals(cfg, store, audit, task_ends)
        await approvals_.start()  # resumes pending webhook deliveries
        app[DEPS] = deps = Deps(cfg, store, keys, holder, audit, approvals_, http, identity, task_ends,
                                metrics=metrics)
        task_ends.subscribe(_forgetter(deps))
        log.info("guard_started", listen=f"{cfg.listen.host}:{cfg.listen.port}", store=cfg.store.url.split("@")[-1],
                 policies=str(cfg.policies), tools=sorted(policies.tools))
        yield
        await approvals_.close()
        await sweeper.close()
        await task_ends.close()
        await http.close()
        if files is not None:
            await files.close()
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    reloader = PolicyReloader(cfg.policies, lambda: load_checked_policies(cfg), holder, metrics)
    app.cleanup_ctx.append(reloader.context)
    for module in (system, tasks, tools, mcp, credentials, agents, review, operate, approvals):
        app.router.add_routes(module.routes)
    return app
