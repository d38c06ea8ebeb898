"""guard.metrics: what /metrics shows for the calls the audit records describe."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from guard.metrics import _LATENCY_BUCKETS, Metrics


def _samples(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name) and "_created" not in line]


def test_the_latency_histogram_reads_as_a_prometheus_client_histogram_of_the_same_values() -> None:
    """A forwarded call's record feeds the upstream latency histogram by tool, in seconds:
    /metrics shows what a Histogram observing the same values shows, and a created time."""
    latencies_ms = [0.2, 1.0, 2.5, 7.0, 30000.0, 45000.0, 1.0]  # on a bound, between two, past the last
    metrics = Metrics()
    registry = CollectorRegistry()
    reference = Histogram("guard_upstream_latency_seconds", "Time until the tool's response headers", ["tool"],
                          buckets=_LATENCY_BUCKETS, registry=registry)
    for ms in latencies_ms:
        metrics.observe_record({"event": "call_forwarded", "tool": "echo", "latency_ms": ms})
        reference.labels("echo").observe(ms / 1000)
    ours, theirs = generate_latest(metrics.registry).decode(), generate_latest(registry).decode()
    assert _samples(ours, "guard_upstream_latency_seconds") == _samples(theirs, "guard_upstream_latency_seconds")
    assert len(_samples(ours, "guard_upstream_latency_seconds_bucket")) == len(_LATENCY_BUCKETS) + 1
    assert "# TYPE guard_upstream_latency_seconds histogram" in ours
    assert 'guard_upstream_latency_seconds_created{tool="echo"}' in ours
