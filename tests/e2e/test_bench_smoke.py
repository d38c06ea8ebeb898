"""The benchmark runs end to end and prints a row for every target and scenario (never its numbers:
machines are noisy, so no timed assertion)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.process import PY, ROOT
from tests.support.redis import redis_missing_reason


@pytest.mark.slow
@pytest.mark.timeout(300)  # as long as the run may take (a loaded machine: the suite runs on several workers)
def test_quick_benchmark_prints_every_target() -> None:
    out = subprocess.run(
        [PY, "-m", "benchmarks.run", "--quick", "--rounds", "1", "--duration", "0.5", "--latency-duration", "0.5",
         "--connections", "4", "--tasks", "2", "--rss-calls", "50,100"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "scenario" not in line]
    targets = ["bare proxy", "guard memory"] + ([] if redis_missing_reason() else ["guard redis"])
    for scenario in ("http allow", "deny", "mcp tools/call", "chained call", "allow 1 KiB", "allow 64 KiB"):
        for target in targets + (["guard memory detectors"] if "KiB" in scenario else []):
            assert any(f"| {scenario} " in r and f"| {target} " in r for r in rows), (scenario, target, out.stdout)
    assert "allow 1 KiB, detectors on" in out.stdout
    assert all(r.rstrip(" |").endswith(" 0") for r in rows), out.stdout  # no unexpected answers
    assert "guard memory RSS after" in out.stdout and "targets:" in out.stdout


def test_detectors_benchmark_prints_every_size() -> None:
    out = subprocess.run([PY, "-m", "benchmarks.detectors", "--runs", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "body" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["1 KiB", "64 KiB", "1 MiB"], out.stdout
    assert all(r.count(" ms ") == 2 for r in rows), out.stdout


@pytest.mark.slow
def test_credentials_benchmark_prints_every_scenario() -> None:
    from tests.support.oidc import oidc_provider_missing_reason
    from tests.support.openbao import openbao_missing_reason
    from tests.support.process import require

    require(openbao_missing_reason() or oidc_provider_missing_reason())
    out = subprocess.run(
        [PY, "-m", "benchmarks.credentials", "--quick", "--rounds", "1", "--duration", "1", "--connections", "4",
         "--tasks", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "scenario" not in line]
    for scenario in ("jwt allow", "static from OpenBao", "oauth2 per task"):
        row = next(r for r in rows if r.startswith(f"| {scenario} "))
        assert row.rstrip(" |").endswith(" 0"), out.stdout  # no unexpected answers
    assert "first call of a task, oauth2 per task" in out.stdout and "targets:" in out.stdout


def test_identity_benchmark_prints_every_scenario_and_both_ratios() -> None:
    out = subprocess.run(
        [PY, "-m", "benchmarks.identity", "--rounds", "1", "--duration", "1", "--connections", "4", "--tasks", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "scenario" not in line]
    for scenario in ("bearer (TLS)", "mTLS-bound", "bearer (HTTP)", "DPoP-bound"):
        assert any(r.startswith(f"| {scenario} |") and r.endswith("| 0 |") for r in rows), (scenario, out.stdout)
    assert "mTLS-bound ÷ bearer (TLS):" in out.stdout and "DPoP-bound ÷ bearer (HTTP):" in out.stdout


@pytest.mark.timeout(600)
def test_scale_benchmark_runs_every_scenario_and_verifies_the_chains() -> None:
    out = subprocess.run(
        [PY, "-m", "benchmarks.scale", "busy", "instances", "workers", "--rounds", "1", "--duration", "0.5",
         "--connections", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "setup" not in line]
    assert all(r.rstrip(" |").endswith(" 0") for r in rows), out.stdout  # no unexpected answers
    assert any("| guard memory " in r and "| one task " in r for r in rows), out.stdout
    if redis_missing_reason() is None:
        for setup in ("guard redis ", "guard redis, 2 instances ", "guard redis, 2 workers "):
            assert any(f"| {setup}" in r and "| one task " in r for r in rows), (setup, out.stdout)
        assert "redis CPU per call" in out.stdout
    assert out.stdout.count("chains verified") == (1 if redis_missing_reason() else 3), out.stdout


@pytest.mark.timeout(600)
def test_scale_compares_checkouts_under_spread_load() -> None:
    """`--spread-only` with `--baseline` twice: a row per checkout and request, each checkout's
    throughput over this one's on the same store (Redis)."""
    from tests.support.process import require

    require(redis_missing_reason())
    out = subprocess.run(
        [PY, "-m", "benchmarks.scale", "busy", "--spread-only", "--baseline", str(ROOT), "--baseline", str(ROOT),
         "--rounds", "1", "--duration", "0.5", "--connections", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "setup" not in line]
    assert not any("| one task " in r for r in rows), out.stdout
    for request in ("http POST 1 KiB", "mcp tools/call"):
        ours = [r for r in rows if f"| {request} " in r]
        assert len(ours) == 4 and sum(f"| guard redis ({ROOT.name}) " in r for r in ours) == 2, out.stdout
        assert out.stdout.count(f"  guard redis ({ROOT.name}), {request}: ÷ guard redis: req/s ") == 2, out.stdout
    assert all(r.rstrip(" |").endswith(" 0") for r in rows), out.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_instruction_counts_of_every_target_and_a_baseline() -> None:
    """Under callgrind: instructions per call of the bare proxy, guard and another checkout's guard,
    each a positive count with its ratio to the bare proxy."""
    import shutil

    from tests.support.process import require

    require(None if shutil.which("valgrind") else "valgrind is not installed (apt-get install valgrind)")
    out = subprocess.run(
        [PY, "-m", "benchmarks.instructions", "--calls", "20", "--warmup", "10", "--memory-only",
         "--baseline", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if line.startswith("| ") and "target" not in line]
    for request in ("http POST 1 KiB", "mcp tools/call"):
        got = {r[0]: r for r in rows if r[1] == request}
        assert set(got) == {"bare proxy", "guard-memory", f"guard-memory-{ROOT.name}"}, out.stdout
        for target, row in got.items():
            assert int(row[2].replace(",", "")) > 0 and float(row[3]) > 0, (target, out.stdout)
        assert got[f"guard-memory-{ROOT.name}"][4] != "-", out.stdout  # ÷ this: the baseline over this tree
