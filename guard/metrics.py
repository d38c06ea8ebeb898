"""Prometheus metrics, one `CollectorRegistry` per app (never the global one).

`build_app` creates one `Metrics` and hands it out as `deps.metrics`. Any component may count
on it; every metric is cheap to update (a dict lookup and a lock; the two latency histograms,
observed on the event loop only, need no lock):

    deps.metrics.webhook_failures.labels(webhook="finance").inc()   # a failed webhook delivery
    deps.metrics.store_errors.labels(operation="append_audit").inc()

What is counted where:
- `guard_calls_total{tool,action,effect}` and `guard_upstream_latency_seconds{tool}`: from the
  audit records (`observe_record`), so every decided or forwarded call is counted exactly once,
  whatever route it came through (http or MCP).
- `guard_overhead_seconds{tool}`: time spent in the guard before the upstream answered
  (request start, taken by `guard.app.problem_middleware`, to the audited forward minus upstream latency).
- `guard_webhook_delivery_failures_total{webhook}`: from the `webhook_failed` audit records
  (each failed attempt), so deliveries need no extra call; others may `.inc()` it directly.
- `guard_errors_total{code}` (`count_error`) and `guard_store_errors_total`: problem-details answers, by code.
- `guard_pending_approvals`: read from the store when `/metrics` is scraped.
- `guard_credential_errors_total{tool,mode}`: calls refused with credential_unavailable (guard.credentials).
- `guard_policy_reloads_total{result}`: `ok` or `failed` (see `guard.reload`).
"""

from __future__ import annotations

import contextvars
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["LoopHistogram", "Metrics", "request_started"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_MAX_LABEL_SETS = 1000  # (tool, action) pairs kept as labels; beyond, "_other" (MCP names are caller-chosen)
# set by the HTTP middleware when a request arrives (perf_counter), read when a forward is audited
request_started: contextvars.ContextVar[float | None] = contextvars.ContextVar("guard_request_started", default=None)


class LoopHistogram:
    """A histogram with one label, observed only on the event loop's thread, exposed through
    prometheus_client's collector interface: the `_bucket`, `_count`, `_sum` and `_created`
    series its `Histogram` writes. Two are observed for every forwarded call; the library's
    `observe` takes two locks and walks the buckets in Python (9,100 instructions), this one
    bisects (one lookup, an addition)."""

    def __init__(self, name: str, documentation: str, label: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label, self.bounds = name, documentation, label, buckets
        self._children: dict[str, LoopHistogram.Child] = {}
        registry.register(self)

    class Child:
        __slots__ = ("bounds", "counts", "created", "sum")

        def __init__(self, bounds: tuple[float, ...]) -> None:
            self.bounds = bounds
            self.counts = [0] * (len(bounds) + 1)  # the last: +Inf
            self.sum = 0.0
            self.created = time.time()

        def observe(self, amount: float) -> None:
            self.counts[bisect_left(self.bounds, amount)] += 1  # the first bucket whose bound is >= amount
            self.sum += amount

    def labels(self, value: str) -> LoopHistogram.Child:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = LoopHistogram.Child(self.bounds)
        return child

    def describe(self) -> Iterator[Metric]:
        yield Metric(self.name, self.documentation, "histogram")

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "histogram")
        les = [*map(_go_float, self.bounds), "+Inf"]
        for value, child in list(self._children.items()):
            total = 0
            for le, count in zip(les, child.counts, strict=True):
                total += count
                family.add_sample(f"{self.name}_bucket", {self.label: value, "le": le}, total)
            family.add_sample(f"{self.name}_count", {self.label: value}, total)
            family.add_sample(f"{self.name}_sum", {self.label: value}, child.sum)
            family.add_sample(f"{self.name}_created", {self.label: value}, child.created)
        yield family


def _go_float(bound: float) -> str:
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]


class Metrics:
    """The guard's metric objects on their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter("guard_calls", "Tool calls decided, by tool, action and effect",
                             ["tool", "action", "effect"], registry=r)
        self.upstream_latency = LoopHistogram("guard_upstream_latency_seconds", "Time until the tool's response "
                                              "headers", "tool", _LATENCY_BUCKETS, r)
        self.overhead = LoopHistogram("guard_overhead_seconds", "Time a forwarded call spent in the guard itself",
                                      "tool", _OVERHEAD_BUCKETS, r)
        self.pending_approvals = Gauge("guard_pending_approvals", "Approvals waiting for a decision", registry=r)
        self.webhook_failures = Counter("guard_webhook_delivery_failures", "Failed approval webhook deliveries",
                                        ["webhook"], registry=r)
        self.store_errors = Counter("guard_store_errors", "State store operations that failed",
                                    ["operation"], registry=r)
        self.errors = Counter("guard_errors", "Problem-details answers, by code", ["code"], registry=r)
        self.policy_reloads = Counter("guard_policy_reloads", "Policy reloads, by result", ["result"], registry=r)
        self.credential_errors = Counter("guard_credential_errors", "Calls refused because a credential provider "
                                         "could not answer", ["tool", "mode"], registry=r)
        self.policy_rules = Gauge("guard_policy_rules", "Rules in the policy set in force", registry=r)
        self._labels: set[tuple[str, str]] = set()
        self._decided: dict[tuple[Any, Any, Any], Any] = {}  # (tool, action, effect) as recorded -> its counter child
        self._forwarded: dict[Any, tuple[Any, Any]] = {}  # tool -> its latency and overhead children
        self._errors: dict[str, Any] = {}  # code -> its counter child

    def count_error(self, code: str) -> None:
        """One problem-details answer with this code (codes are the guard's own: a bounded set)."""
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self.errors.labels(code)
        child.inc()

    def _pair(self, tool: Any, action: Any) -> tuple[str, str]:
        pair = (str(tool or "-"), str(action or "-"))
        if pair in self._labels:
            return pair
        if len(self._labels) >= _MAX_LABEL_SETS:
            return (pair[0], "_other")
        self._labels.add(pair)
        return pair

    def observe_record(self, rec: dict[str, Any]) -> None:
        """Count what an audit record says about a call (called for every appended record)."""
        event = rec.get("event")
        if event == "call_decided":
            key = (rec.get("tool"), rec.get("action"), rec.get("effect"))  # as recorded: labels made once
            child = self._decided.get(key)
            if child is None:
                tool, action = self._pair(str(key[0] or "-"), str(key[1] or "-"))
                child = self.calls.labels(tool, action, str(key[2] or "-"))
                if len(self._decided) < 4 * _MAX_LABEL_SETS:
                    self._decided[key] = child
            child.inc()
        elif event == "webhook_failed":  # one per failed delivery attempt (guard.webhooks)
            self.webhook_failures.labels(webhook=str(rec.get("webhook") or "-")).inc()
        elif event == "call_forwarded":
            latency_ms = rec.get("latency_ms")
            if not isinstance(latency_ms, int | float):
                return
            children = self._forwarded.get(rec.get("tool"))
            if children is None:
                tool = self._pair(rec.get("tool"), None)[0]
                children = (self.upstream_latency.labels(tool), self.overhead.labels(tool))
                if len(self._forwarded) < _MAX_LABEL_SETS:
                    self._forwarded[rec.get("tool")] = children
            children[0].observe(latency_ms / 1000)
            started = request_started.get()
            if started is not None:
                children[1].observe(max(0.0, time.perf_counter() - started - latency_ms / 1000))
