"""What a request needs, built once by build_app (`Deps`), and the AppKey it is found under (`DEPS`)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from guard.approvals.service import Approvals
from guard.audit.log import AuditLog
from guard.config import Config
from guard.content.service import ContentGuard
from guard.credentials import Credentials
from guard.domain import Authorized
from guard.identity.binding import X509Issuers
from guard.identity.dpop import DpopVerifier
from guard.identity.issuers import Identity
from guard.identity.mtls import ServerTLS, ToolContexts
from guard.identity.tokens import GuardKeys
from guard.metrics import Metrics
from guard.policy.reload import PolicyHolder
from guard.signals.baseline import Baselines
from guard.stages.forward import tool_ssl
from guard.stages.task import TaskCache
from guard.stores.base import Store
from guard.tasks.ends import TaskEnds
from guard.telemetry import Tracing
from guard.upstreams import Upstreams

__all__ = ["DEPS", "Deps"]


@dataclass
class Deps:
    cfg: Config
    store: Store
    keys: GuardKeys
    policies: PolicyHolder
    audit: AuditLog
    approvals: Approvals
    http: aiohttp.ClientSession
    identity: Identity
    task_ends: TaskEnds  # guard.tasks.ends: what a task holds open ends with it
    credentials: Credentials  # guard.credentials: one provider per tool
    content: ContentGuard  # guard.content: detectors, data labels, exfiltration
    dpop: DpopVerifier
    x509: X509Issuers
    metrics: Metrics = field(default_factory=Metrics)  # guard.metrics: counters anyone may increment
    tasks: TaskCache = field(default_factory=TaskCache)  # spares the allow path a store read
    tool_tls: ToolContexts = field(default_factory=ToolContexts)  # what the guard shows tools
    tls: ServerTLS | None = None  # listen.tls: the door's TLS and its clients' SVIDs (guard.identity.mtls)
    baselines: Baselines | None = None  # guard.signals.baseline, when `baseline` is configured
    tracing: Tracing | None = None  # guard.telemetry: None when telemetry is off
    upstreams: Upstreams = field(default_factory=Upstreams)  # the connections forwarded calls go out on

    def tool_ssl(self, auth: Authorized) -> ssl.SSLContext | None:
        """The TLS the called tool asks for (`tls`, `spiffe_id`); unreadable files reach nothing."""
        return tool_ssl(self.tool_tls, self.policies.current.tools.get(auth.action.tool), auth)


DEPS = web.AppKey("deps", Deps)
