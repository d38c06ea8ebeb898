"""build_app(cfg) -> web.Application: the middleware, the routes, one cleanup_ctx per resource."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web

from guard.approvals.service import Approvals
from guard.audit.log import AuditLog
from guard.audit.writer import AuditFiles
from guard.canonical import compact_json
from guard.config import Config
from guard.content.detectors import KIND_OF
from guard.content.service import ContentGuard
from guard.credentials import Credentials
from guard.domain import Retention
from guard.errors import ConfigError, GuardError, MethodNotAllowed, NotFound, StoreUnavailable
from guard.identity.binding import X509Issuers
from guard.identity.dpop import DpopVerifier
from guard.identity.issuers import Identity
from guard.identity.keyring import load_keys, policy_retain_s, watch_keys
from guard.identity.mtls import SERVER_TLS, ServerTLS, ToolContexts, require_client_cert, watch
from guard.metrics import Metrics, request_started
from guard.pipeline import Deps
from guard.policy import PolicySet, load_policies
from guard.policy.reload import PolicyHolder, PolicyReloader
from guard.routes import agents, approvals, audit, credentials, mcp, operate, pins, signin, system, tasks, tools, ui
from guard.routes import oauth as oauth_routes
from guard.routes.common import DEPS
from guard.stores import open_store
from guard.stores.base import Store
from guard.tasks.ends import TaskEnded, TaskEnds
from guard.tasks.retention import Sweeper

__all__ = ["build_app", "check_credentials", "check_redact", "load_checked_policies", "problem_response"]

log = structlog.get_logger("guard.app")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HTTPProblem(GuardError):
    """An aiohttp HTTP error (e.g. a malformed request line) rendered as problem details."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = status

    def problem(self) -> dict[str, object]:
        body = super().problem()
        code = "bad_request" if self.http_status < 500 else "internal"
        body.update(type=f"urn:guard:error:{code}", status=self.http_status, code=code, title=_phrase(self.http_status))
        return body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad request" if status < 500 else "Internal error"


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


def check_credentials(cfg: Config, policies: PolicySet) -> None:
    """What the policies' credential blocks need from guard.yaml and the environment: env
    secrets set, and `secrets.vault` configured for vault secrets and leases."""
    for name, tool in policies.tools.items():
        spec = tool.credential
        refs = [(r, key) for r, key in ((spec.secret, "secret"),
                                        (spec.oauth.client_secret if spec.oauth else None, "client_secret")) if r]
        for ref, key in refs:
            if ref.kind == "env" and not cfg.environ.get(ref.ref):
                key = "secret_env" if spec.secret_env else f"{key}.env"
                raise ConfigError(str(cfg.policies), f"tools.{name}.credential.{key}",
                                  f"{ref.ref} is not set in the environment")
        needs_vault = spec.mode == "vault_lease" or any(ref.kind == "vault" for ref, _ in refs)
        if needs_vault and cfg.secrets.vault is None:
            raise ConfigError(str(cfg.policies), f"tools.{name}.credential",
                              f"mode {spec.mode} reads from OpenBao/Vault: configure secrets.vault in {cfg.source}")


def check_redact(cfg: Config, policies: PolicySet) -> None:
    """A tool's `redact` names finding kinds whose detectors `inspect.detectors` must list."""
    listed = {KIND_OF[d] for d in cfg.inspect.detectors}
    for name, spec in policies.tools.items():
        missing = sorted(spec.redact - listed)
        if missing:
            raise ConfigError(str(cfg.policies), f"tools.{name}.redact",
                              f"{', '.join(missing)}: its detector is not in inspect.detectors of {cfg.source}")


def load_checked_policies(cfg: Config) -> PolicySet:
    """Load and compile the policies; what their credentials need must be configured."""
    policies = load_policies(cfg.policies)
    check_credentials(cfg, policies)
    check_redact(cfg, policies)
    configured = {hook.name for hook in cfg.approvals.webhooks}
    for rule in policies.rules:
        missing = sorted(set(rule.approvers) - configured)
        if missing:
            log.warning("approvers_unconfigured", rule_id=rule.id, webhooks=missing,
                        detail="step-ups of this rule reach no approver until the webhook is configured")
    return policies


