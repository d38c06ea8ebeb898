"""Traces over OTLP/HTTP: `telemetry:` in guard.yaml (docs/telemetry.md).

With `telemetry` set, every call through the guard is a span (the OpenTelemetry GenAI and MCP
semantic conventions, and guard's task, call, decision and rule), each stage of guard.pipeline a
child span, and the tool receives the forward span's `traceparent`. The OpenTelemetry SDK is an
optional extra (`pip install 'guard[telemetry]'`): it is imported only when telemetry is on, and a
config that turns telemetry on without it stops start-up. With telemetry off, `open_tracing`
answers None and a call carries no trace (`ToolCall.trace` is None): nothing is done per call."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

from guard.config import Config
from guard.domain import ToolCall
from guard.errors import ConfigError

__all__ = ["Tracing", "open_tracing"]


class Tracing(Protocol):
    """The process's tracer (guard.telemetry.otel.OtelTracing)."""

    def call(self, call: ToolCall, headers: Mapping[str, str], mcp_method: str | None = None,
             rpc_id: Any = None, meta: Mapping[str, Any] | None = None) -> AbstractContextManager[ToolCall]:
        """`with tracing.call(call, request.headers) as call:` the call's span (its parent: the
        caller's W3C trace context, from MCP `params._meta` (`meta`) or the headers), ended when
        the block ends; a GuardError leaving it is recorded as the span's `error.type`."""
        ...

    def flush_soon(self) -> None:
        """Export what is batched now, off the event loop (a task ended)."""

    async def close(self) -> None:
        """Export everything still batched and stop (shutdown)."""


def open_tracing(cfg: Config) -> Tracing | None:
    """The tracer `telemetry:` asks for, or None when it is off. Raises ConfigError when telemetry
    is on and the OpenTelemetry SDK is not installed."""
    if cfg.telemetry is None:
        return None
    try:
        from guard.telemetry.otel import OtelTracing
    except ImportError as e:
        raise ConfigError(cfg.source, "telemetry", f"the OpenTelemetry SDK is not installed ({e.name}): "
                          "pip install 'guard[telemetry]'") from e
    return OtelTracing(cfg.telemetry)
