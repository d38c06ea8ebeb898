"""The OpenTelemetry SDK behind guard.telemetry: a TracerProvider of guard's own (never the global
one), a batching OTLP/HTTP (protobuf) exporter, spans per call and per stage.

Span tree of one call (each stage starts when the one before it ends):

    execute_tool notes | tools/call files      SERVER  parent: the caller's traceparent
      authenticate, task, chain, match, evaluate, [approve], admit, mint
      forward                                    CLIENT  the tool receives its traceparent

The forward span's id is chosen before the credential is minted: an MCP request carries it in
`params._meta.traceparent`, and the credential's `call_digest` covers the body the tool receives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guard.config import TelemetryCfg
from guard.domain import Caller, ToolCall
from guard.errors import GuardError

__all__ = ["OtelTracing"]

_PROPAGATOR = TraceContextTextMapPropagator()


class _Ids(RandomIdGenerator):
    """Random ids, except the one span id reserved for the next span started (the forward span,
    whose traceparent went into the request before the span could start)."""

    def __init__(self) -> None:
        self.next: int | None = None

    def generate_span_id(self) -> int:
        reserved, self.next = self.next, None
        return reserved if reserved is not None else super().generate_span_id()


class OtelTracing:
    def __init__(self, cfg: TelemetryCfg) -> None:
        self.ids = _Ids()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
            id_generator=self.ids,
            shutdown_on_exit=False,  # the app's cleanup closes it (close()), while the loop still runs
        )
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{cfg.otlp_endpoint}/v1/traces")))
        self.tracer: Tracer = self.provider.get_tracer("guard")
        # one flush at a time, on a thread of its own; the tasks that end while one waits share it
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guard-otel-flush")
        self._flush_queued = False
        self._flushes: set[asyncio.Future[None]] = set()

    @contextmanager
    def call(self, call: ToolCall, headers: Mapping[str, str], mcp_method: str | None = None,
             rpc_id: Any = None, meta: Mapping[str, Any] | None = None) -> Iterator[ToolCall]:
        carrier: Mapping[str, Any] = meta if meta is not None and isinstance(meta.get("traceparent"), str) else headers
        parent = _PROPAGATOR.extract(carrier)
        attributes: dict[str, Any] = {"guard.call_id": call.call_id, "guard.tool": call.tool}
        if call.counted:
            attributes["gen_ai.operation.name"] = "execute_tool"
            attributes["gen_ai.tool.name"] = call.tool
        if call.kind == "mcp":
            attributes["mcp.method.name"] = mcp_method or call.method
            if rpc_id is not None:
                attributes["jsonrpc.request.id"] = str(rpc_id)
            name = f"tools/call {call.tool}" if mcp_method == "tools/call" else (mcp_method or call.method)
        else:
            attributes["http.request.method"] = call.method
            name = f"execute_tool {call.tool}"
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        trace = _CallSpan(self, span)
        try:
            yield replace(call, trace=trace)
        except GuardError as err:
            trace.fail(err.code, err.detail, err.status)
            raise
        except BaseException as err:  # its type only: an internal error's text stays in guard's log
            trace.fail(type(err).__qualname__, type(err).__qualname__, None)
            raise
        finally:
            trace.end()

    def flush_soon(self) -> None:
        if self._flush_queued:
            return
        self._flush_queued = True
        fut = asyncio.get_running_loop().run_in_executor(self._flusher, self._flush)
        self._flushes.add(fut)
        fut.add_done_callback(self._flushes.discard)

    def _flush(self) -> None:
        self._flush_queued = False  # from here on, a task that ends asks for a flush of its own
        self.provider.force_flush()

    async def close(self) -> None:
        self._flusher.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.provider.shutdown)  # flushes the batch first


class _CallSpan:
    """guard.domain.CallTrace: one call's span and its current stage span."""

    __slots__ = ("_current", "_headers", "_reserved", "_tracing", "context", "decision", "span")

    def __init__(self, tracing: OtelTracing, span: Span) -> None:
        self._tracing, self.span = tracing, span
        self.context: Context = set_span_in_context(span)
        self._current: Span | None = None
        self._reserved: int | None = None
        self._headers: dict[str, str] = {}
        self.decision: str | None = None

    def stage(self, name: str) -> None:
        self._end_stage()
        self._current = self._tracing.tracer.start_span(name, context=self.context, attributes={"guard.stage": name})

    def decided(self, caller: Caller, effect: str, rule_id: str | None, action: str | None) -> None:
        self.decision = effect
        self.span.set_attribute("guard.task_id", caller.task_id)
        self.span.set_attribute("gen_ai.agent.id", caller.agent)
        self.span.set_attribute("guard.decision", effect)
        if rule_id is not None:
            self.span.set_attribute("guard.rule_id", rule_id)
        if action is not None:
            self.span.set_attribute("guard.action", action)

    def to_tool(self, call: ToolCall) -> ToolCall:
        ctx = self.span.get_span_context()
        self._reserved = self._tracing.ids.generate_span_id()
        self._headers = {"traceparent": f"00-{ctx.trace_id:032x}-{self._reserved:016x}-{int(ctx.trace_flags):02x}"}
        if ctx.trace_state:
            self._headers["tracestate"] = ctx.trace_state.to_header()
        if call.kind != "mcp" or not call.body:
            return call
        message = json.loads(call.body)
        if not isinstance(message, dict) or "method" not in message:
            return call  # a client's JSON-RPC response carries no params
        params = message.get("params")
        params = dict(params) if isinstance(params, dict) else {}
        meta = params.get("_meta")
        params["_meta"] = {**(meta if isinstance(meta, dict) else {}), **self._headers}
        message["params"] = params
        try:
            body = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except ValueError:  # a number beyond a float's range: the body goes as it came, the header carries it
            return call
        return replace(call, body=body)

    def forwarding(self) -> dict[str, str]:
        self._end_stage()
        self._tracing.ids.next = self._reserved  # the span the tool was told about
        self._current = self._tracing.tracer.start_span("forward", context=self.context, kind=SpanKind.CLIENT,
                                                        attributes={"guard.stage": "forward"})
        self._tracing.ids.next = None
        return self._headers

    def answered(self, status: int) -> None:
        for span in (self.span, self._current):
            if span is not None:
                span.set_attribute("http.response.status_code", status)

    def fail(self, error_type: str, detail: str, status: int | None) -> None:
        if self.decision is None:
            self.span.set_attribute("guard.decision", "deny")
        if status is not None:
            self.span.set_attribute("http.response.status_code", status)
        for span in (self._current, self.span):
            if span is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR, detail))

    def _end_stage(self) -> None:
        if self._current is not None:
            self._current.end()
            self._current = None

    def end(self) -> None:
        self._end_stage()
        self.span.end()