def _server_tls(cfg: Config) -> ServerTLS | None:
    """listen.tls, its files read now: a bad one stops the start, naming it."""
    t = cfg.listen.tls
    if t is None:
        return None
    import ssl

    try:
        return ServerTLS(t.cert_file, t.key_file, t.client_ca_file, t.client_auth)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ConfigError(cfg.source, "listen.tls", f"cannot load the certificate, key or bundle: {e}") from e


class _Opened:
    """The resources the app's cleanup contexts have opened so far."""

    store: Store
    audit: AuditLog
    http: aiohttp.ClientSession
    approvals: Approvals
    task_ends: TaskEnds


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


def build_app(cfg: Config, policies: PolicySet | None = None) -> web.Application:
    """The guard as an aiohttp application: the middleware, every route module, and one
    cleanup_ctx per resource (store, audit writer, client session, task ends, retention sweeper,
    approvals, credentials, TLS and key watchers, policy reloader, OAuth)."""
    policies = policies or load_checked_policies(cfg)
    keep_s = policy_retain_s(cfg, policies)  # how long a key verifies after a rotation
    keys = load_keys(cfg, keep_s)
    config_dir = Path(cfg.source).parent if cfg.source.endswith((".yaml", ".yml")) else None
    identity = Identity(cfg, config_dir)
    if cfg.dev_mode:
        log.warning("development_mode", detail="trusting the local development issuer; configure issuers")
    app = web.Application(middlewares=[problem_middleware],
                          client_max_size=cfg.limits.max_body_bytes)
    holder = PolicyHolder(policies)
    metrics = Metrics()
    tls = _server_tls(cfg)
    tool_tls = ToolContexts()
    if tls is not None:
        app[SERVER_TLS] = tls
        if tls.required:
            app.middlewares.append(require_client_cert(tls))

    opened = _Opened()

    async def store(app: web.Application) -> AsyncIterator[None]:
        opened.store = await open_store(cfg.store.url, durable_audit=cfg.audit.dir is not None,
                                        wait_replicas=cfg.store.wait_replicas,
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
        opened.approvals = approvals_
        yield
        await approvals_.close()

    async def credentials_service(app: web.Application) -> AsyncIterator[None]:
        store, audit_log, ends = opened.store, opened.audit, opened.task_ends
        credentials_ = Credentials(cfg, keys, store, audit_log, opened.http, metrics, ends.expired,
                                   lambda: holder.current.tools, config_dir)
        credentials_.start()
        app[DEPS] = deps = Deps(cfg, store, keys, holder, audit_log, opened.approvals, opened.http, identity, ends,
                                metrics=metrics, credentials=credentials_, tls=tls, dpop=DpopVerifier(cfg.public_url),
                                x509=X509Issuers(cfg.x509_issuers), tool_tls=tool_tls,
                                content=ContentGuard(cfg, store, audit_log))
        ends.subscribe(_forgetter(deps))
        ends.subscribe(_releaser(credentials_))
        log.info("guard_started", listen=f"{cfg.listen.host}:{cfg.listen.port}", store=cfg.store.url.split("@")[-1],
                 policies=str(cfg.policies), tools=sorted(policies.tools))
        yield
        await credentials_.close()

    # one cleanup_ctx per resource, in the order they open (they close in reverse): a failed start
    # closes what it had opened
    app.cleanup_ctx.extend([store, audit_writer, client_session, task_ends, retention_sweeper, approvals_service,
                            credentials_service])
    app.cleanup_ctx.append(lambda _: watch(lambda: ([tls] if tls is not None else []) + tool_tls.all()))
    app.cleanup_ctx.append(lambda _: watch_keys(cfg, keys, keep_s))
    reloader = PolicyReloader(cfg.policies, lambda: load_checked_policies(cfg), holder, metrics)
    app.cleanup_ctx.append(reloader.context)
    app.cleanup_ctx.append(oauth_routes.context)  # MCP authorization and sign-in (guard.oauth)
    for module in (system, tasks, tools, mcp, credentials, agents, ui, operate, approvals, audit, oauth_routes, signin,
                   pins):
        app.router.add_routes(module.routes)
    return app
